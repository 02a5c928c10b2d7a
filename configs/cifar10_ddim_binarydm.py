"""BinaryDM W1A4 student on DDIM CIFAR-10 (methods.md §3; docs/binarydm.md), with the
BinaryDM paper's values: EBB two-basis weights on the head/tail block groups (32² and 16²)
with L_EBB (τ = 9e-2) until iteration 100k of 200k, then one basis; LSQ 4-bit activations
(learned steps, calibrated on the first batch) on every quantized layer and the attention
operands; first/last convs at 8 bits; LRM (λ = 1e-4, K = 4, channel PCA); lr 2e-5 (1/10 of
the FP lr, App. B.1), batch 64; DDIM 100 steps.

    python -m bidm_jax.main --config configs/cifar10_ddim_binarydm.py \
        --workdir runs/cifar10_binarydm --config.distill.teacher=checkpoints/ddim_cifar10_ema

``--config.distill.faithful_to=code`` gives the released code's variant ("LMB": two bases
kept to the end, no regulariser, per-batch activation steps, FP first/last convs,
progressive binarization, attention quantized from step 5, LRM along the width axis,
lr 8e-5). W1A8 / W1A32: ``--config.quant.bits_a=8`` / ``32``.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "binarydm"
    c.quant.bits_a = 4              # W1A4 (the code's default was 8)
    c.quant.ebb_tau = 9e-2          # Table 11 "mu"
    c.quant.ebb_switch_step = 100_000   # Table 12 (paper mode only)
    c.distill.loss = "lrm"
    c.distill.lrm_lambda = 1e-4
    c.distill.lrm_k = 4
    c.train.num_steps = 200_000     # "~200k iterations" (App. B.1)
    c.train.batch_size = 64
    c.ckpt.keep_period = 50_000
    return c
