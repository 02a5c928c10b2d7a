"""Q-DM W4A4 student on DDIM CIFAR-10 (methods.md §4; docs/qdm.md). Q-DM has no public code
and its full text was not readable: the verified parts are TaQ + NeM and "all training
settings follow DDPM"; every other value is this project's default (methods.md §4.4), each
behind a flag:

* LSQ 4-bit weights (one step per output channel) and activations (learned per-tensor step,
  calibrated on the first batch) on every block conv/linear and on the attention q, k,
  softmax weights and v; conv_in/conv_out, time MLP, temb_proj and norms FP;
* TaQ ``batch_ema`` on q and k (batch statistics in training, EMA running statistics with
  momentum 0.1 tracking the biased variance at sampling);
* NeM: L_simple + 1.0·mean‖ε̂_FP − ε̂_Q‖², DDPM mean reduction;
* the DDPM recipe: Adam lr 2e-4, 5,000 warm-up steps, batch 128, grad clip 1.0, dropout 0.1,
  horizontal flips, EMA 0.9999, uniform t; 100k iterations (the paper's count is unknown).

    python -m bidm_jax.main --config configs/cifar10_ddim_qdm.py --workdir runs/cifar10_qdm \
        --config.distill.teacher=checkpoints/ddim_cifar10_ema

W3A3 / W2A2: ``--config.quant.bits_w=3 --config.quant.bits_a=3`` (or 2). The paper's
headline (FID 5.17) samples with 1000-step DDPM: ``--mode sample --config.diffusion.sampler=ddpm
--config.diffusion.sample_steps=1000`` (``var_type=fixedlarge``, x̂0 clipped: the defaults);
DDIM 100 (η = 0) is the default here. Alternatives: ``--config.quant.taq=per_t_bucket|online|
off``, ``--config.quant.taq_operands='("q","k","v")'``, ``--config.quant.taq_variance=
unbiased``, ``--config.distill.nem_target=x0|mean``, ``--config.distill.nem_unroll=4``,
``--config.quant.weight_granularity=tensor``, ``--config.quant.first_last_bits=8``,
``--config.distill.lr=2e-5`` (1/10 of DDPM's, as BinaryDM trains its QAT).
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "qdm"
    c.quant.bits_w = 4
    c.quant.bits_a = 4
    c.distill.loss = "nem"
    c.distill.nem_lambda = 1.0
    c.diffusion.loss_reduction = "mean"   # DDPM: mean over pixels
    c.diffusion.antithetic = False        # DDPM: t ~ U{0..T-1}
    c.train.batch_size = 128
    c.train.warmup_steps = 5000
    c.train.grad_clip = 1.0
    c.train.num_steps = 100_000
    return c
