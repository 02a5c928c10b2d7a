"""Reduced-scale reproduction of BiDM's CIFAR-10 comparison (BiDM Tables 1 and 3), of
BinaryDM's W1A4 rows (BinaryDM Table 1) and of Q-DM's W4A4 claim: one FP teacher trained
here, nine W1A1 and six low-bit students (BinaryDM W1A4, its Baseline W1A4, LSQ W2A4,
Q-DM W4A4, its LSQ W4A4 baseline, EfficientDM W4A4) distilled from it under one identical
budget.

The whole experiment is driven by ``launch/repro_cifar10_small.sh``; each of its stages is a
plain CLI call with this file, e.g.

    python -m bidm_jax.main --config configs/repro_cifar10_small.py:teacher --workdir W/teacher
    python -m bidm_jax.main --config configs/repro_cifar10_small.py:bidm --workdir W/bidm \
        --config.distill.teacher=W/teacher/checkpoints

The argument after ':' names the model (``teacher``, a key of ``STUDENTS`` or of
``DIAGNOSTICS``); appending ``,tiny`` gives the CI-sized variant (tiny UNet, a few steps of
everything), and ``,key=value`` overrides one entry of the budget (e.g.
``,student_steps=200`` for a smoke run).

The budget below was fixed before any result was seen and is the same for every student
(iterations, batch, learning rate and its schedule, EMA, teacher, sampler, sample count).
"""
from bidm_jax.configlib import sibling

base = sibling(__file__, "cifar10_ddim").get_config

# name -> (quant.method, distill.tbs, distill.loss); None / "auto" = the method's default
# (TBS and SPD on for BiDM only).
STUDENTS = {
    "bidm": ("bidm", None, "auto"),
    "xnor": ("xnor", None, "auto"),
    "reactnet": ("reactnet", None, "auto"),
    "xnor++": ("xnor++", None, "auto"),
    "reste": ("reste", None, "auto"),
    "dorefa": ("dorefa", None, "auto"),
    "bbcu": ("bbcu", None, "auto"),
    "xnor_tbs": ("xnor", True, "none"),    # BiDM Table 3: XNOR + TBS
    "xnor_spd": ("xnor", False, "spd"),    # BiDM Table 3: XNOR + SPD
    # BinaryDM Table 1, W1A4 rows (paper mode: staged EBB, LSQ 4-bit, 8-bit edges, LRM).
    "binarydm": ("binarydm", None, "auto"),
    "binarydm_baseline": ("binarydm_baseline", None, "auto"),
    "lsq_w2a4": ("lsq", None, "auto"),
    # Q-DM's W4A4 comparison (methods.md §4): Q-DM (TaQ + NeM) and its LSQ baseline, the
    # same W4A4 layers without either.
    "qdm_w4a4": ("qdm", None, "auto"),
    "lsq_w4a4": ("qdm", None, "none", {"taq": "off"}),
    # EfficientDM W4A4 (BinaryDM's W4A4 baseline): data-free, on the teacher's trajectories;
    # the common lr is its TALSQ group's, its LoRA and weight-step groups keep their own.
    "efficientdm_w4a4": ("efficientdm", None, "auto"),
}

# Diagnostic variants, run only when named in the driver's --models: they isolate one
# structural piece of the W1A1 layer under the same budget. name -> (method, tbs, loss,
# quant overrides); docs/reproduction.md reports what they showed.
DIAGNOSTICS = {
    "xnor_nok": ("xnor", None, "auto", {"input_scale": "none"}),      # XNOR without its K map
    "xnor_unitsc": ("xnor", None, "auto", {"shortcut": "unit"}),      # ReActNet's unit shortcut
    "bidm_nok": ("bidm", None, "auto", {"input_scale": "none"}),      # BiDM without k * A
    "xnor_rprelu": ("xnor", None, "auto", {"rprelu": "post_residual"}),  # + ReActNet's RPReLU
    "reactnet_box": ("reactnet", None, "auto", {"input_scale": "box"}),  # ReActNet with XNOR's K
    "xnor_bias": ("xnor", None, "auto", {"binary_bias": "keep"}),   # keeps the teacher's bias
}
MODELS = {**STUDENTS, **DIAGNOSTICS}

