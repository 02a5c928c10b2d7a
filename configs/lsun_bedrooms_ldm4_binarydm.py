"""BinaryDM W1A4 on LDM-4 LSUN-Bedrooms (methods.md §3.6; the paper's FID 7.74 at W1A4),
distilled from the official LDM-4: EBB two-basis weights on the head/tail block groups
(τ = 9e-2, switching to one basis at 100k of 200k), 4-bit LSQ activations, 8-bit first/last
convs, LRM (λ 1e-4, K 4) on the 25 TimestepEmbed outputs; AdamW (weight decay 0.01) lr 8e-5
(the released bedrooms.yaml: base 2e-5 x batch 4 with ``scale_lr``; the paper only says
1/10–1/100 of the FP lr), batch 4, LitEma 0.9999; LDM DDIM 100 steps (BinaryDM App. B.1).

    python -m bidm_jax.main --config configs/lsun_bedrooms_ldm4_binarydm.py \
        --workdir runs/beds_binarydm --config.data.path=data/lsun/bedrooms

``--config.distill.faithful_to=code`` for the released code's variant (docs/binarydm.md);
W1A8: ``--config.quant.bits_a=8``.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "lsun_bedrooms_ldm4_teacher").get_config


def get_config():
    c = base()
    c.mode = "distill"
    c.quant.method = "binarydm"
    c.quant.bits_a = 4
    c.quant.ebb_tau = 9e-2
    c.quant.ebb_switch_step = 100_000
    c.distill.teacher = "checkpoints/lsun_beds256/unet"
    c.distill.loss = "lrm"
    c.distill.lrm_lambda = 1e-4
    c.distill.lrm_k = 4
    c.distill.lr = 8e-5
    c.train.batch_size = 4
    c.train.num_steps = 200_000
    c.train.warmup_steps = 0
    c.diffusion.sample_steps = 100
    c.ckpt.save_every = 5000
    c.ckpt.keep_period = 50_000
    return c
