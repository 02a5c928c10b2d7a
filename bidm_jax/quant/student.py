"""Build a binary student from a teacher's parameters; ReSTE schedule plumbing.

``build_student`` builds the UNet through :class:`QuantFactory` and copies every teacher
tensor (conv/dense ``kernel``/``bias``, norm ``scale``/``bias``) into the student leaf at the
same path; the method's extra parameters keep their own initialisation.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax import traverse_util

from bidm_jax.quant import trace
from bidm_jax.quant.config import validate_quant_config
from bidm_jax.quant.factory import QuantFactory, fp_factory
from bidm_jax.quant.layers import QConv, QDense, ReSTEPower
from bidm_jax.quant.packed import PackedOptions

__all__ = ["build_student", "build_packed_student", "student_factory", "load_teacher_params",
           "refresh_kernel_inits", "set_reste_o", "with_reste_o"]


def _flat(tree) -> dict[tuple, Any]:
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if tree and all(isinstance(k, str) and "." in k for k in tree):
        # The project's checkpoint form: dotted names ("down.0.block.1.conv1.kernel").
        return {tuple(int(p) if p.isdigit() else p for p in k.split(".")): v
                for k, v in tree.items()}
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def load_teacher_params(student: nnx.Module, teacher_params) -> int:
    """Copy ``teacher_params`` (an nnx.State or nested dict of arrays) into ``student``.

    Every teacher tensor must exist in the student with the same shape; otherwise a
    ValueError names the tensor. Returns the number of tensors copied. Afterwards
    kernel-derived inits are refreshed (:func:`refresh_kernel_inits`).
    """
    teacher = _flat(teacher_params)
    state = nnx.state(student)
    target = _flat(state)
    for path, value in teacher.items():
        if path not in target:
            raise ValueError(f"teacher tensor {_name(path)!r} has no counterpart in the student "
                             "(check that both models were built from the same model config)")
        t_shape, s_shape = tuple(jnp.shape(value)), tuple(jnp.shape(target[path]))
        if t_shape != s_shape:
            raise ValueError(f"shape mismatch for {_name(path)!r}: teacher {t_shape} vs "
                             f"student {s_shape}")
        target[path] = jnp.asarray(value, dtype=jnp.asarray(target[path]).dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(target))
    nnx.update(student, state)
    refresh_kernel_inits(student)
    return len(teacher)


def refresh_kernel_inits(model: nnx.Module) -> None:
    """Recompute kernel-derived initial values (learnable sigma, XNOR-Net++ alpha) from the
    current kernels of every factory layer (BiDM paper Eq. 6: sigma init = ||w||_1/n)."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, (QConv, QDense)) and m.spec.binary:
            m.init_from_kernel()


def build_student(teacher_params, model_config, quant_config=None, *,
                  rngs: nnx.Rngs | None = None, input_shape: tuple | None = None,
                  apply_fn: Callable | None = None) -> nnx.Module:
    """Binary (or FP) UNet initialised from a teacher's parameters.

    ``build_student(teacher_params, config)`` with a full project config is the short form
    (its ``model`` and ``quant`` sections; input shape from ``model.resolution``).

    teacher_params: nnx.State / nested dict of the FP UNet (same model_config), or the flat
    dotted-name dict a project checkpoint holds (``checkpoint.load_params``);
    quant_config: the ``quant`` section; rngs: for the extra params (default nnx.Rngs(0));
    input_shape: (1, H, W, C), needed only by 'xnor++' to size Gamma (the FP model is traced
    abstractly with ``apply_fn``, default ``model(x, t)``; see :func:`trace.trace_layers`).
    Layers compute in ``model_config.dtype`` (float32 / bfloat16). Uses
    ``bidm_jax.models.build_unet(model_config, *, rngs, factory)``.
    """
    from bidm_jax.models import build_unet  # imported lazily: models depend on this package

    if quant_config is None:
        if not (hasattr(model_config, "model") and hasattr(model_config, "quant")):
            raise ValueError("build_student needs (teacher_params, config) with model/quant "
                             "sections, or (teacher_params, model_config, quant_config)")
        config, model_config, quant_config = model_config, model_config.model, model_config.quant
        if input_shape is None:
            r = config.model.resolution
            input_shape = (1, r, r, config.model.in_channels)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    factory = student_factory(model_config, quant_config, input_shape, apply_fn)
    student = build_unet(model_config, rngs=rngs, factory=factory)
    load_teacher_params(student, teacher_params)
    return student


def student_factory(model_config, quant_config, input_shape: tuple | None = None,
                    apply_fn: Callable | None = None,
                    packed: PackedOptions | None = None) -> QuantFactory:
    """The :class:`QuantFactory` a student UNet is built through: compute dtype from
    ``model_config.dtype`` and, for 'xnor++', every conv's output size from an abstract
    trace of the FP model at ``input_shape`` (1, H, W, C)."""
    from bidm_jax.models import build_unet

    validate_quant_config(quant_config)
    sizes = None
    if quant_config.method == "xnor++":
        if input_shape is None:
            raise ValueError("method 'xnor++' needs input_shape=(1, H, W, C) to size Gamma")
        fp_model = nnx.eval_shape(
            lambda: build_unet(model_config, rngs=nnx.Rngs(0), factory=fp_factory()))
        sizes = trace.output_sizes(trace.trace_layers(fp_model, input_shape, apply_fn))
    # model.dtype is the compute dtype (params stay float32), as for the FP factory.
    dtype_name = model_config.get("dtype", "float32") if hasattr(model_config, "get") else "float32"
    dtype = None if dtype_name == "float32" else jnp.dtype(dtype_name)
    return QuantFactory(quant_config, layer_sizes=sizes, dtype=dtype, packed=packed)


def build_packed_student(model_config, quant_config, packed: PackedOptions, *,
                         rngs: nnx.Rngs | None = None,
                         input_shape: tuple | None = None) -> nnx.Module:
    """The student UNet with packed binary layers (``kernel_bits`` / ``kernel_scale``),
    values to be loaded from an export (:mod:`bidm_jax.export`); no teacher needed."""
    from bidm_jax.models import build_unet

    if quant_config.method == "fp":
        raise ValueError("quant.method='fp' has no binary layers to pack")
    factory = student_factory(model_config, quant_config, input_shape, packed=packed)
    return build_unet(model_config, rngs=nnx.Rngs(0) if rngs is None else rngs,
                      factory=factory)


def set_reste_o(model: nnx.Module, o) -> None:
    """Set ReSTE's power o in every layer of ``model`` (in place)."""
    for _, m in nnx.iter_modules(model):
        v = getattr(m, "reste_o", None)
        if isinstance(v, ReSTEPower):
            v[...] = jnp.asarray(o, jnp.float32)


def with_reste_o(state: nnx.State, o) -> nnx.State:
    """Functional form for jitted loops over ``nnx.split`` state: returns ``state`` with every
    :class:`ReSTEPower` set to ``o`` (e.g. ``reste_o_schedule(step / total, o_end)``)."""
    o = jnp.asarray(o, jnp.float32)

    def put(v):
        if isinstance(v, ReSTEPower):
            return v.replace(jnp.broadcast_to(o, jnp.shape(v[...])))
        return v

    return jax.tree.map(put, state, is_leaf=lambda v: isinstance(v, nnx.Variable))
