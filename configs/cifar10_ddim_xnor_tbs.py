"""Ablation XNOR + TBS (BiDM Table 3 "+TBS" row's structure on CIFAR-10): the XNOR baseline
with the cross-timestep connection (code topology; α_init per ``faithful_to``) and no
distillation loss.

    python -m bidm_jax.main --config configs/cifar10_ddim_xnor_tbs.py \
        --workdir runs/cifar10_xnor_tbs --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "xnor"
    c.distill.tbs = True
    c.distill.loss = "none"
    return c
