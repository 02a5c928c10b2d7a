"""The ``distill`` config section: teacher, distillation loss and BiDM's TBS connection
(methods.md §2.5–2.8, §9), and its resolution against ``quant.method`` and ``faithful_to``.

Fields left at ``None`` (or ``"auto"``) are filled once at start-up
(:func:`bidm_jax.configlib.resolve_config`, through :func:`resolve_distill`):

* ``faithful_to='paper'`` (default): BiDM paper's CIFAR-10 values, lr 6e-5, λ 3e-2, α_init 0.3;
  ``faithful_to='code'``: the released CIFAR code's values, lr 1e-4, λ 1e-2, α_init 0.0.
  An explicit ``distill.lr`` / ``distill.spd_lambda`` / ``distill.tbs_init`` wins over the
  table. In ``--mode distill`` the resolved ``distill.lr`` replaces ``train.lr``, and
  ``distill.num_steps`` / ``distill.batch_size`` (when set) replace ``train.num_steps`` /
  ``train.batch_size``, so one config can describe
  a teacher run and a student run (the quickstart does).
* ``tbs=None`` / ``loss='auto'`` → the method's ``distill_defaults`` (bidm: TBS on, SPD),
  else off / ``none`` (the baselines of BiDM Tables 1–2 have neither). Set them explicitly
  for the ablations (XNOR+TBS: ``tbs=True``; XNOR+SPD: ``loss='spd'``).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

FAITHFUL_TO = ("paper", "code")
DATA = ("auto", "real", "teacher_trajectory")
LOSSES = ("auto", "spd", "l2", "lrm", "nem", "none")
NEM_TARGETS = ("eps", "x0", "mean")
LRM_MODES = ("auto", "paper", "code")
SPD_FORMS = ("code", "paper")
TBS_TOPOLOGIES = ("code", "paper")

# methods.md §2.8 / §9: CIFAR-10 values of the BiDM paper (App. A) and of the released code.
FAITHFUL_VALUES = {
    "paper": {"lr": 6e-5, "spd_lambda": 3e-2, "tbs_init": 0.3},
    "code": {"lr": 1e-4, "spd_lambda": 1e-2, "tbs_init": 0.0},
}


def get_distill_config() -> ml_collections.ConfigDict:
    """Default ``distill`` section (see the module docstring and docs/distillation.md)."""
    c = ml_collections.ConfigDict()
    c.teacher = ""              # checkpoint dir of the FP teacher (--mode train or converted)
    c.teacher_use_ema = True
    c.faithful_to = "paper"     # paper | code: fills lr, spd_lambda, tbs_init left at None
    c.lr = config_dict.placeholder(float)          # None = per faithful_to
    c.num_steps = config_dict.placeholder(int)     # None = train.num_steps
    c.batch_size = config_dict.placeholder(int)    # None = train.batch_size
    c.loss = "auto"             # auto | spd | l2 | lrm | none (feature distillation term)
    # What the student trains on: 'real' images noised at random t, or 'teacher_trajectory'
    # (data-free: the FP teacher's DDIM trajectories from x_T ~ N(0, I), the student matching
    # its ε̂ at each step; EfficientDM, bidm_jax.distill.trajectory). auto = the method's.
    c.data = "auto"
    c.spd_lambda = config_dict.placeholder(float)  # None = per faithful_to (3e-2 / 1e-2)
    c.spd_patches = 4
    c.spd_form = "code"         # code (Frobenius of normalised row-Grams) | paper
    c.tbs = config_dict.placeholder(bool)          # None = on for bidm only
    c.tbs_topology = "code"     # code: up-level-1 wiring | paper: last tbs_last_n up blocks
    c.tbs_last_n = 2            # paper topology: number of connections (CIFAR 2, LDM 8)
    c.tbs_init = config_dict.placeholder(float)    # α_init; None = per faithful_to
    # BinaryDM's LRM (methods.md §3.4): lambda, subspace divisor K, and the axis it projects
    # ('paper' channels, 'code' width; 'auto' = faithful_to).
    c.lrm_lambda = 1e-4
    c.lrm_k = 4
    c.lrm_mode = "auto"
    # Q-DM's NeM (loss 'nem', methods.md §4.4; bidm_jax.distill.nem): L_simple (unless
    # keep_simple=False) + nem_lambda·‖T(ε̂_FP) − T(ε̂_Q)‖², T per nem_target (eps | x0 |
    # mean); nem_unroll=K > 0 matches the states after K DDIM steps of stride nem_stride
    # (None = num_timesteps / diffusion.sample_steps) from the shared x_t instead.
    c.nem_lambda = 1.0
    c.nem_target = "eps"
    c.nem_unroll = 0
    c.nem_stride = config_dict.placeholder(int)
    c.keep_simple = True
    return c


def validate_distill_config(c) -> None:
    """Raises ValueError naming the field and its valid values."""
    for field, choices in (("faithful_to", FAITHFUL_TO), ("loss", LOSSES), ("data", DATA),
                           ("spd_form", SPD_FORMS), ("tbs_topology", TBS_TOPOLOGIES),
                           ("lrm_mode", LRM_MODES), ("nem_target", NEM_TARGETS)):
        if c[field] not in choices:
            raise ValueError(f"distill.{field}={c[field]!r} is invalid; valid choices: "
                             f"{', '.join(choices)}")
    if c.spd_lambda is not None and c.spd_lambda < 0:
        raise ValueError(f"distill.spd_lambda={c.spd_lambda} must be >= 0")
    if c.lr is not None and c.lr <= 0:
        raise ValueError(f"distill.lr={c.lr} must be > 0")
    if c.spd_patches < 1:
        raise ValueError(f"distill.spd_patches={c.spd_patches} must be >= 1")
    if c.num_steps is not None and c.num_steps < 0:
        raise ValueError(f"distill.num_steps={c.num_steps} must be >= 0")
    if c.batch_size is not None and c.batch_size < 1:
        raise ValueError(f"distill.batch_size={c.batch_size} must be >= 1")
    if c.tbs_last_n < 1:
        raise ValueError(f"distill.tbs_last_n={c.tbs_last_n} must be >= 1")
    if c.lrm_lambda < 0:
        raise ValueError(f"distill.lrm_lambda={c.lrm_lambda} must be >= 0")
    if not isinstance(c.lrm_k, int) or c.lrm_k < 1:
        raise ValueError(f"distill.lrm_k={c.lrm_k!r} must be an int >= 1")
    if c.nem_lambda < 0:
        raise ValueError(f"distill.nem_lambda={c.nem_lambda} must be >= 0")
    if not isinstance(c.nem_unroll, int) or c.nem_unroll < 0:
        raise ValueError(f"distill.nem_unroll={c.nem_unroll!r} must be an int >= 0")
    if c.nem_stride is not None and c.nem_stride < 1:
        raise ValueError(f"distill.nem_stride={c.nem_stride} must be >= 1")
    if not isinstance(c.keep_simple, bool):
        raise ValueError(f"distill.keep_simple={c.keep_simple!r} must be True or False")
    if c.tbs is not None and not isinstance(c.tbs, bool):
        raise ValueError(f"distill.tbs={c.tbs!r} must be True, False or None (auto)")


def resolve_distill(config, method) -> None:
    """Decides every automatic ``distill`` field of the (unlocked) full ``config`` in place:
    ``lr``, ``spd_lambda``, ``tbs_init`` from ``FAITHFUL_VALUES[faithful_to]`` (with the
    method's changes) unless set; ``tbs`` and ``loss`` from the method's defaults, else off
    (the baselines of BiDM Tables 1–2 have neither)."""
    d = config.distill
    table = {**FAITHFUL_VALUES[d.faithful_to], **method.faithful(d.faithful_to)}
    for field in ("lr", "spd_lambda", "tbs_init"):
        if d[field] is None:
            d[field] = float(table[field])
    method.resolve(config)
    if d.tbs is None:
        d.tbs = False
    if d.loss == "auto":
        d.loss = "none"
    if d.lrm_mode == "auto":
        d.lrm_mode = d.faithful_to
    if d.data == "auto":
        d.data = "real"
    if d.nem_stride is None:
        d.nem_stride = max(int(config.diffusion.num_timesteps)
                           // int(config.diffusion.sample_steps), 1)


def apply_distill_training(config) -> None:
    """In ``--mode distill``: ``train.lr`` = the resolved ``distill.lr``, and
    ``train.num_steps`` / ``train.batch_size`` = ``distill.num_steps`` / ``batch_size`` when
    set (in place, unlocked config)."""
    d = config.distill
    config.train.lr = float(d.lr)
    if d.num_steps is not None:
        config.train.num_steps = int(d.num_steps)
    if d.batch_size is not None:
        config.train.batch_size = int(d.batch_size)
