"""Model families (``models.registry``): the DDIM pixel UNet and the LDM latent UNet; more
backbones register a :class:`Family` the same way (docs/architecture.md, "How to add a model
family"). The LDM first-stage autoencoders (FP only) are in ``models.autoencoder``."""
from __future__ import annotations

from flax import nnx

from bidm_jax.models import ddim_family  # noqa: F401  (registers ddim_unet)
from bidm_jax.models import ldm_family  # noqa: F401  (registers ldm_unet)
from bidm_jax.models.ddim_unet import DDIMUNet
from bidm_jax.models.functional import count as count_params
from bidm_jax.models.layers import FPFactory
from bidm_jax.models.registry import (DTYPES, Family, compute_dtype, get_family, list_families,
                                      register_family)


def build_unet(model_config, *, rngs: nnx.Rngs, factory=None) -> nnx.Module:
    """Builds the model of family ``model_config.name`` through a layer factory.

    Args:
      model_config: the ``model`` config section.
      rngs: parameter init keys, e.g. ``nnx.Rngs(seed)``.
      factory: layer factory (``bidm_jax.models.layers``); None = full precision.
    """
    family = get_family(model_config.name)
    dtype = compute_dtype(model_config.dtype)
    return family.build(model_config, rngs=rngs, dtype=dtype,
                        factory=factory if factory is not None else FPFactory(dtype))


__all__ = ["build_unet", "count_params", "DDIMUNet", "FPFactory", "DTYPES", "Family",
           "compute_dtype", "get_family", "list_families", "register_family"]
