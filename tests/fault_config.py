"""The config of the fault tests (tests/test_faults.py, tests/test_bad_inputs.py): the
smallest training run there is — a one-level UNet on 8x8 digits, one device, a checkpoint
every 2 steps, all of them kept — so that a run and its kills take seconds.

    python -m bidm_jax.main --config tests/fault_config.py --workdir W --mode train
"""
from bidm_jax.configlib import sibling

# Loaded by path (the command line runs this file), so its sibling module by path too.
tiny_config = sibling(__file__, "tiny").tiny_config


def get_config():
    c = tiny_config(**{"model.ch_mult": (1,), "model.attn_resolutions": (),
                       "diffusion.sample_steps": 2, "train.num_steps": 12})
    c.mode = "train"
    c.ckpt.max_to_keep = 1000      # every checkpoint kept: the tests compare them
    c.ckpt.keep_period = 0
    c.mesh.data = 1
    return c
