"""DoReFa-Net W1A1 baseline: per-layer mean|W|·sign(W), {0, 1} activations with STE, no TBS,
no distillation (methods.md §5).

Same recipe as configs/cifar10_ddim.py (BiDM paper values; ``faithful_to`` applies too).

    python -m bidm_jax.main --config configs/cifar10_ddim_dorefa.py \
        --workdir runs/cifar10_dorefa --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "dorefa"   # distill.tbs / distill.loss stay automatic: off for baselines
    return c
