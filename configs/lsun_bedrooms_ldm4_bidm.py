"""BiDM W1A1 on LDM-4 LSUN-Bedrooms (methods.md §2.8, the BiDM paper's headline: FID 22.74),
distilled from the official LDM-4 (``models/ldm/lsun_beds256/model.ckpt``, converted):
BiDM's LDM layer recipe, TBS on the last 8 output blocks (the code's wiring: columns 17–24
of a 100x31 table, α_init 0.3), SPD on all 25 TimestepEmbedSequential outputs with λ 1e-2,
AdamW lr 2e-5 (run.sh, ``--scale_lr false``) with weight decay 0.01, batch 4, LitEma 0.9999,
200k iterations; LDM DDIM 200 steps (the paper; the repo README says 100:
``--config.diffusion.sample_steps=100``), η = 1 (not stated by the paper; LDM's default).

    python -m bidm_jax.convert.ldm --checkpoint models/ldm/lsun_beds256/model.ckpt \
        --out checkpoints/lsun_beds256
    python -m bidm_jax.main --config configs/lsun_bedrooms_ldm4_bidm.py \
        --workdir runs/beds_bidm --config.data.path=data/lsun/bedrooms

Optionally encode the data once (``--mode encode_latents --config.first_stage.latents=DIR``)
and train from ``--config.first_stage.latents=DIR``.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "lsun_bedrooms_ldm4_teacher").get_config


def bidm_on_ldm(c, teacher: str, lr: float):
    """BiDM's LDM recipe (methods.md §2.4, §2.8) on the teacher config ``c``."""
    c.mode = "distill"
    c.quant.method = "bidm"
    c.distill.teacher = teacher
    c.distill.lr = lr
    c.distill.spd_lambda = 1e-2
    c.distill.tbs_init = 0.3
    # The LDM code's per-conv shortcut: |s| with s initialised at 0.3 (CIFAR: s, at 0.0;
    # methods.md §2.4).
    c.quant.shortcut_scale_init = 0.3
    c.quant.shortcut_abs = True
    c.distill.tbs_topology = "code"   # the last 8 output blocks' columns of a 31-column table
    c.train.batch_size = 4
    c.train.num_steps = 200_000
    return c


def get_config():
    c = bidm_on_ldm(base(), "checkpoints/lsun_beds256/unet", 2e-5)  # columns 17-24
    c.train.warmup_steps = 0
    c.ckpt.save_every = 5000
    c.ckpt.keep_period = 50_000
    return c
