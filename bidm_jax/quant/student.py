"""A student initialised from a teacher: :func:`load_teacher_params` copies every teacher
tensor (conv/dense ``kernel``/``bias``, norm ``scale``/``bias``) into the student leaf at the
same path; the method's extra parameters keep their own initialisation, except those derived
from the kernel (re-derived afterwards). ``bidm_jax.build.student`` builds the student."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax import traverse_util

from bidm_jax.quant.layers import QConv, QDense

__all__ = ["load_teacher_params", "refresh_kernel_inits"]


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
