"""Per-method layer recipes and the per-path policy (FP or binary, and how).

A :class:`MethodSpec` says which registry quantizers a method uses and which extra pieces
wrap the binary conv (input scale map, shortcut, RPReLU). :func:`resolve_layer` turns a
layer path plus the ``quant`` config into the :class:`LayerSpec` the layers are built from.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from bidm_jax.quant import registry
from bidm_jax.quant.config import validate_quant_config

__all__ = ["MethodSpec", "LayerSpec", "METHOD_SPECS", "resolve_layer", "is_fp_path"]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Recipe of one method (methods.md §2.2-2.4 for bidm/xnor, §5 for the baselines).

    weight / act: registry names; channel_shift: learnable per-channel tau added before the
    sign (RSign / BiDM channel_threshold / BBCU move0); input_scale: 'none' | 'box'
    (XNOR-Net K with fixed 1/k² box) | 'kconv' (BiDM learnable k-conv) | 'xnorpp' (Gamma);
    shortcut: default per-conv shortcut 'none' | 'scaled' | 'unit'; rprelu: 'none' |
    'post_residual' (ReActNet block) | 'pre_residual' (BBCU unit).
    """

    name: str
    weight: str
    act: str
    channel_shift: bool = False
    input_scale: str = "none"
    shortcut: str = "none"
    rprelu: str = "none"


METHOD_SPECS = {
    "fp": MethodSpec("fp", "fp", "fp"),
    "bidm": MethodSpec("bidm", "channel_detached", "rsign", True, "kconv", "scaled"),
    "xnor": MethodSpec("xnor", "channel_detached", "rsign", True, "box", "scaled"),
    "xnor++": MethodSpec("xnor++", "sign", "sign_ste", False, "xnorpp", "none"),
    "dorefa": MethodSpec("dorefa", "dorefa", "dorefa"),
    "reactnet": MethodSpec("reactnet", "channel_detached", "rsign", True, "none", "unit",
                           "post_residual"),
    "reste": MethodSpec("reste", "reste", "reste"),
    "bbcu": MethodSpec("bbcu", "channel_detached", "rsign", True, "none", "unit", "pre_residual"),
}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Everything a layer needs to build itself (hashable, static)."""

    path: str
    method: str
    binary: bool
    weight: str = "fp"
    act: str = "fp"
    channel_shift: bool = False
    input_scale: str = "none"
    shortcut: str = "none"
    rprelu: str = "none"
    kconv_bias: bool = True
    linear_tau: str = "code"
    shortcut_scale_init: float = 0.0
    shortcut_abs: bool = False
    reste_threshold: float = 1.5
    keep_bias: bool = False

    @property
    def bits_w(self) -> int:
        return registry.get_quantizer(self.weight, "weight").precision

    @property
    def bits_a(self) -> int:
        return registry.get_quantizer(self.act, "activation").precision


def is_fp_path(path: str, cfg) -> bool:
    """True when ``path`` matches one of cfg.fp_layers (fnmatch on the dotted name)."""
    return any(fnmatch.fnmatchcase(path, p) for p in cfg.fp_layers)


def resolve_layer(path: str, cfg) -> LayerSpec:
    """Policy for one layer path (methods.md §2.1): FP patterns first, then binary patterns.

    A path matching neither list is an error, so a new layer never silently changes precision.
    """
    validate_quant_config(cfg)
    if cfg.method == "fp" or is_fp_path(path, cfg):
        return LayerSpec(path=path, method=cfg.method, binary=False)
    if not any(fnmatch.fnmatchcase(path, p) for p in cfg.binary_layers):
        raise ValueError(
            f"layer {path!r} matches neither quant.fp_layers {tuple(cfg.fp_layers)} nor "
            f"quant.binary_layers {tuple(cfg.binary_layers)}; add a pattern to one of them")
    m = METHOD_SPECS[cfg.method]
    weight = m.weight
    if weight == "channel_detached" and cfg.weight_scale == "learnable":
        weight = "learnable_scale"
    if cfg.method == "xnor" and cfg.xnor_weight_grad == "exact":
        weight = "xnor_exact"
    shortcut = m.shortcut if cfg.shortcut == "auto" else cfg.shortcut
    input_scale = m.input_scale if cfg.input_scale == "auto" else cfg.input_scale
    rprelu = m.rprelu if cfg.rprelu == "auto" else cfg.rprelu
    if m.input_scale == "xnorpp" and input_scale != "xnorpp":
        # Gamma is what makes a layer XNOR-Net++; without it the weights have no scale.
        raise ValueError(f"quant.input_scale={cfg.input_scale!r} cannot replace XNOR-Net++'s "
                         "Gamma; use 'auto' with method 'xnor++'")
    return LayerSpec(
        path=path, method=cfg.method, binary=True, weight=weight, act=m.act,
        channel_shift=m.channel_shift, input_scale=input_scale, shortcut=shortcut,
        rprelu=rprelu, kconv_bias=cfg.kconv_bias == "code", linear_tau=cfg.linear_tau,
        shortcut_scale_init=float(cfg.shortcut_scale_init), shortcut_abs=bool(cfg.shortcut_abs),
        reste_threshold=float(cfg.reste_threshold), keep_bias=cfg.binary_bias == "keep")
