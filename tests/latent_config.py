"""The config of the tiny end-to-end latent run (tests/test_latent.py): a random-weight
VQ autoencoder (ch 32, one level, no downsampling: 8x8 images -> 8x8x3 latents, 16 codes:
what compiles fastest) and a one-level LDM UNet (ch 32, attention in the middle block) on a folder of
images the test writes, LDM's schedule, loss and DDIM convention.

    python -m bidm_jax.main --config tests/latent_config.py --workdir W \
        --config.data.path=IMAGES --mode train
"""
from bidm_jax.configlib import sibling
from bidm_jax.models.ldm_family import ldm4_model_config

tiny_config = sibling(__file__, "tiny").tiny_config


def get_config():
    c = tiny_config(**{"diffusion.sample_steps": 4, "train.num_steps": 2,
                       "train.batch_size": 4, "sample.num_samples": 4,
                       "sample.batch_size": 4, "sample.grid_size": 4})
    c.data.dataset = "image_folder"
    c.data.image_size = 8
    c.data.workers = 2
    c.model = ldm4_model_config()
    c.model.ch = 32
    c.model.ch_mult = (1,)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()      # the middle block keeps its attention
    c.model.resolution = 8
    c.first_stage.kind = "vq-f4"
    c.first_stage.random_init = True   # random weights: a test of the plumbing only
    c.first_stage.ch = 32
    c.first_stage.ch_mult = (1,)
    c.first_stage.num_res_blocks = 1
    c.first_stage.n_embed = 16
    c.first_stage.encode_batch_size = 8
    c.diffusion.schedule = "sqrt_linear"
    c.diffusion.beta_start = 0.0015
    c.diffusion.beta_end = 0.0195
    c.diffusion.loss_reduction = "mean"
    c.diffusion.antithetic = False
    c.diffusion.timestep_convention = "ldm"
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.01
    c.train.grad_clip = 0.0
    c.train.ema_warmup = True
    c.mesh.data = 1
    return c
