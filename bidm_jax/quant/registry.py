"""String registry of quantizers, each tagged with its bit width (Larq's ``precision``).

An entry is a pure function plus metadata. The layers look quantizers up by name, and the
efficiency summary reads ``precision`` to count bits. Extra arguments (a learnable
``tau``/``sigma``, the ReSTE power ``o``) are passed by keyword; ``params`` lists them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from bidm_jax.quant import binarizers as B

__all__ = ["Quantizer", "register", "get_quantizer", "list_quantizers"]


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """A registered quantizer.

    name: registry key; kind: 'weight' or 'activation'; precision: bits of the output
    (1 for binarizers, 32 for identity); fn: the pure function; params: names of the
    keyword arguments it needs besides the tensor; estimator: the backward rule in words.
    """

    name: str
    kind: str
    precision: int
    fn: Callable
    params: tuple[str, ...] = ()
    estimator: str = ""

    def __call__(self, x, **kwargs):
        return self.fn(x, **kwargs)


_REGISTRY: dict[tuple[str, str], Quantizer] = {}


def register(q: Quantizer) -> Quantizer:
    """Add ``q`` to the registry; a duplicate (kind, name) is an error."""
    if q.kind not in ("weight", "activation"):
        raise ValueError(f"quantizer kind must be 'weight' or 'activation', got {q.kind!r}")
    key = (q.kind, q.name)
    if key in _REGISTRY:
        raise ValueError(f"{q.kind} quantizer {q.name!r} is already registered")
    _REGISTRY[key] = q
    return q


def list_quantizers(kind: str | None = None) -> list[str]:
    """Registered names, optionally only those of one kind ('weight' / 'activation')."""
    return sorted(n for (k, n) in _REGISTRY if kind is None or k == kind)


def get_quantizer(name: str, kind: str) -> Quantizer:
    """Look up a quantizer; unknown names raise ValueError listing the valid ones."""
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise ValueError(
            f"unknown {kind} quantizer {name!r}; valid choices: {list_quantizers(kind)}") from None


def _identity(x, **_):
    return x


for _q in (
    Quantizer("fp", "weight", 32, _identity, (), "identity"),
    Quantizer("channel_detached", "weight", 1, B.weight_channel_detached, (),
              "alpha=mean|W| per out channel (detached), clip STE 1[|W|<=1]"),
    Quantizer("xnor_exact", "weight", 1, B.weight_xnor_exact, (),
              "alpha per out channel, grad (1/n + alpha 1[|W|<=1])"),
    Quantizer("learnable_scale", "weight", 1, B.weight_learnable_scale, ("sigma",),
              "learnable sigma per out channel, clip STE"),
    Quantizer("dorefa", "weight", 1, B.weight_dorefa, (),
              "per-layer mean|W| (stop-gradient), identity STE"),
    Quantizer("reste", "weight", 1, B.weight_reste, ("o", "t"),
              "per-layer mean|W| (differentiable), ReSTE power rule"),
    Quantizer("sign", "weight", 1, B.weight_sign, (), "unscaled sign, clip STE"),
    Quantizer("fp", "activation", 32, _identity, (), "identity"),
    Quantizer("sign_ste", "activation", 1, B.act_sign_ste, (), "clip STE 1[|x|<=1]"),
    Quantizer("approx_sign", "activation", 1, B.act_approx_sign, (), "ApproxSign"),
    Quantizer("rsign", "activation", 1, B.act_rsign, ("tau",), "sign(x+tau), ApproxSign"),
    Quantizer("rsign_linear_code", "activation", 1, B.act_rsign_linear_code, ("tau",),
              "sign(x) forward, ApproxSign at x+tau backward (BiDM BNNLinear)"),
    Quantizer("dorefa", "activation", 1, B.act_dorefa, (), "{0,1} = round(clip(x,0,1)), STE"),
    Quantizer("reste", "activation", 1, B.act_reste, ("o", "t"), "ReSTE power rule"),
):
    register(_q)
