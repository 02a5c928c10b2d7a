"""LSQ W2A4 on DDIM CIFAR-10 (BinaryDM Table 1's LSQ rows; methods.md §5): 2-bit weights with
a learned per-output-channel step and 4-bit LSQ activations, first/last convs at 8 bits, no
feature distillation; recipe as configs/cifar10_ddim_binarydm.py. W2A8 / W2A32:
``--config.quant.bits_a=8`` / ``32``."""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim_binarydm").get_config


def get_config():
    c = base()
    c.quant.method = "lsq"
    c.quant.bits_w = 2
    c.distill.loss = "none"
    return c
