"""Shape capture: each factory-built layer reports its shapes while a model is traced.

Nothing here runs the model on data: :func:`trace_layers` calls it under ``jax.eval_shape``
and the layers append a :class:`LayerRecord` while they are traced (a Python-side side
effect at trace time, active only inside :func:`record_layers`, so jitted training code is
unaffected). The records feed the efficiency summary (MACs per layer at a given input size)
and XNOR-Net++'s Gamma, whose beta/gamma factors need each conv's output size.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["LayerRecord", "record_layers", "record", "trace_layers", "output_sizes",
           "default_apply"]


@dataclasses.dataclass(frozen=True)
class LayerRecord:
    """One traced call of a factory-built layer. MAC counts are per sample.

    macs: the layer's main conv/dense multiply-accumulates (binary when ``binary``);
    shortcut_macs: its FP 1×1 shortcut conv (§2.4); kconv_macs: BiDM's 1→1 k-conv or
    XNOR-Net's box filter on the channel-mean map (§2.3).
    """

    path: str
    kind: str
    binary: bool
    bits_w: int
    bits_a: int
    in_shape: tuple
    out_shape: tuple
    kernel_shape: tuple
    macs: int
    shortcut_macs: int = 0
    kconv_macs: int = 0


_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("bidm_layer_records",
                                                                      default=None)


@contextlib.contextmanager
def record_layers() -> Iterator[list]:
    """Collect the :class:`LayerRecord` of every factory layer traced inside the block."""
    records: list[LayerRecord] = []
    token = _ACTIVE.set(records)
    try:
        yield records
    finally:
        _ACTIVE.reset(token)


def recording() -> bool:
    """Whether a :func:`record_layers` block is active (layers skip the bookkeeping if not)."""
    return _ACTIVE.get() is not None


def record(rec: LayerRecord) -> None:
    """Append ``rec`` to the active collection (no-op outside :func:`record_layers`)."""
    active = _ACTIVE.get()
    if active is not None:
        active.append(rec)


def conv_macs(out_shape: tuple, kernel_shape: tuple) -> int:
    """Per-sample MACs of a conv: H_out·W_out·kh·kw·I·O (out_shape is NHWC)."""
    return int(math.prod(out_shape[1:3]) * math.prod(kernel_shape))


def default_apply(model, x):
    """Call ``model(x, t)`` with t = zeros(B) int32 (the UNet's timestep argument)."""
    return model(x, jnp.zeros((x.shape[0],), jnp.int32))


def trace_layers(model: nnx.Module, input_shape: tuple,
                 apply_fn: Callable | None = None, dtype=jnp.float32) -> list[LayerRecord]:
    """Trace ``apply_fn(model, x)`` abstractly with x of ``input_shape`` (NHWC, use batch 1)
    and return the records of every factory-built layer, in call order.

    apply_fn defaults to :func:`default_apply`; pass e.g.
    ``lambda m, x: m(x, jnp.zeros((x.shape[0],), jnp.int32), None)`` for other signatures.
    """
    apply_fn = default_apply if apply_fn is None else apply_fn
    graphdef, state = nnx.split(model)

    def f(state, x):
        return apply_fn(nnx.merge(graphdef, state), x)

    with record_layers() as records:
        jax.eval_shape(f, state, jax.ShapeDtypeStruct(tuple(input_shape), dtype))
    return list(records)


def output_sizes(records: list[LayerRecord]) -> dict[str, tuple[int, int]]:
    """path -> (H_out, W_out) of every traced conv (what XNOR-Net++'s Gamma needs)."""
    return {r.path: tuple(r.out_shape[1:3]) for r in records if r.kind == "conv"}
