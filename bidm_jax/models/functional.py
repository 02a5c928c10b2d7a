"""A model as (static graph, flat parameter dict): what jitted loops, optimizers and checkpoints
see. Parameter names are dotted module paths (``down.1.block.0.conv1.kernel``), i.e. the
official state-dict names with Flax leaf names, so checkpoints are readable and convertible."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Params = dict  # str -> jax.Array


def path_name(path) -> str:
    return ".".join(str(p) for p in path)


class Functional:
    """Splits an NNX module into its graph, its trainable ``nnx.Param`` leaves (a flat dict) and
    the remaining state (kept constant), and rebuilds the module from a params dict inside jit."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        flat = nnx.to_flat_state(params)
        self.paths = [k for k, _ in flat]
        self.names = [path_name(k) for k in self.paths]
        self.params: Params = {path_name(k): v.get_value() for k, v in flat}

    def module(self, params: Params) -> nnx.Module:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"parameters missing: {missing[:5]}{'...' if len(missing) > 5 else ''}")
        state = nnx.from_flat_state([(k, nnx.Param(params[n])) for k, n in zip(self.paths, self.names)])
        return nnx.merge(self.graphdef, state, self.rest)

    def __call__(self, params: Params, *args, **kwargs):
        return self.module(params)(*args, **kwargs)

    def shapes(self) -> dict:
        return {n: jax.ShapeDtypeStruct(v.shape, v.dtype) for n, v in self.params.items()}


def check_shapes(expected: dict, got: dict, what: str) -> None:
    """Raises a ValueError naming every tensor that is missing, unexpected or mis-shaped."""
    problems = [f"  {n}: missing" for n in expected if n not in got]
    problems += [f"  {n}: unexpected" for n in got if n not in expected]
    problems += [f"  {n}: expected {tuple(expected[n].shape)}, got {tuple(got[n].shape)}"
                 for n in expected if n in got and tuple(expected[n].shape) != tuple(got[n].shape)]
    if problems:
        shown = "\n".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ValueError(f"{what} does not match the model ({len(problems)} tensors):\n{shown}")


def count(params: Params) -> int:
    return int(sum(jnp.size(v) for v in params.values()))
