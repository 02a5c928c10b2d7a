"""BBCU baseline: per conv x + move0 → sign (ApproxSign) → HardBinaryConv → RPReLU → + x,
no TBS, no distillation (methods.md §5).

Same recipe as configs/cifar10_ddim.py (BiDM paper values; ``faithful_to`` applies too).

    python -m bidm_jax.main --config configs/cifar10_ddim_bbcu.py \
        --workdir runs/cifar10_bbcu --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "bbcu"   # distill.tbs / distill.loss stay automatic: off for baselines
    return c
