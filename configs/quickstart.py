"""Quickstart: a few minutes on 2 CPU cores, no network and no files needed.

    python -m bidm_jax.main --config configs/quickstart.py --workdir runs/quickstart

Trains a small FP UNet on the 1,797 handwritten digits that ship inside scikit-learn
(upsampled to 16x16), samples it with 50-step DDIM and writes a grid and metrics.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.mode = "quickstart"
    c.data.dataset = "digits"
    c.data.image_size = 16
    c.data.random_flip = False   # digits are not flip-invariant
    c.model.resolution = 16
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (8,)
    c.model.dropout = 0.0
    c.diffusion.loss_reduction = "mean"
    c.diffusion.sample_steps = 50
    c.train.batch_size = 64
    c.train.num_steps = 600
    c.train.lr = 2e-3
    c.train.warmup_steps = 50
    c.train.ema_decay = 0.99
    c.train.log_every = 50
    c.sample.num_samples = 64
    c.sample.batch_size = 64
    c.ckpt.save_every = 300
    return c
