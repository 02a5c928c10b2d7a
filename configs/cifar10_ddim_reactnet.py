"""ReActNet baseline: RSign (learnable shift, ApproxSign), HardBinaryConv, RPReLU and an
identity/pool shortcut around every binary conv, no TBS, no distillation (methods.md §5).

Same recipe as configs/cifar10_ddim.py (BiDM paper values; ``faithful_to`` applies too).

    python -m bidm_jax.main --config configs/cifar10_ddim_reactnet.py \
        --workdir runs/cifar10_reactnet --config.distill.teacher=checkpoints/ddim_cifar10_ema \
        --config.data.path=/path/to/cifar-10-python.tar.gz
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "reactnet"   # distill.tbs / distill.loss stay automatic: off for baselines
    return c
