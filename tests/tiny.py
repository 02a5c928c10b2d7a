"""The tiny config of the end-to-end tests, in a module without jax so that a config file run
by the command line in a subprocess (tests/fault_config.py) can build on it too."""
import os

from bidm_jax.configlib import sibling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    """configs/default.py shrunk to an 8x8 two-level UNet on the embedded digits."""
    c = sibling(os.path.join(ROOT, "configs", "default.py"), "default").get_config()
    c.data.dataset = "digits"
    c.data.image_size = 8
    c.data.random_flip = True
    c.model.resolution = 8
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.1
    c.diffusion.sample_steps = 4
    c.train.batch_size = 16
    c.train.num_steps = 4
    c.train.warmup_steps = 2
    c.train.log_every = 1
    c.train.lr = 1e-3
    c.sample.num_samples = 8
    c.sample.batch_size = 8
    c.sample.grid_size = 8
    c.ckpt.save_every = 2
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c
