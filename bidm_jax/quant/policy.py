"""The per-layer decision a factory builds a layer from: :class:`LayerSpec`.

Methods (:mod:`bidm_jax.methods`) turn a layer path plus the ``quant`` config into a
LayerSpec (:meth:`bidm_jax.methods.Method.layer_spec`); the layers read nothing else.
"""

from __future__ import annotations

import dataclasses

from bidm_jax.quant import registry

__all__ = ["LayerSpec"]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Everything a layer needs to build itself (hashable, static).

    weight / act: registry quantizer names; channel_shift: learnable per-channel τ added
    before the sign (RSign / BiDM channel_threshold / BBCU move0); input_scale: 'none' |
    'box' (XNOR-Net K with fixed 1/k² box) | 'kconv' (BiDM learnable k-conv) | 'xnorpp'
    (Γ); shortcut: per-conv shortcut 'none' | 'scaled' | 'unit'; rprelu: 'none' |
    'post_residual' (ReActNet block) | 'pre_residual' (BBCU unit); keep_bias: the binary
    layer adds the FP bias; gated: the layer has a ``quant_on`` switch (progressive
    binarization, methods.md §3.5); group: the layer's block group (BinaryDM's head/tail
    grouping; None where the method does not group). The rest are the ``quant`` flags of
    methods.md §9. ``binary`` means "quantized" (W1 or multi-bit), the opposite of FP.
    """

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
    gated: bool = False
    group: int | None = None

    @property
    def weight_quantizer(self) -> registry.Quantizer:
        return registry.get_quantizer(self.weight, "weight")

    @property
    def bits_w(self) -> int:
        return self.weight_quantizer.precision

    @property
    def stored_bits_w(self) -> int:
        """Bits stored (and multiplied, in BOPs) per weight of the trained model: stored
        planes × precision of the weight quantizer (2 for a two-basis binarizer kept to the
        end, 1 for one whose second basis is dropped in training, 32 for an FP layer)."""
        q = self.weight_quantizer
        return q.stored_planes * q.precision

    @property
    def bits_a(self) -> int:
        return registry.get_quantizer(self.act, "activation").precision
