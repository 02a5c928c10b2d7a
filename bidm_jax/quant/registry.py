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
  scale) pairs; None = one plane whose scale is read off the forward value; it may return
  fewer planes than ``planes`` when a basis is switched off), ``inference_planes`` (planes of
  the trained model at inference when fewer than ``planes``: a two-basis binarizer whose
  second basis is dropped during training) and ``derived_scales`` ('channel' / 'layer': fp32
  scales computed from W in training that the binary model must store at inference);
* multi-bit quantizers (precision 2..8): ``levels(x, **variables) -> (integers, step)`` with
  ``fn(x) == integers·step``: what a packed layer stores (weights, as int8) or feeds its
  integer core (activations); with ``zero_point=True`` (asymmetric quantizers, any precision)
  ``levels`` returns (integers, step, zero point) with ``fn(x) == step·(integers − zero point)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import math

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax.models.functional import Aux
from bidm_jax.quant import binarizers as B

__all__ = ["Quantizer", "QVar", "ReSTEPower", "EBBStage", "QuantGate", "register", "get_quantizer",
           "list_quantizers", "LSQ_BITS"]


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
    inference_planes: int | None = None
    levels: Callable | None = None
    zero_point: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the keyword arguments taken from per-layer variables."""
        return tuple(v.name for v in self.variables)

    @property
    def stored_planes(self) -> int:
        """Sign planes the trained model stores per weight."""
        return self.planes if self.inference_planes is None else self.inference_planes

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


class QuantGate(Aux):
    """1.0 while a gated layer (``LayerSpec.gated``) or attention operand quantizes, 0.0
    while it runs in FP (BinaryDM's progressive binarization, methods.md §3.5)."""


class EBBStage(Aux):
    """1.0 while EBB's second basis is on, 0.0 after the paper's stage switch (BinaryDM
    §3.2): auxiliary state that BinaryDM's step hook sets (:mod:`bidm_jax.methods.binarydm`)."""


def _reste_o():
    return QVar("o", "reste_o", lambda w, i: jnp.asarray(1.0, jnp.float32), kind="aux",
                variable=ReSTEPower)


def _reste_static(spec):
    return {"t": spec.reste_threshold}


_SIGMA = QVar("sigma", "weight_scale", lambda w, i: B.per_channel_abs_mean(w), from_kernel=True)


# Bit widths with registered LSQ quantizers (``lsq{b}``, ``lsq{b}_dynamic``, weight ``lsq{b}``).
LSQ_BITS = (2, 3, 4, 5, 6, 7, 8)

_SIGMA1 = QVar("sigma1", "ebb_sigma1", lambda w, i: B.per_channel_abs_mean(w), from_kernel=True)
_SIGMA2 = QVar("sigma2", "ebb_sigma2",
               lambda w, i: B.per_channel_abs_mean(w - B.per_channel_abs_mean(w) * jnp.sign(w)),
               from_kernel=True)
_SECOND = QVar("second", "ebb_second", lambda w, i: jnp.asarray(1.0, jnp.float32), kind="aux",
               variable=EBBStage)


def _ebb(w, sigma1, sigma2):
    return B.ebb_weight(w, sigma1, sigma2)


def _ebb_staged(w, sigma1, sigma2, second):
    # second = 0 makes Eq. 5 the single basis sigma1·sign(w), gradients included.
    return B.ebb_weight(w, sigma1, sigma2 * second)


def _ebb_planes(w, sigma1, sigma2, second=1.0):
    w, s1 = np.asarray(w, np.float32), np.asarray(sigma1, np.float32)
    first = (w, s1)
    if float(np.asarray(second)) == 0.0:
        return [first]
    return [first, (w - s1 * np.sign(w), np.asarray(sigma2, np.float32))]


def _lsq_act(bits):
    step = QVar("step", "act_step", lambda w, i: jnp.asarray(1.0, jnp.float32),
                calibrate=lambda x: B.lsq_init_scale(x.astype(jnp.float32), bits))
    return (
        Quantizer(f"lsq{bits}", "activation", bits,
                  lambda x, step: B.lsq_quantize(x, step.astype(x.dtype), bits), (step,),
                  f"signed {bits}-bit LSQ, learned per-tensor step (calibrated init), STE",
                  levels=lambda x, step: (B.lsq_integer(x, step.astype(x.dtype), bits), step)),
        # The LSQ paper's step-gradient scale, N = features per sample (x.size / batch), which
        # Q-DM's reading uses (methods.md §4.4); ``lsq{b}`` keeps BinaryDM's numel (§3.3).
        Quantizer(f"lsq{bits}_sample", "activation", bits,
                  lambda x, step: B.lsq_quantize(x, step.astype(x.dtype), bits,
                                                 num_elements=x.size // x.shape[0]), (step,),
                  f"signed {bits}-bit LSQ, learned per-tensor step (calibrated init), STE, "
                  "step-gradient scale 1/sqrt(features per sample · Q_P)",
                  levels=lambda x, step: (B.lsq_integer(x, step.astype(x.dtype), bits), step)),
        Quantizer(f"lsq{bits}_dynamic", "activation", bits,
                  lambda x: B.lsq_quantize(x, _dynamic_step(x, bits), bits), (),
                  f"signed {bits}-bit LSQ, step 2·mean|x|/sqrt(Q_P) of every batch, STE",
                  levels=lambda x: (B.lsq_integer(x, _dynamic_step(x, bits), bits),
                                    _dynamic_step(x, bits))),
    )


def _dynamic_step(x, bits):
    # BinaryDM code's _ActQ: the step is re-set from the data at every forward (methods.md
    # §3.3), so it is a constant of the batch, not a trained value.
    return jax.lax.stop_gradient(B.lsq_init_scale(x, bits)).astype(x.dtype)


def _lsq_weight(bits):
    step = QVar("step", "weight_step", lambda w, i: B.lsq_channel_init(w, bits), from_kernel=True)

    def fn(w, step):
        return B.lsq_quantize(w, step, bits, num_elements=math.prod(w.shape[:-1]))

    return Quantizer(f"lsq{bits}", "weight", bits, fn, (step,),
                     f"signed {bits}-bit LSQ, learned per-output-channel step, STE",
                     levels=lambda w, step: (B.lsq_integer(w, step, bits), step))


def _lsq_weight_tensor(bits):
    # The original LSQ's granularity: one step for the whole kernel, shape (1,) so it
    # broadcasts over the output channels wherever a per-channel step would.
    step = QVar("step", "weight_step",
                lambda w, i: jnp.reshape(B.lsq_init_scale(jnp.asarray(w, jnp.float32), bits),
                                         (1,)), from_kernel=True)

    def fn(w, step):
        return B.lsq_quantize(w, step, bits)

    return Quantizer(f"lsq{bits}_tensor", "weight", bits, fn, (step,),
                     f"signed {bits}-bit LSQ, one learned step per kernel, STE",
                     levels=lambda w, step: (B.lsq_integer(w, step, bits), step))


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
        Quantizer("ebb", "weight", 1, _ebb, (_SIGMA1, _SIGMA2),
                  "two bases (Eq. 5), learnable sigma_I/sigma_II per out channel, Eq. 7/8",
                  planes=2, plane_fn=_ebb_planes),
        Quantizer("ebb_staged", "weight", 1, _ebb_staged, (_SIGMA1, _SIGMA2, _SECOND),
                  "EBB until the stage switch, then sigma_I·sign(W) (Eq. 5-10)",
                  planes=2, plane_fn=_ebb_planes, inference_planes=1),
        *(q for b in LSQ_BITS for q in (*_lsq_act(b), _lsq_weight(b), _lsq_weight_tensor(b))),
    ):
        register(q)


_register_builtins()
