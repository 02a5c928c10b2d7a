"""Per-layer quantizer variables (:class:`~bidm_jax.quant.registry.QVar`): creating them on a
layer and reading them as a quantizer's keyword arguments.

While a layer is traced under :func:`bidm_jax.models.functional.aux_mode`, an activation
quantizer's variables with a ``calibrate`` rule are set from the layer input ('calibrate'),
and those with an ``update`` rule advance ('train'); the caller reads the new values back
from the module (``Functional.aux_of``), so nothing is mutated outside a functional step.
"""
from __future__ import annotations

import jax
from flax import nnx

from bidm_jax.models.functional import Aux, current_aux_mode
from bidm_jax.quant import registry

__all__ = ["quantizer", "build", "kwargs", "refresh_from_kernel"]


def quantizer(name: str, kind: str) -> registry.Quantizer:
    return registry.get_quantizer(name, kind)


def build(holder: nnx.Module, qvars, kernel, in_features: int | None) -> None:
    """Creates each variable of ``qvars`` on ``holder`` (skipping attributes that exist:
    two quantizers of one layer may share one, like ReSTE's o)."""
    for qv in qvars:
        if getattr(holder, qv.attr, None) is not None:
            continue
        value = qv.init(kernel, in_features)
        if qv.kind == "param":
            var = nnx.Param(value)
        elif qv.kind == "aux":
            var = (qv.variable or Aux)(value)
        else:
            raise ValueError(f"quantizer variable {qv.name!r}: kind must be 'param' or 'aux', "
                             f"got {qv.kind!r}")
        setattr(holder, qv.attr, var)


def kwargs(holder: nnx.Module, q: registry.Quantizer, spec, x: jax.Array | None) -> dict:
    """Keyword arguments of quantizer ``q`` on ``holder``: its variables' values (set or
    advanced from the input ``x`` per the current aux mode) and its static options read off
    the layer ``spec``."""
    mode = current_aux_mode() if x is not None else None
    out = {}
    for qv in q.variables:
        var = getattr(holder, qv.attr)
        value = var[...]
        if mode == "calibrate" and qv.calibrate is not None:
            value = qv.calibrate(x)
            var[...] = value
        elif mode == "train" and qv.update is not None:
            value = qv.update(value, x)
            var[...] = value
        out[qv.name] = value
    if q.static is not None and spec is not None:
        out.update(q.static(spec))
    return out


def refresh_from_kernel(holder: nnx.Module, q: registry.Quantizer, kernel, in_features) -> None:
    """Re-runs the kernel-derived inits (``from_kernel``) of ``q``'s variables."""
    for qv in q.variables:
        if qv.from_kernel and getattr(holder, qv.attr, None) is not None:
            getattr(holder, qv.attr)[...] = qv.init(kernel, in_features)
