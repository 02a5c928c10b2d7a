"""XNOR baseline (BiDM's "vanilla" W1A1 structure, the XNOR row of BiDM Table 1): per-output-channel
mean|W|·sign(W), sign(x+τ) with ApproxSign, a fixed box k scale map and the scaled per-conv
shortcut, without TBS and without distillation (methods.md §5).

Same recipe as configs/cifar10_ddim.py (BiDM paper values; ``faithful_to`` applies too).

    python -m bidm_jax.main --config configs/cifar10_ddim_xnor.py \
        --workdir runs/cifar10_xnor --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "xnor"   # distill.tbs / distill.loss stay automatic: off for baselines
    return c
