"""The config of the fault tests (tests/test_faults.py, tests/test_bad_inputs.py): the
smallest training run there is — a one-level UNet on 8x8 digits, one device, a checkpoint
every 2 steps, all of them kept — so that a run and its kills take seconds.

    python -m bidm_jax.main --config tests/fault_config.py --workdir W --mode train
"""
import os

from bidm_jax.configlib import sibling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
    c = sibling(os.path.join(ROOT, "configs", "default.py"), "default").get_config()
    c.mode = "train"
    c.data.dataset = "digits"
    c.data.image_size = 8
    c.model.resolution = 8
    c.model.ch = 32
    c.model.ch_mult = (1,)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.dropout = 0.1          # a resumed run must draw the same dropout masks
    c.diffusion.sample_steps = 2
    c.train.batch_size = 16
    c.train.num_steps = 12
    c.train.warmup_steps = 2
    c.train.log_every = 1
    c.train.lr = 1e-3
    c.sample.num_samples = 8
    c.sample.batch_size = 8
    c.sample.grid_size = 8
    c.ckpt.save_every = 2
    c.ckpt.max_to_keep = 1000      # every checkpoint kept: the tests compare them
    c.ckpt.keep_period = 0
    c.mesh.data = 1
    return c
