"""Quickstart: under five minutes on 2 CPU cores, no network and no files needed.

    python -m bidm_jax.main --config configs/quickstart.py --workdir runs/quickstart

Trains a small FP UNet on the 1,797 handwritten digits that ship inside scikit-learn, at
their own 8x8 resolution and in their one grey channel, distils a BiDM W1A1 student from it
(TBS + SPD; pick another method with ``--config.quant.method=xnor`` etc.), samples both from
the same noise with 50-step ancestral (DDPM) sampling and writes them side by side plus
metrics, then prints the student's ``--mode summary`` table and the digits scores.

Why these values: modelling the scans as they are (8x8, grey) instead of upsampled RGB makes
a step about four times cheaper and spends no capacity on interpolated pixels or on three
copies of one channel, so the teacher gets the ~1,000 steps it needs to draw recognisable
digits within the budget. Ancestral sampling with x̂0 clipping is used because a teacher
trained for a few minutes is still inaccurate at large t, where deterministic DDIM amplifies
the error.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "default").get_config


def get_config():
    c = base()
    c.mode = "quickstart"
    c.data.dataset = "digits"
    c.data.image_size = 8        # the scans' own resolution (the digits score reads 8x8)
    c.data.random_flip = False   # digits are not flip-invariant
    # The scans are grey: one channel in and out (three would be learnt as separate colours).
    c.data.channels = 1
    c.model.in_channels = c.model.out_ch = 1
    c.model.resolution = 8
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.0
    c.diffusion.loss_reduction = "mean"
    c.diffusion.sampler = "ddpm"
    c.diffusion.sample_steps = 50
    c.train.batch_size = 64
    c.train.num_steps = 1000     # teacher
    c.train.lr = 2e-3
    c.train.warmup_steps = 50
    # ~140-step half-life: averages out the noise of a high learning rate while still
    # following a model that changes quickly.
    c.train.ema_decay = 0.995
    c.train.log_every = 50
    c.sample.num_samples = 64
    c.sample.batch_size = 64
    c.ckpt.save_every = 1000
    # The W1A1 student (quant.method 'fp' here means: BiDM for the student).
    c.distill.num_steps = 240
    c.distill.batch_size = 32
    c.distill.lr = 2e-3
    c.distill.spd_lambda = 3e-2
    return c
