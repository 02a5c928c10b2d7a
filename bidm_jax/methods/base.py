"""What a quantization method is: one :class:`Method` object, registered by name.

A method declares, in one file under ``bidm_jax/methods/``:

* its **layer recipe**: the registry quantizers of its binary layers (``weight``, ``act``)
  and the structural pieces around the binary core (``channel_shift`` τ, ``input_scale``
  K map, per-conv ``shortcut``, ``rprelu``), turned into a :class:`LayerSpec` per layer path
  by :meth:`Method.layer_spec` (which also applies the ``quant`` config's flags), plus
  optional quantizers on the attention operands (:meth:`Method.attention_quantizers`);
* its **distillation terms and defaults** (``distill_defaults``: TBS on/off, feature loss;
  ``faithful_values``: the paper-vs-code values it changes), filled into the config once at
  start-up by :meth:`Method.resolve`;
* its **per-step hook** (:meth:`Method.step_aux`: ReSTE's power o) and its optional
  **calibration** on a real batch before training (:meth:`Method.calibrate`);
* what it contributes to the **summary** (bits per weight, derived scales) and how it
  **exports** (sign planes and their scales): its weight quantizer's metadata
  (:mod:`bidm_jax.quant.registry`), read through the layer's :class:`LayerSpec`;
* ``step_ms``: the measured cost of one CIFAR-10 distillation iteration (full width, batch
  64, 1x H100; benchmarks/distill.md), which the reproduction scheduler plans with.

A new method is a subclass (or an instance with other field values) passed to
:func:`register_method`; nothing else in the package changes (docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

from bidm_jax.quant import registry
from bidm_jax.quant.policy import LayerSpec

__all__ = ["Method", "CalibrationContext", "register_method", "get_method", "list_methods"]


@dataclasses.dataclass
class CalibrationContext:
    """What a calibration step sees: one real batch, noised at random timesteps.

    forward(params, aux) -> (params, aux): one student forward on the batch during which every
    layer variable with a ``calibrate`` rule is set from its input; teacher_features() -> dict
    of the frozen teacher's tap features on the same batch (None when the run has no teacher).
    """

    forward: Callable
    teacher_features: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's declaration (see the module docstring). Override the methods for special
    cases; the fields cover the common ones."""

    name: str
    weight: str = "fp"
    act: str = "fp"
    channel_shift: bool = False
    input_scale: str = "none"      # none | box | kconv | xnorpp
    shortcut: str = "none"         # none | scaled | unit
    rprelu: str = "none"           # none | post_residual | pre_residual
    bias: str = "drop"             # drop | keep: the binary layers' FP bias
    distill_defaults: tuple = ()   # ((distill field, value), ...) for fields left auto
    faithful_values: tuple = ()    # ((faithful_to, field, value), ...) over distill's table
    step_ms: float | None = None
    description: str = ""

    @property
    def binary(self) -> bool:
        return self.weight != "fp" or self.act != "fp"

    # --- layer recipe -----------------------------------------------------------------------

    def weight_quantizer(self, qcfg) -> str:
        """Registry name of the weight quantizer under the ``quant`` flags."""
        if self.weight == "channel_detached" and qcfg.weight_scale == "learnable":
            return "learnable_scale"
        return self.weight

    def layer_spec(self, path: str, qcfg, group: int | None = None) -> LayerSpec:
        """The :class:`LayerSpec` of layer ``path``: FP when it matches ``quant.fp_layers``
        (checked first), binary per this recipe when it matches ``quant.binary_layers``; a
        path matching neither is an error, so a new layer never silently changes precision.
        ``group``: the layer's block group in the model family (``Family.block_group``)."""
        if not self.binary or any(fnmatch.fnmatchcase(path, p) for p in qcfg.fp_layers):
            return LayerSpec(path=path, method=self.name, binary=False)
        if not any(fnmatch.fnmatchcase(path, p) for p in qcfg.binary_layers):
            raise ValueError(
                f"layer {path!r} matches neither quant.fp_layers {tuple(qcfg.fp_layers)} nor "
                f"quant.binary_layers {tuple(qcfg.binary_layers)}; add a pattern to one of them")
        pick = lambda flag, default: default if qcfg[flag] == "auto" else qcfg[flag]
        input_scale, shortcut = pick("input_scale", self.input_scale), pick("shortcut",
                                                                           self.shortcut)
        if qcfg.get("conv1d", "code") == "code" and any(
                fnmatch.fnmatchcase(path, p) for p in qcfg.get("conv1d_layers", ())):
            # BiDM's LDM code builds these as BNNConv1d (methods.md §2.3): shifted sign and
            # per-channel weight scale only, no K map on mean_c|x| and no per-conv shortcut.
            input_scale = "none" if input_scale in ("box", "kconv") else input_scale
            shortcut = "none"
        return LayerSpec(
            path=path, method=self.name, binary=True, weight=self.weight_quantizer(qcfg),
            act=self.act, channel_shift=self.channel_shift, input_scale=input_scale,
            shortcut=shortcut, rprelu=pick("rprelu", self.rprelu),
            kconv_bias=qcfg.kconv_bias == "code", linear_tau=qcfg.linear_tau,
            shortcut_scale_init=float(qcfg.shortcut_scale_init),
            shortcut_abs=bool(qcfg.shortcut_abs), reste_threshold=float(qcfg.reste_threshold),
            keep_bias=pick("binary_bias", self.bias) == "keep", group=group)

    def attention_quantizers(self, path: str, qcfg) -> dict[str, str] | None:
        """Activation quantizers on the attention operands of block ``path``: a dict with
        any of 'q', 'k', 'weights' (softmax output), 'v' -> registry name; None = none."""
        return None

    def attention_taq(self, path: str, qcfg):
        """Q-DM's TaQ on the attention operands of block ``path``: a
        :class:`~bidm_jax.quant.taq.TaQSpec`, or None (no normalisation)."""
        return None

    def attention_gated(self, qcfg) -> bool:
        """Whether the attention operand quantizers have an on/off switch (``quant_on``,
        auxiliary state set by :meth:`step_aux`)."""
        return False

    def needs_output_sizes(self, qcfg) -> bool:
        """Whether layers need their output size at build time (XNOR-Net++'s Γ)."""
        return self.binary and self.input_scale == "xnorpp"

    # --- configuration ----------------------------------------------------------------------

    def resolve(self, config) -> None:
        """Fills the method's defaults into the (unlocked) full config, in place: every
        ``distill`` field of ``distill_defaults`` still at None/'auto'."""
        for field, value in self.distill_defaults:
            if config.distill[field] in (None, "auto"):
                config.distill[field] = value

    def layer_patterns(self, family) -> tuple[tuple, tuple]:
        """(fp_layers, binary_layers) patterns for ``quant`` fields left empty: the model
        family's (a method that binarizes the family's FP skip convs moves them)."""
        return tuple(family.fp_layers), tuple(family.binary_layers)

    def resolve_quant(self, config) -> None:
        """Fills the method's automatic ``quant`` fields into the (unlocked) full config, in
        place, after the training fields are final (``resolve_config`` calls it last)."""

    def faithful(self, faithful_to: str) -> dict:
        """This method's changes to the ``faithful_to`` table of ``distill``."""
        return {f: v for which, f, v in self.faithful_values if which == faithful_to}

    def validate(self, qcfg) -> None:
        """Raises ValueError on ``quant`` flags this method cannot honour."""
        if qcfg.get("taq", "auto") not in ("auto", "off"):
            raise ValueError(f"quant.taq={qcfg.taq!r} needs a method with LSQ activations (qdm, "
                             f"lsq, binarydm, binarydm_baseline), not {self.name!r}")
        if qcfg.get("weight_granularity", "auto") not in ("auto", "channel"):
            raise ValueError(f"quant.weight_granularity={qcfg.weight_granularity!r} needs a "
                             f"method with LSQ weights (qdm, lsq), not {self.name!r}")

    def describe(self, config) -> dict:
        """The method's resolved settings for ``distill.json`` (beyond the common ones)."""
        return {}

    # --- training hooks ---------------------------------------------------------------------

    def step_aux(self, aux: dict, step, config) -> dict:
        """Auxiliary state before training step ``step`` (a traced int scalar; the run has
        ``config.train.num_steps``). Default: unchanged."""
        return aux

    def lr_multipliers(self, params: dict, config) -> dict | None:
        """{parameter name: learning-rate multiplier} over the student's initial ``params``
        (names absent get 1, 0 freezes; :func:`bidm_jax.training.optim.make_optimizer`
        applies them to the updates): a method's parameter groups. Default None: one lr."""
        return None

    def extra_loss(self, params: dict, aux: dict, step, config):
        """(scalar added to the training loss, {metric: value}): a method's regulariser.
        Default: none."""
        return None, {}

    def needs_calibration(self, module) -> bool:
        """Whether :meth:`calibrate` has work to do on the built student ``module``. Default:
        some layer quantizer has a variable with a ``calibrate`` rule (a method overriding
        :meth:`calibrate` overrides this too)."""
        from bidm_jax.quant.layers import quantizers_in

        return any(qv.calibrate is not None for q in quantizers_in(module)
                   for qv in q.variables)

    def calibrate(self, ctx: CalibrationContext, params: dict, aux: dict) -> tuple[dict, dict]:
        """Runs once before the first training step of a fresh run (never on resume: the
        checkpoint holds the result). Default: the generic layer calibration."""
        return ctx.forward(params, aux)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Adds ``method`` to the registry; its quantizers must be registered already."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    registry.get_quantizer(method.weight, "weight")
    registry.get_quantizer(method.act, "activation")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names raise a ValueError listing them."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"quant.method={name!r} is invalid; valid choices: "
                         f"{', '.join(list_methods())}") from None
