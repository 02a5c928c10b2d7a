"""BinaryDM's "Baseline" row on DDIM CIFAR-10 (methods.md §3.7): learnable single-basis
σ·sign(W) weights with LSQ 4-bit activations, no EBB, no LRM; everything else as
configs/cifar10_ddim_binarydm.py (``--config.distill.faithful_to=code`` likewise)."""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim_binarydm").get_config


def get_config():
    c = base()
    c.quant.method = "binarydm_baseline"
    c.distill.loss = "none"
    return c
