"""ReSTE baseline: sign forward with the power-rule backward, o from 1 to 3 on a cosine schedule
over training, per-layer mean|W| weights, no TBS, no distillation (methods.md §5).

Same recipe as configs/cifar10_ddim.py (BiDM paper values; ``faithful_to`` applies too).

    python -m bidm_jax.main --config configs/cifar10_ddim_reste.py \
        --workdir runs/cifar10_reste --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "reste"   # distill.tbs / distill.loss stay automatic: off for baselines
    return c
