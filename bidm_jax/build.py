"""Config → models: the one place that turns a (resolved) config into the teacher, the
student, the sampling model function with its carry initialiser, and the training loss.

Every mode, benchmark and the reproduction driver build through here (docs/architecture.md):

* :func:`teacher` / :func:`load_teacher`: the FP model of ``model`` (its family), abstract or
  restored from ``distill.teacher``;
* :func:`student`: the model under ``quant.method`` (its :class:`~bidm_jax.methods.Method`),
  initialised from teacher parameters (or zeros of their shapes when only the graph matters),
  fake-quant or packed, with BiDM's TBS table when ``distill.tbs``;
* :func:`sampling_model`: what a workdir holds (teacher or student) as ``(Functional,
  model_fn, carry_init)`` for :func:`bidm_jax.diffusion.sampling.make_sampler`;
* :func:`teacher_trainable` / :func:`distill_trainable`: a :class:`Trainable` for the loop.

The config must be resolved (:func:`bidm_jax.configlib.resolve_config`, done once by
``main.run``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from flax import nnx

from bidm_jax.diffusion import losses as dlosses
from bidm_jax.diffusion import schedules
from bidm_jax.distill import lrm as lrm_lib
from bidm_jax.distill import objective
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.distill import trajectory
from bidm_jax.methods import Method, get_method
from bidm_jax.models import build_unet, compute_dtype, get_family
from bidm_jax.models.functional import Functional, check_shapes, count
from bidm_jax.models.registry import Family
from bidm_jax.quant import trace
from bidm_jax.quant.factory import QuantFactory, fp_factory
from bidm_jax.quant.packed import PackedOptions
from bidm_jax.quant.student import load_teacher_params
from bidm_jax.training import checkpoint

HOW_TO_GET_TEACHER = (
    "train one with `--mode train` (e.g. --config configs/cifar10_ddim_teacher.py) or convert "
    "the official checkpoint with `python -m bidm_jax.convert.ddim_cifar10 --ckpt "
    "model-790000.ckpt --out <dir>`, then pass --config.distill.teacher=<dir>")


def require_resolved(config) -> None:
    if config.distill.tbs is None or config.distill.loss == "auto" or not (
            config.quant.fp_layers or config.quant.binary_layers):
        raise ValueError("the config is not resolved: call bidm_jax.configlib.resolve_config "
                         "(main.run does) before building models from it")


def family(config) -> Family:
    return get_family(config.model.name)


def method(config) -> Method:
    return get_method(config.quant.method)


def input_shape(config) -> tuple[int, int, int]:
    """(H, W, C) of one input of the diffusion model (the family decides)."""
    return tuple(family(config).input_shape(config))


def is_student(config) -> bool:
    """Whether the config's workdir holds a student: ``mode=distill`` or a binary method."""
    return config.mode == "distill" or config.quant.method != "fp"


# --- teacher ---------------------------------------------------------------------------------

def fp_graph(model_config) -> Functional:
    """The FP model of a ``model`` section: graph and parameter names (abstract: no weights
    are initialised). Converters check their output against it."""
    return Functional(nnx.eval_shape(lambda: build_unet(model_config, rngs=nnx.Rngs(0))))


def teacher(config) -> Functional:
    """The FP teacher of ``config``, abstract (see :func:`fp_graph`)."""
    return fp_graph(config.model)


def load_teacher(config) -> tuple[Functional, dict]:
    """Restores ``distill.teacher`` (EMA weights unless ``distill.teacher_use_ema=False``).
    Raises a ValueError/FileNotFoundError saying how to get a teacher when it is missing."""
    import os

    path = config.distill.teacher
    if not path:
        raise ValueError("distill.teacher is empty: the FP teacher checkpoint is required; "
                         + HOW_TO_GET_TEACHER)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no FP teacher checkpoint at distill.teacher={path!r}; "
                                + HOW_TO_GET_TEACHER)
    fm = teacher(config)
    params = checkpoint.load_params(path, use_ema=config.distill.teacher_use_ema)
    check_shapes(fm.shapes(), params, f"teacher checkpoint {path}")
    return fm, {k: np.asarray(v) for k, v in params.items()}


def initial_teacher_params(config, fm: Functional) -> dict:
    """Fresh init, or the weights of ``ckpt.init_from`` (e.g. a converted official model)."""
    if not config.ckpt.init_from:
        return fm.params
    params = checkpoint.load_params(config.ckpt.init_from, use_ema=True)
    check_shapes(fm.shapes(), params, f"ckpt.init_from={config.ckpt.init_from}")
    return {k: np.asarray(v) for k, v in params.items()}


# --- student ---------------------------------------------------------------------------------

