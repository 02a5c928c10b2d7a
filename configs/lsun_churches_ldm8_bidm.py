"""BiDM W1A1 on LDM-8 LSUN-Churches (methods.md §2.8), distilled from the official LDM-8
(``models/ldm/lsun_churches256/model.ckpt``, converted): TBS on the last 8 output blocks
(columns 23–30 of the 100x31 table, α_init 0.3), SPD on all 31 TimestepEmbedSequential
outputs with λ 1e-2, L1 ε loss, AdamW lr 5e-5 (``--scale_lr false``) with weight decay 0.01
and the 10k-step warm-up from 1e-6x, batch 4, LitEma 0.9999, 200k iterations; LDM DDIM 200
steps (the paper; ``--config.diffusion.sample_steps=100`` for the README's), η = 0.

    python -m bidm_jax.main --config configs/lsun_churches_ldm8_bidm.py \
        --workdir runs/churches_bidm --config.data.path=data/lsun/churches
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "lsun_churches_ldm8_teacher").get_config
bidm_on_ldm = sibling(__file__, "lsun_bedrooms_ldm4_bidm").bidm_on_ldm


def get_config():
    # Columns 23-30; the teacher config's warm-up (10k steps from 1e-6x) and L1 loss stay.
    return bidm_on_ldm(base(), "checkpoints/lsun_churches256/unet", 5e-5)
