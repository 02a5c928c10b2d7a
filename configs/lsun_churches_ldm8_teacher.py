"""FP LDM-8 on LSUN-Churches 256 (methods.md §1.2–§1.4): the CompVis UNet (294,966,916
parameters; 8 heads, scale-shift norm, ResBlock up/down) on KL-f8 latents (32x32x4) scaled by
the checkpoint's ``scale_factor``, sqrt-linear β from 0.0015 to 0.0155, **L1** ε loss
averaged over pixels, uniform t, AdamW (weight decay 0.01) with LDM's LambdaLinearScheduler
(warm-up from 1e-6x over 10k steps), no clipping, LitEma 0.9999. LDM DDIM 200 steps, η = 0
(the LDM README's churches FID uses 400 steps, η = 0: ``--config.diffusion.sample_steps=400``).

    python -m bidm_jax.convert.ldm --checkpoint models/ldm/lsun_churches256/model.ckpt \
        --out checkpoints/lsun_churches256
    python -m bidm_jax.main --config configs/lsun_churches_ldm8_teacher.py \
        --workdir runs/churches_ldm8 --config.data.path=data/lsun/churches

lr 5e-5 with batch 96 follows CompVis's lsun_churches-ldm-kl-8.yaml as recalled, not verified
here; ``--config.ckpt.init_from=checkpoints/lsun_churches256/unet`` fine-tunes the official
weights.
"""
from bidm_jax.configlib import sibling
from bidm_jax.models.ldm_family import ldm8_model_config

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.data.dataset = "lsun_churches"
    c.data.path = ""                  # an image folder (LSUN tools export); '' = tfds
    c.data.image_size = 256
    c.data.random_flip = True
    c.data.interpolation = "bicubic"
    c.model = ldm8_model_config()
    c.first_stage.kind = "kl-f8"
    c.first_stage.path = "checkpoints/lsun_churches256/first_stage"
    c.first_stage.scale_factor = -1.0  # scale_by_std: the checkpoint's value is kept
    c.diffusion.schedule = "sqrt_linear"
    c.diffusion.beta_start = 0.0015
    c.diffusion.beta_end = 0.0155
    c.diffusion.loss_reduction = "mean"
    c.diffusion.loss_type = "l1"
    c.diffusion.antithetic = False
    c.diffusion.timestep_convention = "ldm"
    c.diffusion.sampler = "ddim"
    c.diffusion.sample_steps = 200
    c.diffusion.eta = 0.0
    c.train.batch_size = 96
    c.train.lr = 5e-5
    c.train.warmup_steps = 10_000
    c.train.warmup_start = 1e-6       # LambdaLinearScheduler f_start
    c.train.grad_clip = 0.0
    c.train.weight_decay = 0.01
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = True
    c.train.num_steps = 500_000
    c.sample.num_samples = 64
    c.sample.batch_size = 32
    c.sample.grid_size = 64
    c.ckpt.save_every = 5000
    c.ckpt.keep_period = 50_000
    return c