# The fixed budget. "full": one run of about 14 minutes on 4x H200; "tiny": CI on CPU.
BUDGET = {
    "full": dict(teacher_steps=9000, teacher_batch=512, teacher_lr=4e-4, teacher_warmup=500,
                 teacher_ema=0.9995, student_steps=3000, student_batch=64, student_ema=0.999,
                 num_samples=2000, sample_steps=100, sample_batch=500, log_every=100,
                 proxy_steps=3000, proxy_batch=512),
    "tiny": dict(teacher_steps=4, teacher_batch=16, teacher_lr=2e-3, teacher_warmup=2,
                 teacher_ema=0.9, student_steps=2, student_batch=8, student_ema=0.9,
                 num_samples=16, sample_steps=2, sample_batch=16, log_every=1,
                 proxy_steps=4, proxy_batch=32),
}


def _tiny_model(c):
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()   # compile time, not the method, limits the CI run


def budget(arg: str = "teacher") -> dict:
    """The budget named by ``arg``'s options: ``tiny`` and ``key=value`` overrides (smoke
    runs on smaller machines; the driver records them in its results)."""
    parts = [p for p in arg.split(",") if p][1:]
    b = dict(BUDGET["tiny" if "tiny" in parts else "full"])
    for p in parts:
        if "=" in p:
            key, value = p.split("=", 1)
            if key not in b:
                raise ValueError(f"unknown budget key {key!r}; valid: {', '.join(b)}")
            b[key] = type(b[key])(float(value) if isinstance(b[key], int) else value)
        elif p != "tiny":
            raise ValueError(f"unknown config option {p!r}: use 'tiny' or key=value")
    return b


def get_config(arg: str = "teacher"):
    name = arg.split(",")[0]
    if name != "teacher" and name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: teacher, {', '.join(MODELS)}")
    b = budget(arg)
    size = "tiny" if "tiny" in arg.split(",")[1:] else "full"
    c = base()
    if size == "tiny":
        _tiny_model(c)
    c.train.matmul_precision = "tensorfloat32"  # TF32 on GPUs; no effect on CPU
    c.train.log_every = b["log_every"]
    c.train.warmup_steps = 0
    c.diffusion.sampler, c.diffusion.sample_steps, c.diffusion.eta = "ddim", b["sample_steps"], 0.0
    c.sample.num_samples, c.sample.batch_size = b["num_samples"], b["sample_batch"]
    c.sample.grid_size = min(64, b["num_samples"])
    c.sample.seed = 1234  # the same x_T for every model (sample.initial_noise)
    c.ckpt.keep_period = 0
    c.eval.features = "proxy"
    c.eval.num_samples = b["num_samples"]
    c.eval.is_split_size = b["num_samples"]
    c.eval.kid_subset_size = min(1000, b["num_samples"])
    c.eval.proxy_steps, c.eval.proxy_batch_size = b["proxy_steps"], b["proxy_batch"]
    if size == "tiny":
        c.eval.proxy_width, c.eval.proxy_embed_dim = 8, 16
        c.eval.proxy_spatial_channels = 1   # sFID's covariance 256-d, not 2,048-d
        c.eval.pr_num_images, c.eval.kid_subsets = 64, 2
        c.eval.proxy_warmup_steps, c.eval.batch_size = 1, 64
    if name == "teacher":
        c.mode = "train"
        c.quant.method = "fp"
        c.train.batch_size, c.train.num_steps = b["teacher_batch"], b["teacher_steps"]
        c.train.lr, c.train.warmup_steps = b["teacher_lr"], b["teacher_warmup"]
        c.train.ema_decay = b["teacher_ema"]
        c.ckpt.save_every = b["teacher_steps"]
        return c
    method, tbs, loss, *overrides = MODELS[name]
    c.quant.method = method
    for key, value in (overrides[0] if overrides else {}).items():
        c.quant[key] = value
    c.distill.tbs, c.distill.loss = tbs, loss
    c.distill.faithful_to = "paper"      # λ_SPD 3e-2, α_init 0.3 (BiDM paper values)
    c.distill.lr = 6e-5                  # BiDM's paper lr for every student, W1A4 included
    c.train.batch_size, c.train.num_steps = b["student_batch"], b["student_steps"]
    c.train.ema_decay = b["student_ema"]
    c.ckpt.save_every = b["student_steps"]
    return c
