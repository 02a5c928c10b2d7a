"""String registry of quantizers, each tagged with its bit width (Larq's ``precision``).

An entry is a pure function plus metadata. The layers look quantizers up by name, and the
efficiency summary and the packed export read the metadata, so a new quantizer is one
``register`` call beside its function:

* ``precision``: bits of the output (1 for binarizers, 32 for identity);
* ``variables``: the per-layer values it takes besides the tensor (:class:`QVar`): learnable
  parameters (a learnable scale), auxiliary state (ReSTE's schedule value, a calibrated
  step), each with its initialiser and, for auxiliary state, how a calibration batch or a
  training step sets it;
* ``static``: keyword arguments read from the layer's :class:`~bidm_jax.quant.policy.LayerSpec`
  (e.g. ReSTE's threshold);
* weights only: ``planes`` (sign planes stored per weight: 1 for ``scale·sign(W)``, 2 for a
  two-basis binarizer), ``plane_fn`` (how the export splits ``W_q`` into (sign source,
  scale) pairs; None = one plane whose scale is read off the forward value) and
  ``derived_scales`` ('channel' / 'layer': fp32 scales computed from W in training that the
  binary model must store at inference).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from bidm_jax.models.functional import Aux
from bidm_jax.quant import binarizers as B

__all__ = ["Quantizer", "QVar", "ReSTEPower", "register", "get_quantizer", "list_quantizers"]


@dataclasses.dataclass(frozen=True)
class QVar:
    """A per-layer value a quantizer takes as keyword ``name``.

    attr: the layer attribute holding it (also its checkpoint name, ``{layer}.{attr}``); two
    quantizers of one layer naming the same attr share it. init(kernel, in_features) -> its
    initial value, from the layer's FP kernel (``(kh, kw, I, O)`` / ``(I, O)``);
    from_kernel: re-run ``init`` after the teacher's kernel is loaded (a learnable σ = mean|W|).
    kind: 'param' (trained) or 'aux' (auxiliary state, ``variable`` its Variable class).
    calibrate(x) -> value: set from the layer input of a calibration batch (aux);
    update(value, x) -> value: applied at every training step (running statistics, aux).
    """

    name: str
    attr: str
    init: Callable
    kind: str = "param"
    from_kernel: bool = False
    variable: type | None = None
    calibrate: Callable | None = None
    update: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """A registered quantizer (see the module docstring for the fields).

    name: registry key; kind: 'weight' or 'activation'; fn: the pure function;
    estimator: the backward rule in words.
    """

    name: str
    kind: str
    precision: int
    fn: Callable
    variables: tuple[QVar, ...] = ()
    estimator: str = ""
    static: Callable | None = None
    planes: int = 1
    plane_fn: Callable | None = None
    derived_scales: str | None = None

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the keyword arguments taken from per-layer variables."""
        return tuple(v.name for v in self.variables)

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


class ReSTEPower(Aux):
    """ReSTE's power o (methods.md §5): auxiliary state, not a Param, so the optimizer skips
    it; the method's step hook (:mod:`bidm_jax.methods.reste`) sets it before every step."""


def _reste_o():
    return QVar("o", "reste_o", lambda w, i: jnp.asarray(1.0, jnp.float32), kind="aux",
                variable=ReSTEPower)


def _reste_static(spec):
    return {"t": spec.reste_threshold}


_SIGMA = QVar("sigma", "weight_scale", lambda w, i: B.per_channel_abs_mean(w), from_kernel=True)


def _register_builtins():
    reste_o = _reste_o()
    for q in (
        Quantizer("fp", "weight", 32, _identity, (), "identity"),
        Quantizer("channel_detached", "weight", 1, B.weight_channel_detached, (),
                  "alpha=mean|W| per out channel (detached), clip STE 1[|W|<=1]",
                  derived_scales="channel"),
        Quantizer("xnor_exact", "weight", 1, B.weight_xnor_exact, (),
                  "alpha per out channel, grad (1/n + alpha 1[|W|<=1])", derived_scales="channel"),
        Quantizer("learnable_scale", "weight", 1, B.weight_learnable_scale, (_SIGMA,),
                  "learnable sigma per out channel, clip STE"),
        Quantizer("dorefa", "weight", 1, B.weight_dorefa, (),
                  "per-layer mean|W| (stop-gradient), identity STE", derived_scales="layer"),
        Quantizer("reste", "weight", 1, B.weight_reste, (reste_o,),
                  "per-layer mean|W| (differentiable), ReSTE power rule", static=_reste_static,
                  derived_scales="layer"),
        Quantizer("sign", "weight", 1, B.weight_sign, (), "unscaled sign, clip STE"),
        Quantizer("fp", "activation", 32, _identity, (), "identity"),
        Quantizer("sign_ste", "activation", 1, B.act_sign_ste, (), "clip STE 1[|x|<=1]"),
        Quantizer("approx_sign", "activation", 1, B.act_approx_sign, (), "ApproxSign"),
        # tau of the two RSign forms is the layer's channel shift (LayerSpec.channel_shift).
        Quantizer("rsign", "activation", 1, B.act_rsign, (), "sign(x+tau), ApproxSign"),
        Quantizer("rsign_linear_code", "activation", 1, B.act_rsign_linear_code, (),
                  "sign(x) forward, ApproxSign at x+tau backward (BiDM BNNLinear)"),
        Quantizer("dorefa", "activation", 1, B.act_dorefa, (), "{0,1} = round(clip(x,0,1)), STE"),
        Quantizer("reste", "activation", 1, B.act_reste, (reste_o,), "ReSTE power rule",
                  static=_reste_static),
    ):
        register(q)


_register_builtins()