def factory(config, packed: PackedOptions | None = None,
            packed_planes: dict | None = None) -> QuantFactory:
    """The layer factory of the config's method. Layers that need their output size
    (XNOR-Net++'s Γ) get it from one abstract trace of the FP model; layers learn their block
    group from the model family; ``packed_planes`` (path -> planes) come from an export."""
    mcfg, qcfg = config.model, config.quant
    sizes = None
    if method(config).needs_output_sizes(qcfg):
        fp = nnx.eval_shape(lambda: build_unet(mcfg, rngs=nnx.Rngs(0), factory=fp_factory()))
        sizes = trace.output_sizes(trace.trace_layers(fp, (1,) + input_shape(config)))
    fam = family(config)
    groups = (lambda path: fam.block_group(path, mcfg)) if fam.block_group else None
    return QuantFactory(qcfg, layer_sizes=sizes, dtype=compute_dtype(mcfg.dtype),
                        block_group=groups, packed_planes=packed_planes, packed=packed)


def quantized_model(config, packed: PackedOptions | None = None, *, abstract: bool = False,
                    seed: int | None = None, packed_planes: dict | None = None) -> nnx.Module:
    """The model built through the method's factory (no teacher values, no TBS table)."""
    rngs = lambda: nnx.Rngs(config.seed if seed is None else seed)
    make = lambda: build_unet(config.model, rngs=rngs(),
                              factory=factory(config, packed, packed_planes))
    return nnx.eval_shape(make) if abstract else make()


@dataclasses.dataclass
class Student:
    """A built student: its Functional, method, TBS wiring, distilled feature names, and its
    sampling functions (``model_fn(values, x, t, carry)``, ``carry_init(x_T)``)."""

    fm: Functional
    method: Method
    topology: tbs_lib.Topology | None
    feature_names: list[str]
    carry_shapes: dict
    model_fn: Callable
    carry_init: Callable | None


def attach_tbs(module: nnx.Module, config) -> tuple[tbs_lib.Topology | None, dict]:
    """With ``distill.tbs``: attaches the TBS table to ``module`` in place and returns
    (topology, per-sample carry shapes); else (None, {})."""
    dist = config.distill
    if not dist.tbs:
        return None, {}
    topology = tbs_lib.make_topology(family(config), module, dist.tbs_topology, dist.tbs_last_n)
    tbs_lib.attach_tbs(module, topology, dist.tbs_init, config.diffusion.num_timesteps)
    return topology, tbs_lib.feature_shapes(module, topology, input_shape(config))


def student(config, teacher_params: dict | None = None,
            packed: PackedOptions | None = None, packed_planes: dict | None = None, *,
            training: bool = False) -> Student:
    """The student of ``config``: its method's layers with the teacher's values copied in
    (``teacher_params``: flat dotted names; None = zeros of the teacher's shapes, when the
    values come later from a checkpoint), or, with ``packed``, the packed-layer graph of an
    export (no teacher values; ``packed_planes``: its per-layer plane counts).
    ``training``: also the distillation's own state (LRM's projections), which sampling and
    export do not need."""
    require_resolved(config)
    m = method(config)
    if packed is not None and not m.binary:
        raise ValueError(f"quant.method={m.name!r} has no binary layers to pack")
    module = quantized_model(config, packed, packed_planes=packed_planes)
    if packed is None:
        if teacher_params is None:
            teacher_params = {n: np.zeros(s.shape, s.dtype)
                              for n, s in teacher(config).shapes().items()}
        load_teacher_params(module, teacher_params)
    topology, shapes = attach_tbs(module, config)
    names = feature_names(config, module)
    if config.distill.loss == "lrm" and training:
        lrm_lib.attach_lrm(module, names, config.distill.lrm_mode, config.distill.lrm_k,
                           input_shape(config))
    if config.distill.data == trajectory.DATA and training:
        trajectory.attach_buffers(module, config, input_shape(config))
    fm = Functional(module)
    model_fn, carry_init = objective.make_sample_fns(fm, topology, shapes)
    return Student(fm, m, topology, names, shapes, model_fn, carry_init)


def feature_names(config, module) -> list[str]:
    """The tap names the distillation loss compares: the TimestepEmbed block outputs for LRM
    (``Family.timestep_outputs``), BiDM's hooked features (``spd_features``) otherwise."""
    fam = family(config)
    if config.distill.loss == "lrm":
        if fam.timestep_outputs is None:
            raise ValueError(f"distill.loss='lrm' needs the TimestepEmbed block outputs of "
                             f"model family {fam.name!r}, which it does not name")
        return list(fam.timestep_outputs(module))
    return list(fam.spd_features(module))


def sampling_aux(aux: dict) -> dict:
    """A checkpoint's auxiliary state without the distillation's own (LRM's projections,
    the teacher-trajectory buffers), which the sampling model does not hold."""
    own = (lrm_lib.PREFIX + ".", trajectory.PREFIX + ".")
    return {n: v for n, v in aux.items() if not n.startswith(own)}


def sampling_model(config, packed: PackedOptions | None = None,
                   packed_planes: dict | None = None):
    """(Functional, model_fn, carry_init) of the model a workdir holds: the FP model, or, for
    a student config (:func:`is_student`), the student with its TBS carry (packed layers with
    ``packed``). Only the graph is built (values come from a checkpoint or an export)."""
    if not is_student(config):
        fm = teacher(config)
        return fm, (lambda values, x, t, carry: fm(values, x, t, carry)), None
    s = student(config, packed=packed, packed_planes=packed_planes)
    return s.fm, s.model_fn, s.carry_init


