"""Teacher/student losses: SPD (BiDM), plain L2 feature distillation, the total objective."""

from bidm_jax.distill.losses import (l2_feature_loss, noise_loss, spd_loss, spd_patch_terms,
                                     total_loss)

__all__ = ["spd_loss", "spd_patch_terms", "l2_feature_loss", "noise_loss", "total_loss"]
