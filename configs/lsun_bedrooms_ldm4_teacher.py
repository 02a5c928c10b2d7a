"""FP LDM-4 on LSUN-Bedrooms 256 (methods.md §1.2–§1.4): the CompVis latent-diffusion UNet
(274,056,163 parameters) on VQ-f4 latents (64x64x3) of 256x256 images, sqrt-linear β from
0.0015 to 0.0195, L2 ε loss averaged over pixels, uniform t, AdamW (torch's default weight
decay 0.01), no gradient clipping, LitEma 0.9999 with its warm-up. LDM DDIM sampling
(timesteps 1, 6, ..., 996 for 200 steps; η = 1 as the LDM README's bedrooms FID).

The official model is the usual starting point: convert it (docs/ldm.md) and distil from
``unet/``; this file is also the teacher of the BiDM/BinaryDM configs that build on it.

    python -m bidm_jax.convert.ldm --checkpoint models/ldm/lsun_beds256/model.ckpt \
        --out checkpoints/lsun_beds256
    python -m bidm_jax.main --config configs/lsun_bedrooms_ldm4_teacher.py \
        --workdir runs/beds_ldm4 --config.data.path=data/lsun/bedrooms

The learning rate is LDM's ``scale_lr``: base 2e-6 x batch (x 1 GPU); CompVis's FFHQ LDM-4
config has base 2e-6 and batch 42, and its bedrooms config is taken to be the same model with
batch 48 (not verified here). ``--config.ckpt.init_from=checkpoints/lsun_beds256/unet``
fine-tunes the official weights instead of starting from scratch.
"""
from bidm_jax.configlib import sibling
from bidm_jax.models.ldm_family import ldm4_model_config

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.data.dataset = "lsun_bedrooms"
    c.data.path = ""                  # an image folder (LSUN tools export); '' = tfds
    c.data.image_size = 256
    c.data.random_flip = True         # ldm/data/lsun.py: flip_p = 0.5
    c.data.interpolation = "bicubic"
    c.model = ldm4_model_config()
    c.first_stage.kind = "vq-f4"
    c.first_stage.path = "checkpoints/lsun_beds256/first_stage"
    c.diffusion.schedule = "sqrt_linear"
    c.diffusion.beta_start = 0.0015
    c.diffusion.beta_end = 0.0195
    c.diffusion.loss_reduction = "mean"
    c.diffusion.loss_type = "l2"
    c.diffusion.antithetic = False    # LatentDiffusion: t ~ randint(0, 1000)
    c.diffusion.timestep_convention = "ldm"
    c.diffusion.sampler = "ddim"
    c.diffusion.sample_steps = 200
    c.diffusion.eta = 1.0
    c.train.batch_size = 48
    c.train.lr = 2e-6 * 48
    c.train.warmup_steps = 0
    c.train.grad_clip = 0.0           # Lightning's default: no clipping
    c.train.weight_decay = 0.01       # torch.optim.AdamW's default
    c.train.ema_decay = 0.9999
    c.train.ema_warmup = True         # LitEma: min(0.9999, (1+n)/(10+n))
    c.train.num_steps = 2_000_000
    c.sample.num_samples = 64         # --mode sample --config.sample.num_samples=50000
    c.sample.batch_size = 32
    c.sample.grid_size = 64
    c.ckpt.save_every = 5000
    c.ckpt.keep_period = 50_000
    return c
