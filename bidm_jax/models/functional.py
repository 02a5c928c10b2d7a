"""A model as (static graph, flat value dicts): what jitted loops, optimizers and checkpoints
see. Names are dotted module paths (``down.1.block.0.conv1.kernel``), i.e. the official
state-dict names with Flax leaf names, so checkpoints are readable and convertible.

A model's state has three parts:

* **parameters** (``nnx.Param``): trained by the optimizer, averaged by the EMA;
* **auxiliary state** (:class:`Aux`): values that are not trained by gradients but change
  during a run and must survive it: quantizer statistics, steps set by a calibration batch,
  cached projections, stage flags, ReSTE's schedule value. The loss returns them updated, the
  training loop carries and checkpoints them, sampling reads them;
* **constants**: everything else (fixed by the graph).

Parameter and auxiliary names never collide (they are different leaves), so one flat dict
holding both is a valid input of :meth:`Functional.module`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax
import numpy as np
from flax import nnx

Params = dict  # str -> jax.Array


class Aux(nnx.Variable):
    """Auxiliary model state (see the module docstring). Subclass it to tag a kind."""


def path_name(path) -> str:
    return ".".join(str(p) for p in path)


# What the layers may do with their auxiliary state during the current trace: 'calibrate'
# (a calibration batch sets it), 'train' (a training step updates running statistics) or
# None (read only: sampling, evaluation). A trace-time Python setting, like a layer record.
_AUX_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("bidm_aux_mode",
                                                                       default=None)
AUX_MODES = ("calibrate", "train")


@contextlib.contextmanager
def aux_mode(mode: str | None) -> Iterator[None]:
    """Layers traced inside the block may write their auxiliary state as ``mode`` says."""
    if mode is not None and mode not in AUX_MODES:
        raise ValueError(f"aux mode must be one of {AUX_MODES} or None, got {mode!r}")
    token = _AUX_MODE.set(mode)
    try:
        yield
    finally:
        _AUX_MODE.reset(token)


def current_aux_mode() -> str | None:
    return _AUX_MODE.get()


# The timesteps (B,) of the model call being traced, for layers whose behaviour depends on
# t without taking it as an argument (per-timestep quantizer statistics: Q-DM's TaQ buckets,
# EfficientDM's per-step activation steps). A family's model sets it around its forward.
_TIMESTEP: contextvars.ContextVar = contextvars.ContextVar("bidm_timestep", default=None)


@contextlib.contextmanager
def timestep_context(t) -> Iterator[None]:
    """Layers traced inside the block see ``t`` (B,) through :func:`current_timestep`."""
    token = _TIMESTEP.set(t)
    try:
        yield
    finally:
        _TIMESTEP.reset(token)


def current_timestep():
    """The (B,) timesteps of the enclosing model call; a clear error outside one."""
    t = _TIMESTEP.get()
    if t is None:
        raise RuntimeError("this layer needs the timestep, but it was called outside a model "
                           "forward that sets it (models.functional.timestep_context)")
    return t


def _shape(v) -> tuple:
    return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)


def _flat(state) -> list:
    return list(nnx.to_flat_state(state))


class Functional:
    """Splits an NNX module into its graph, its trainable ``nnx.Param`` leaves (``params``),
    its auxiliary state (``aux``) and constants, and rebuilds the module from flat dicts
    inside jit."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, aux, self.rest = nnx.split(model, nnx.Param, Aux, ...)
        flat, flat_aux = _flat(params), _flat(aux)
        self.paths = [k for k, _ in flat]
        self.names = [path_name(k) for k in self.paths]
        self.params: Params = {path_name(k): v.get_value() for k, v in flat}
        self.aux_paths = [k for k, _ in flat_aux]
        self.aux_names = [path_name(k) for k in self.aux_paths]
        self._aux_types = [type(v) for _, v in flat_aux]
        self.aux: dict = {path_name(k): v.get_value() for k, v in flat_aux}

    def module(self, values: Params, aux: dict | None = None) -> nnx.Module:
        """The module with parameters from ``values`` and auxiliary state from ``aux``, else
        from ``values`` where it holds the aux names, else the initial values."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise KeyError(f"parameters missing: {missing[:5]}{'...' if len(missing) > 5 else ''}")
        aux = values if aux is None else aux
        state = nnx.from_flat_state([(k, nnx.Param(values[n]))
                                     for k, n in zip(self.paths, self.names)])
        aux_state = nnx.from_flat_state([
            (k, cls(aux[n] if n in aux else self.aux[n]))
            for k, n, cls in zip(self.aux_paths, self.aux_names, self._aux_types)])
        return nnx.merge(self.graphdef, state, aux_state, self.rest)

    def params_of(self, module: nnx.Module) -> Params:
        """The parameters of ``module`` (after a calibration that may have set some)."""
        return {path_name(k): v.get_value() for k, v in _flat(nnx.state(module, nnx.Param))}

    def aux_of(self, module: nnx.Module) -> dict:
        """The auxiliary state of ``module`` (after a forward that may have written it)."""
        if not self.aux_names:
            return {}
        return {path_name(k): v.get_value() for k, v in _flat(nnx.state(module, Aux))}

    def __call__(self, values: Params, *args, **kwargs):
        return self.module(values)(*args, **kwargs)

    def shapes(self) -> dict:
        return {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in self.params.items()}

    def aux_shapes(self) -> dict:
        return {n: jax.ShapeDtypeStruct(_shape(v), v.dtype) for n, v in self.aux.items()}


def tap_shapes(module: nnx.Module, input_shape) -> dict:
    """Shapes/dtypes (batch 1) of every feature tap of ``module`` (called as
    ``module(x, t, None, features=feats)``), from an abstract trace at ``input_shape`` =
    (H, W, C)."""
    graphdef, state = nnx.split(module)
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), np.float32)
    t = jax.ShapeDtypeStruct((1,), np.int32)

    def run(st, x, t):
        feats = {}
        nnx.merge(graphdef, st)(x, t, None, features=feats)
        return feats

    return jax.eval_shape(run, state, x, t)


def check_shapes(expected: dict, got: dict, what: str) -> None:
    """Raises a ValueError naming every tensor that is missing, unexpected or mis-shaped."""
    problems = [f"  {n}: missing" for n in expected if n not in got]
    problems += [f"  {n}: unexpected" for n in got if n not in expected]
    problems += [f"  {n}: expected {tuple(expected[n].shape)}, got {tuple(got[n].shape)}"
                 for n in expected if n in got and tuple(expected[n].shape) != tuple(got[n].shape)]
    if problems:
        shown = "\n".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ValueError(f"{what} does not match the model ({len(problems)} tensors):\n{shown}")


def count(values) -> int:
    """Number of scalars in a flat dict of arrays, or in the ``nnx.Param`` leaves of a
    module (abstract modules included)."""
    if isinstance(values, nnx.Module):
        values = {k: v.get_value() for k, v in _flat(nnx.state(values, nnx.Param))}
    return int(sum(int(np.prod(_shape(v))) for v in values.values()))
