"""Start-up validation and resolution of a full config.

:func:`validate_config`: every bad value fails before any device work, with a message that
names the field and lists the valid choices. :func:`resolve_config` (``main.run`` calls it
once) decides every automatic value, so the config a run logs is the config it ran: the
method's defaults and the ``faithful_to`` values of ``distill``, the model family's layer
patterns in ``quant``, and in ``--mode distill`` the training fields ``distill`` overrides.
"""
from __future__ import annotations

import copy

from absl import logging

from bidm_jax import first_stage
from bidm_jax.data.cifar10 import SOURCES
from bidm_jax.data.images import DATASETS as IMAGE_DATASETS
from bidm_jax.data.images import INTERPOLATIONS
from bidm_jax.data.images import SOURCES as IMAGE_SOURCES
from bidm_jax.data.pipeline import DATASETS
from bidm_jax.diffusion.losses import LOSS_TYPES, REDUCTIONS
from bidm_jax.diffusion.samplers import CONVENTIONS, SAMPLERS, VAR_TYPES
from bidm_jax.diffusion.schedules import SCHEDULES
from bidm_jax.models import DTYPES, get_family, list_families
from bidm_jax.training.optim import LR_DECAYS

MATMUL_PRECISIONS = ("default", "tensorfloat32", "float32", "bfloat16", "highest")
DISTRIBUTED = ("auto", "yes", "no")


def _choice(cfg, section: str, field: str, choices) -> None:
    value = cfg[section][field]
    if value not in choices:
        raise ValueError(f"{section}.{field}={value!r} is invalid; valid choices: "
                         f"{', '.join(map(str, choices))}")


def _positive(cfg, section: str, field: str, allow_zero: bool = False) -> None:
    value = cfg[section][field]
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{section}.{field}={value!r} must be "
                         f"{'>= 0' if allow_zero else '> 0'}")


def _unit_interval(cfg, section: str, field: str) -> None:
    value = cfg[section][field]
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{section}.{field}={value!r} must be in [0, 1)")


def validate_config(cfg) -> None:
    """Raises ValueError on the first invalid field."""
    _choice(cfg, "data", "dataset", DATASETS)
    _choice(cfg, "data", "source", IMAGE_SOURCES if cfg.data.dataset in IMAGE_DATASETS
            else SOURCES)
    _choice(cfg, "data", "split", ("train", "test"))
    _positive(cfg, "data", "image_size")
    _validate_channels(cfg)
    _choice(cfg, "data", "interpolation", INTERPOLATIONS)
    _positive(cfg, "data", "workers")
    _choice(cfg, "model", "name", list_families())
    _choice(cfg, "model", "dtype", tuple(DTYPES))
    get_family(cfg.model.name).validate(cfg)
    _unit_interval(cfg, "model", "dropout")
    _choice(cfg, "diffusion", "schedule", SCHEDULES)
    _choice(cfg, "diffusion", "loss_reduction", REDUCTIONS)
    _choice(cfg, "diffusion", "loss_type", LOSS_TYPES)
    _choice(cfg, "diffusion", "sampler", SAMPLERS)
    _choice(cfg, "diffusion", "timestep_convention", CONVENTIONS)
    _choice(cfg, "diffusion", "var_type", VAR_TYPES)
    _positive(cfg, "diffusion", "num_timesteps")
    if not 1 <= cfg.diffusion.sample_steps <= cfg.diffusion.num_timesteps:
        raise ValueError(f"diffusion.sample_steps={cfg.diffusion.sample_steps} must be in "
                         f"[1, {cfg.diffusion.num_timesteps}]")
    steps, T = cfg.diffusion.sample_steps, cfg.diffusion.num_timesteps
    if cfg.diffusion.timestep_convention == "ldm" and (T - 1) // (T // steps) * (T // steps) \
            + 1 >= T:
        # make_ddim_timesteps: range(0, T, T // S) + 1 reaches T (out of the schedule) when
        # S does not divide T, e.g. S = 3 -> {1, 334, 667, 1000}
        raise ValueError(f"diffusion.sample_steps={steps} with timestep_convention='ldm' "
                         f"gives timestep {T} (range(0, {T}, {T // steps}) + 1), outside the "
                         f"{T}-step schedule; use a divisor of {T} (100, 200, 250, ...)")
    if cfg.diffusion.eta < 0:
        raise ValueError(f"diffusion.eta={cfg.diffusion.eta} must be >= 0")
    if not 0 < cfg.diffusion.beta_start < cfg.diffusion.beta_end < 1:
        raise ValueError("need 0 < diffusion.beta_start < diffusion.beta_end < 1, got "
                         f"{cfg.diffusion.beta_start}, {cfg.diffusion.beta_end}")
    for f in ("batch_size", "lr", "log_every"):
        _positive(cfg, "train", f)
    for f in ("num_steps", "warmup_steps", "grad_clip", "sample_every", "weight_decay",
              "max_nonfinite_streak"):
        _positive(cfg, "train", f, allow_zero=True)
    _unit_interval(cfg, "train", "ema_decay")
    if not (cfg.train.warmup_start == -1 or 0 <= cfg.train.warmup_start <= 1):
        raise ValueError(f"train.warmup_start={cfg.train.warmup_start} must be -1 (DDPM's "
                         "warm-up) or in [0, 1] (LDM's LambdaLinearScheduler f_start)")
    _choice(cfg, "train", "matmul_precision", MATMUL_PRECISIONS)
    _choice(cfg, "train", "lr_decay", LR_DECAYS)
    for f in ("num_samples", "batch_size", "grid_size"):
        _positive(cfg, "sample", f)
    _positive(cfg, "ckpt", "save_every")
    _positive(cfg, "ckpt", "max_to_keep")
    _positive(cfg, "ckpt", "keep_period", allow_zero=True)
    _choice(cfg, "mesh", "distributed", DISTRIBUTED)
    for f in ("init_timeout_s", "heartbeat_timeout_s"):
        _positive(cfg, "mesh", f)
    if cfg.mesh.data == 0 or cfg.mesh.data < -1:
        raise ValueError(f"mesh.data={cfg.mesh.data} must be -1 (all devices) or >= 1")
    _validate_export(cfg)
    first_stage.validate(cfg)
    if cfg.diffusion.loss_type != "l2" and (cfg.distill.loss == "nem"
                                            or cfg.distill.data == "teacher_trajectory"):
        raise ValueError(f"diffusion.loss_type={cfg.diffusion.loss_type!r} is implemented for "
                         "the ε loss of training and real-data distillation; distill.loss="
                         "'nem' and distill.data='teacher_trajectory' use l2 only")
    for section, validate in _section_validators():
        validate(cfg[section])