# --- training --------------------------------------------------------------------------------

@dataclasses.dataclass
class Trainable:
    """What the training loop trains (:mod:`bidm_jax.training.loop`)."""

    fm: Functional
    params: dict
    loss_fn: Callable
    sample_model_fn: Callable
    carry_init: Callable | None
    calibrate_fn: Callable | None
    input_shape: tuple
    tag: str
    info: dict = dataclasses.field(default_factory=dict)
    info_file: str | None = None
    lr_multipliers: dict | None = None   # {param name: lr multiplier} (the method's groups)
    # Latent diffusion (bidm_jax.latent.attach): prepare(frozen, batch, key) -> x0 maps a data
    # batch to the model's input inside the jitted step (the frozen first stage's values
    # enter as arguments); decode(decode_values, x0) -> images for the samples.
    prepare: Callable | None = None
    frozen: dict | None = None
    decode: Callable | None = None
    decode_values: dict | None = None


def teacher_loss_fn(fm: Functional, config):
    """loss(params, aux, x0, key, step) -> (ε loss, ({}, aux)) for x0 (B, H, W, C) in
    [-1, 1] or latents (DDPM Eq. 14; squared or absolute error per ``diffusion.loss_type``,
    summed or averaged over pixels per ``diffusion.loss_reduction``)."""
    dcfg = config.diffusion
    abar = np.asarray(schedules.from_config(dcfg), np.float32)
    use_dropout = config.model.dropout > 0

    def loss_fn(params, aux, x0, key, step=None):
        k_t, k_n, k_d = jax.random.split(key, 3)
        t = dlosses.sample_timesteps(k_t, x0.shape[0], dcfg.num_timesteps, dcfg.antithetic)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = dlosses.q_sample(x0, t, noise, abar)
        eps, _ = fm(params, x_t, t, None, dropout_rng=k_d if use_dropout else None)
        return dlosses.eps_loss(eps, noise, dcfg.loss_reduction, dcfg.loss_type), ({}, aux)

    return loss_fn


def fp_model(config) -> Functional:
    """The FP model of ``config`` with fresh weights (seed ``config.seed``)."""
    return Functional(build_unet(config.model, rngs=nnx.Rngs(config.seed)))


def teacher_trainable(config) -> Trainable:
    """The FP model trained from scratch (or from ``ckpt.init_from``)."""
    fm = fp_model(config)
    params = initial_teacher_params(config, fm)
    return Trainable(fm, params, teacher_loss_fn(fm, config),
                     lambda values, x, t, carry: fm(values, x, t, carry), None, None,
                     input_shape(config), "_train")


def distill_trainable(config, teacher_fm: Functional, teacher_params: dict) -> tuple[
        Trainable, Student]:
    """The student of ``config`` initialised from ``teacher_params`` (flat FP params, numpy or
    replicated jax arrays), its distillation loss and calibration."""
    s = student(config, teacher_params, training=True)
    loss_fn = objective.make_loss_fn(config, s.method, s.fm, teacher_fm, teacher_params,
                                     topology=s.topology, feature_names=s.feature_names)
    calibrate_fn = None
    if (s.method.needs_calibration(s.fm.module(s.fm.params))
            or config.distill.loss == "lrm"):
        calibrate_fn = objective.make_calibrate_fn(config, s.method, s.fm, teacher_fm,
                                                   teacher_params, s.feature_names)
    t = Trainable(s.fm, s.fm.params, loss_fn, s.model_fn, s.carry_init, calibrate_fn,
                  input_shape(config), "_distill", describe(config, s), "distill.json",
                  s.method.lr_multipliers(s.fm.params, config))
    return t, s


def describe(config, s: Student) -> dict:
    """The resolved settings a distillation run used (``{workdir}/distill.json``)."""
    c = config
    return {"method": c.quant.method, "faithful_to": c.distill.faithful_to,
            "lr": c.train.lr, "loss": c.distill.loss, "spd_lambda": c.distill.spd_lambda,
            "tbs": bool(c.distill.tbs), "tbs_topology": c.distill.tbs_topology if c.distill.tbs
            else None, "tbs_init": c.distill.tbs_init if c.distill.tbs else None,
            "tbs_mix": [list(m) for m in s.topology.mix] if s.topology else [],
            "tbs_carry_floats_per_sample": tbs_lib.carry_floats(s.carry_shapes),
            "distill_features": s.feature_names if c.distill.loss not in ("none", "nem") else [],
            **({"lrm_lambda": c.distill.lrm_lambda, "lrm_mode": c.distill.lrm_mode,
                "lrm_k": c.distill.lrm_k} if c.distill.loss == "lrm" else {}),
            **({f: c.distill[f] for f in ("nem_lambda", "nem_target", "nem_unroll",
                                          "nem_stride", "keep_simple")}
               if c.distill.loss == "nem" else {}),
            **(trajectory.describe(c) if c.distill.data == trajectory.DATA else {}),
            **s.method.describe(c),
            "student_params": count(s.fm.params)}
