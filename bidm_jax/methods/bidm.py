"""``bidm``: BiDM (NeurIPS 2024), methods.md §2.

Binary layers: RSign activations with a learnable channel shift τ (§2.3), per-channel weight
scale mean|W| (detached, code; ``quant.weight_scale='learnable'`` for the paper's σ of Eq. 6),
the learnable k-conv K map on mean_c|x| (§2.3 step 3) and the scaled per-conv shortcut
(§2.4). Distillation: the timestep-friendly cross-step connection (TBS, Eq. 12) and space
patched distillation (SPD, Eq. 13–16) are on by default; the ``faithful_to`` table of
``bidm_jax.distill.config`` holds BiDM's paper and code values.
"""
from bidm_jax.methods.base import Method, register_method

BIDM = register_method(Method(
    name="bidm", weight="channel_detached", act="rsign", channel_shift=True,
    input_scale="kconv", shortcut="scaled",
    distill_defaults=(("tbs", True), ("loss", "spd")), step_ms=42.5,
    description="BiDM W1A1: RSign + k-conv K map + scaled shortcut; TBS + SPD"))
