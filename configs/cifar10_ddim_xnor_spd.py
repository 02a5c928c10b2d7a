"""Ablation XNOR + SPD (BiDM Table 3 "+SPD" row's structure on CIFAR-10): the XNOR baseline
trained with the ε loss plus λ·SPD against the FP teacher (λ per ``faithful_to``), no TBS.

    python -m bidm_jax.main --config configs/cifar10_ddim_xnor_spd.py \
        --workdir runs/cifar10_xnor_spd --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "xnor"
    c.distill.tbs = False
    c.distill.loss = "spd"
    return c