def _validate_channels(cfg) -> None:
    """``data.channels``: 3, or 1 for the (grey) digits (a pixel-space family checks that its
    model reads and predicts that many: ``ddim_family.validate``)."""
    channels = cfg.data.get("channels", 3)
    if channels not in (1, 3) or (channels == 1 and cfg.data.dataset != "digits"):
        raise ValueError(f"data.channels={channels!r} is invalid; valid choices: 3, or 1 "
                         f"for data.dataset='digits' (got {cfg.data.dataset!r})")


def _validate_export(cfg) -> None:
    """``export`` section and ``sample.packed``."""
    from bidm_jax.quant.packed import KERNELS, PALLAS_BACKENDS, TPU_OPERAND_CHOICES

    if not isinstance(cfg.sample.packed, str):
        raise ValueError(f"sample.packed={cfg.sample.packed!r} must be '', 'auto' or a path")
    _choice(cfg, "export", "kernel", KERNELS)
    _choice(cfg, "export", "pallas_backend", PALLAS_BACKENDS)
    _choice(cfg, "export", "tpu_operand", TPU_OPERAND_CHOICES)


def _section_validators():
    """Validators that live beside the code that owns a config section."""
    from bidm_jax.distill.config import validate_distill_config
    from bidm_jax.metrics.config import validate_eval_config
    from bidm_jax.quant.config import validate_quant_config

    return [("quant", validate_quant_config), ("distill", validate_distill_config),
            ("eval", validate_eval_config)]


def resolve_config(config, mode: str | None = None):
    """A validated copy of ``config`` with every automatic value decided (see the module
    docstring). ``mode``: the mode that will run (default ``config.mode``); in 'distill' the
    ``distill`` section's lr / num_steps / batch_size replace the ``train`` fields. Resolving
    a resolved config changes nothing."""
    from bidm_jax.distill.config import apply_distill_training, resolve_distill
    from bidm_jax.methods import get_method

    validate_config(config)
    out = copy.deepcopy(config)
    family = get_family(out.model.name)
    method = get_method(out.quant.method)
    fp_layers, binary_layers = method.layer_patterns(family)
    with out.unlocked():
        resolve_distill(out, method)
        if not out.quant.fp_layers:
            out.quant.fp_layers = fp_layers
        if not out.quant.binary_layers:
            out.quant.binary_layers = binary_layers
        if not out.quant.edge_layers:
            out.quant.edge_layers = tuple(family.edge_layers)
        if not out.quant.conv1d_layers:
            out.quant.conv1d_layers = tuple(family.conv1d_layers)
        if (mode or out.mode) == "distill":
            apply_distill_training(out)
        method.resolve_quant(out)
    validate_config(out)
    if out.sample.grid_size > out.sample.num_samples:
        logging.warning("sample.grid_size=%d is larger than sample.num_samples=%d: the grid "
                        "shows %d images", out.sample.grid_size, out.sample.num_samples,
                        out.sample.num_samples)
    return out


def sibling(config_file: str, name: str):
    """Loads config module ``name`` from the folder of ``config_file``: lets override files
    import ``default.py`` wherever the configs folder lives (config files load by path)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_bidm_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
