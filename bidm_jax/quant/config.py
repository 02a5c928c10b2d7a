"""The ``quant`` config section: method name and the paper-vs-code flags (methods.md §9).

Defaults follow the spec's suggestion column: BiDM's released code where the spec says
"code", the BiDM CIFAR code's shortcut scale (no abs, init 0.0). Override per experiment,
e.g. ``--config.quant.method=xnor`` or ``--config.quant.shortcut_abs=True``. The method
name is checked against the method registry (:mod:`bidm_jax.methods`) at start-up.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

__all__ = ["get_quant_config", "validate_quant_config", "CHOICES"]

# Valid values of the string flags.
CHOICES = {
    "weight_scale": ("detached", "learnable"),
    "xnor_weight_grad": ("ste", "exact"),
    "kconv_bias": ("code", "none"),
    "linear_tau": ("code", "paper"),
    "shortcut": ("auto", "none", "scaled", "unit"),
    "input_scale": ("auto", "none", "box", "kconv"),
    "rprelu": ("auto", "none", "post_residual", "pre_residual"),
    "binary_bias": ("auto", "drop", "keep"),
    "two_basis": ("auto", "paper", "code", "none"),
    "act_step": ("auto", "learned", "learned_lsq", "dynamic"),
    "weight_granularity": ("auto", "channel", "tensor"),
    "taq": ("auto", "batch_ema", "online", "per_t_bucket", "off"),
    "taq_variance": ("biased", "unbiased"),
    "taq_affine_init": ("unit", "calibrated"),
    "talsq_init": ("per_step", "shared"),
    "zp_form": ("offset", "code"),
    "conv1d": ("code", "conv2d"),
}


def get_quant_config() -> ml_collections.ConfigDict:
    """Default ``quant`` section. See docs/quantization.md for every field."""
    c = ml_collections.ConfigDict()
    c.method = "bidm"            # a registered method (bidm_jax.methods)
    # BiDM/ReActNet/BBCU weight scale: 'detached' per-channel mean|W| (code, §2.2) or
    # 'learnable' sigma initialised to mean|W| (BiDM paper Eq. 6).
    c.weight_scale = "detached"
    # 'xnor' only: 'ste' = BiDM vanilla (clip STE), 'exact' = XNOR-Net's (1/n + alpha 1[|W|<=1]).
    c.xnor_weight_grad = "ste"
    # BiDM k-conv bias: 'code' learnable, PyTorch default init U(-1/k, 1/k); 'none' = paper.
    c.kconv_bias = "code"
    # BiDM dense layers: 'code' forward sign(x) ignores tau (gradients only); 'paper' sign(x+tau).
    c.linear_tau = "code"
    # Per-conv shortcut (§2.4): 'auto' = the method's recipe (bidm/xnor 'scaled',
    # reactnet/bbcu 'unit', others 'none'); 'scaled' = y + s·shortcut(x) with learnable s;
    # 'unit' = y + shortcut(x).
    c.shortcut = "auto"
    # Input scale map K of binary convs: 'auto' = the method's recipe (bidm 'kconv', xnor
    # 'box', xnor++ its Gamma, others 'none'); 'none' | 'box' (XNOR-Net's fixed 1/k² box on
    # mean_c|x|) | 'kconv' (BiDM's learnable k-conv) override it, e.g. to ablate K.
    c.input_scale = "auto"
    # RPReLU after each binary conv: 'auto' = the method's recipe (reactnet 'post_residual',
    # bbcu 'pre_residual', others 'none'); an explicit value overrides it, e.g. to ablate it.
    c.rprelu = "auto"
    # Layers that are Conv1d in the official code (quant.conv1d_layers; LDM attention qkv and
    # proj_out): 'code' = BiDM's BNNConv1d, the method's sign and weight scale without the
    # K map (box / k-conv) and without the per-conv shortcut; 'conv2d' = the same recipe as
    # every other binary conv (the BiDM paper does not single them out).
    c.conv1d = "code"
    c.shortcut_scale_init = 0.0  # CIFAR code 0.0; LDM code 0.3
    c.shortcut_abs = False  # CIFAR code False; LDM code True (|s|)
    # ReSTE (§5): o goes from 1 to reste_o_end with a cosine schedule; threshold t.
    c.reste_o_end = 3.0
    c.reste_threshold = 1.5
    # Binary layers' conv/linear bias: 'auto' = the method's recipe (W1A1 methods drop it,
    # §2.2 code; BinaryDM / LSQ keep it, §3.2 code); 'drop' | 'keep' override it.
    c.binary_bias = "auto"
    # --- low-bit methods (binarydm, binarydm_baseline, lsq; methods.md §3, §5) -------------
    # None / 'auto' = the method's value for distill.faithful_to (docs/binarydm.md).
    c.bits_w = config_dict.placeholder(int)   # lsq weights (2); BinaryDM weights are 1 bit
    c.bits_a = config_dict.placeholder(int)   # activations: 4 (W1A4); 8, 32 (= FP) by override
    # EBB two-basis weights on the head/tail groups: 'paper' (until ebb_switch_step, with the
    # sigma_II regulariser), 'code' (kept to the end, no regulariser), 'none' (single basis).
    c.two_basis = "auto"
    c.two_basis_groups = 2        # groups 0..n-1 (feature scale >= 1/2 of the input's)
    c.ebb_tau = 9e-2              # L_EBB = tau * mean sigma_II (paper Table 11 "mu")
    c.ebb_switch_step = config_dict.placeholder(int)  # None = half of train.num_steps
    # LSQ activation step: 'learned' (calibrated on the first batch, then trained; step
    # gradient scaled by 1/sqrt(numel·Q_P) as BinaryDM's code), 'learned_lsq' (the same with
    # the LSQ paper's 1/sqrt(features per sample·Q_P), Q-DM) or 'dynamic' (2·mean|x|/sqrt(Q_P)
    # of every batch, the released BinaryDM code's _ActQ).
    c.act_step = "auto"
    c.first_last_bits = config_dict.placeholder(int)  # W/A bits of quant.edge_layers; 32 = FP
    c.progressive = config_dict.placeholder(bool)     # one layer group per step (code)
    c.attn_quant = config_dict.placeholder(bool)      # LSQ on attention q, k, softmax, v
    c.attn_quant_start = config_dict.placeholder(int)  # first step with it on (code: groups+1)
    # --- Q-DM (methods.md §4.4; every value is this project's reading, docs/qdm.md) -------
    # LSQ weight steps: 'channel' (one per output channel) or 'tensor' (original LSQ).
    c.weight_granularity = "auto"
    # TaQ on attention operands before their quantizer: batch_ema | online | per_t_bucket |
    # off ('auto' = the method's: batch_ema for qdm, off otherwise); see bidm_jax.quant.taq.
    c.taq = "auto"
    c.taq_operands = ("q", "k")       # add "v" to normalise v too
    c.taq_buckets = 10                # per_t_bucket: timestep groups of T/buckets
    c.taq_momentum = 0.1              # running statistics, PyTorch convention (Flax 0.9)
    c.taq_variance = "biased"         # the running variance tracks the biased (Flax) or
    #                                   unbiased (PyTorch BatchNorm) batch variance
    c.taq_eps = 1e-5
    c.taq_affine_init = "unit"        # gamma 1, beta 0 | 'calibrated': identity on batch 1
    c.taq_timesteps = config_dict.placeholder(int)  # T of the buckets (diffusion's, set)
    # --- EfficientDM (methods.md §5; docs/efficientdm.md) -------------------------------
    c.lora_rank = 32              # QALoRA rank on every b-bit layer (0: no LoRA)
    c.lora_lr_div = 2500.0        # LoRA lr = the layer's mean weight step Δ / this (code)
    c.weight_step_lr = 1e-6       # lr of the weight steps Δ (code); the TALSQ lr is train.lr
    c.weight_zp_lr = 0.0          # lr of the weight zero points (code: frozen)
    # TALSQ init: 'per_step' (each sampling step's (Δ, z) from that step's trajectory
    # states) or 'shared' (one calibration over all steps copied to every step: the code).
    c.talsq_init = "per_step"
    # Activation zero point: 'offset' round(x/Δ + z) (integer levels for any z) or 'code'
    # round(x/Δ) + z (the released code's; no integer export once z is trained).
    c.zp_form = "offset"
    c.talsq_grid = config_dict.placeholder(tuple)  # (first t, stride, steps); None = sampler's
    # Layers kept FP / binarized: fnmatch patterns on the layer paths (official state-dict
    # names), FP checked first. Empty = the model family's (bidm_jax.models), filled in at
    # start-up; a path matching neither list is an error.
    c.fp_layers = ()
    c.binary_layers = ()
    c.edge_layers = ()   # the first and last convs (methods quantizing them at 8 bits)
    c.conv1d_layers = ()  # Conv1d in the official code (the family's; see quant.conv1d)
    return c


def validate_quant_config(cfg) -> None:
    """Raise ValueError naming the field and the valid choices for any bad value."""
    from bidm_jax.methods import get_method

    method = get_method(cfg.method)  # unknown names list the registered methods
    for field, valid in CHOICES.items():
        if cfg[field] not in valid:
            raise ValueError(f"quant.{field}={cfg[field]!r} is not valid; "
                             f"choose one of {list(valid)}")
    if not float(cfg.reste_o_end) >= 1.0:
        raise ValueError(f"quant.reste_o_end must be >= 1 (o starts at 1), got {cfg.reste_o_end}")
    if not float(cfg.reste_threshold) > 0.1:
        raise ValueError(
            f"quant.reste_threshold must be > 0.1 (the secant interval), got {cfg.reste_threshold}")
    for field in ("bits_w", "bits_a", "first_last_bits"):
        v = cfg[field]
        if v is not None and not (v == 32 or 1 <= v <= 8):
            raise ValueError(f"quant.{field}={v!r} must be in 1..8 or 32 (full precision)")
    if cfg.two_basis_groups < 0:
        raise ValueError(f"quant.two_basis_groups={cfg.two_basis_groups} must be >= 0")
    if cfg.ebb_tau < 0:
        raise ValueError(f"quant.ebb_tau={cfg.ebb_tau} must be >= 0")
    for field in ("ebb_switch_step", "attn_quant_start"):
        if cfg[field] is not None and cfg[field] < 0:
            raise ValueError(f"quant.{field}={cfg[field]} must be >= 0")
    bad_ops = set(cfg.taq_operands) - {"q", "k", "v"}
    if isinstance(cfg.taq_operands, str) or bad_ops:
        raise ValueError(f"quant.taq_operands={cfg.taq_operands!r} must be a tuple of 'q', 'k', "
                         "'v'")
    if cfg.taq_buckets < 1:
        raise ValueError(f"quant.taq_buckets={cfg.taq_buckets} must be >= 1")
    if not 0 < cfg.taq_momentum <= 1:
        raise ValueError(f"quant.taq_momentum={cfg.taq_momentum} must be in (0, 1]")
    if not cfg.taq_eps > 0:
        raise ValueError(f"quant.taq_eps={cfg.taq_eps} must be > 0")
    for field in ("fp_layers", "binary_layers", "edge_layers", "conv1d_layers"):
        pats = cfg[field]
        if isinstance(pats, str) or not all(isinstance(p, str) for p in pats):
            raise ValueError(f"quant.{field} must be a tuple of fnmatch patterns, got {pats!r}")
    float(cfg.shortcut_scale_init)
    if not isinstance(cfg.shortcut_abs, bool):
        raise ValueError(f"quant.shortcut_abs must be True or False, got {cfg.shortcut_abs!r}")
    method.validate(cfg)
