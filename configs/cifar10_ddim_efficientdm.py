"""EfficientDM W4A4 on DDIM CIFAR-10 (methods.md §5; docs/efficientdm.md). The papers run it
on LDM only (BinaryDM Table 2, W4A4: LDM-4 Bedrooms FID 10.60, LDM-8 Churches 14.34; BiDM
Table 2, W1A1: LDM-4 Bedrooms FID 194.45); this is the CIFAR-10 setting of the other rows,
after the released code: QALoRA 4-bit asymmetric weights (rank 32, clipping-search init),
TALSQ 4-bit activations (one step and zero point per DDIM step, calibrated on the teacher's
trajectory), the time MLP and first/last convs at W8A8, data-free distillation on the FP
teacher's 100-step DDIM trajectories (η = 0, one optimizer step per sampler step, 160
trajectories), AdamW (weight decay 0.01, no clipping, no EMA) with lr 5e-4 (TALSQ), 1e-6
(weight steps), mean Δ/2500 (LoRA), decaying linearly to 0. No dataset is read.

    python -m bidm_jax.main --config configs/cifar10_ddim_efficientdm.py \
        --workdir runs/cifar10_efficientdm --config.distill.teacher=checkpoints/ddim_cifar10_ema

W1A1 (the setting of BiDM's EfficientDM row): add ``--config.quant.bits_w=1
--config.quant.bits_a=1`` (two levels per weight channel and per activation step, real zero
points); BiDM keeps the time MLP and first/last convs in FP for its W1A1 rows, which
``--config.quant.first_last_bits=32`` matches. The code's TALSQ init (one calibration
copied to every step): ``--config.quant.talsq_init=shared``; its zero-point form:
``--config.quant.zp_form=code``.
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config


def get_config():
    c = base()
    c.quant.method = "efficientdm"
    c.quant.bits_w = 4
    c.quant.bits_a = 4
    c.quant.first_last_bits = 8      # quant_model.py set_first_last_layer_to_8bit
    c.quant.lora_rank = 32
    c.distill.data = "teacher_trajectory"
    c.distill.loss = "none"
    c.distill.tbs = False
    c.train.batch_size = 64
    c.train.num_steps = 16_000       # 160 trajectories x 100 steps (train_efficientdm.py)
    c.train.warmup_steps = 0
    c.train.lr_decay = "linear"      # to 0 at the last step (get_linear_schedule_with_warmup)
    c.train.grad_clip = 0.0          # the code does not clip
    c.train.weight_decay = 0.01      # torch.optim.AdamW's default
    c.train.ema_decay = 0.0          # no EMA of the student: sampling uses the trained values
    c.ckpt.save_every = 2000
    c.ckpt.keep_period = 8000
    return c
