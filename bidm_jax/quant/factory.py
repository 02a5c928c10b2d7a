"""QuantFactory: the layer factory the UNet builds every conv/dense through.

Contract (shared with ``bidm_jax.models``):

    factory.conv(path, in_features, out_features, kernel_size, *, stride=1, padding=0, rngs)
        -> module, called as y = layer(x) with x NHWC, padding a symmetric int as in PyTorch
    factory.dense(path, in_features, out_features, *, rngs) -> module, x (B, F)
    factory.attention(path, channels, *, rngs) -> AttentionOperands or None: quantizers on
        the q, k, softmax-weight and v operands of attention block ``path`` (the method's)

``path`` is the official state-dict name (methods.md §7.1, e.g. ``down.1.attn.0.q``); the
``quant`` config's method (:mod:`bidm_jax.methods`) decides per path whether the layer is
FP or binary and how; the config's ``fp_layers`` / ``binary_layers`` patterns must be filled
(``configlib.resolve_config`` takes them from the model family).
"""

from __future__ import annotations

from typing import Callable, Mapping

from flax import nnx

# A module reference: the method registry's own modules import quant/ (its quantizers).
import bidm_jax.methods.base as method_registry
from bidm_jax.quant.config import get_quant_config, validate_quant_config
from bidm_jax.quant.extras import AttentionOperands
from bidm_jax.quant.layers import QConv, QDense
from bidm_jax.quant.packed import PackedOptions
from bidm_jax.quant.policy import LayerSpec

__all__ = ["QuantFactory", "fp_factory"]


class QuantFactory:
    """Builds FP or binary layers per the ``quant`` config (see docs/quantization.md).

    config: a ``get_quant_config()``-style ConfigDict with its layer patterns filled.
    layer_sizes: path -> (H_out, W_out) of each conv, required only by 'xnor++' (its Gamma
    has per-row/column factors); get it from an FP model with
    ``trace.output_sizes(trace.trace_layers(fp_model, (1, H, W, C)))``.
    dtype: compute dtype (e.g. jnp.bfloat16); inputs are cast to it, params stay float32.
    packed: build the binary layers in packed form (1-bit ``kernel_bits`` + ``kernel_scale``
    instead of the FP ``kernel``, executed as the options say; :mod:`bidm_jax.quant.packed`).
    block_group: path -> the layer's block group (the model family's ``block_group``; None =
    no grouping). packed_planes: path -> sign planes of a packed layer (an export's counts).
    ``specs`` records the resolved :class:`LayerSpec` of every layer built, by path.
    """

    def __init__(self, config=None, *, layer_sizes: Mapping[str, tuple[int, int]] | None = None,
                 dtype=None, packed: PackedOptions | None = None,
                 block_group: Callable[[str], int | None] | None = None,
                 packed_planes: Mapping[str, int] | None = None):
        self.config = get_quant_config() if config is None else config
        validate_quant_config(self.config)
        if not self.config.fp_layers and not self.config.binary_layers:
            raise ValueError("quant.fp_layers and quant.binary_layers are empty: resolve the "
                             "config first (bidm_jax.configlib.resolve_config fills the model "
                             "family's patterns)")
        self.method = method_registry.get_method(self.config.method)
        self.dtype = dtype
        self.packed = packed
        self.layer_sizes = dict(layer_sizes or {})
        self.block_group = block_group
        self.packed_planes = dict(packed_planes or {})
        self.specs: dict[str, LayerSpec] = {}

    def _spec(self, path: str) -> LayerSpec:
        if not isinstance(path, str) or not path:
            raise ValueError(f"layer path must be a non-empty string, got {path!r}")
        if path in self.specs:
            raise ValueError(f"layer path {path!r} was built twice; paths must be unique "
                             "(use a fresh QuantFactory for each model)")
        group = self.block_group(path) if self.block_group is not None else None
        spec = self.method.layer_spec(path, self.config, group)
        self.specs[path] = spec
        return spec

    def conv(self, path: str, in_features: int, out_features: int, kernel_size: int, *,
             stride: int = 1, padding: int = 0, rngs: nnx.Rngs) -> QConv:
        """Conv layer for ``path``: kernel (k,k,I,O), bias (O,) plus the method's extras."""
        spec = self._spec(path)
        out_hw = None
        if spec.binary and spec.input_scale == "xnorpp":
            if path not in self.layer_sizes:
                raise ValueError(
                    f"method 'xnor++' needs the output size of conv {path!r}: build the FP "
                    "model first and pass QuantFactory(cfg, layer_sizes=trace.output_sizes("
                    "trace.trace_layers(fp_model, input_shape)))")
            out_hw = tuple(self.layer_sizes[path])
        return QConv(spec, in_features, out_features, kernel_size, stride=stride,
                     padding=padding, out_hw=out_hw, dtype=self.dtype, packed=self.packed,
                     planes=self.packed_planes.get(path), rngs=rngs)

    def dense(self, path: str, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> QDense:
        """Dense layer for ``path``: kernel (I,O), bias (O,) plus the method's extras."""
        return QDense(self._spec(path), in_features, out_features, dtype=self.dtype,
                      packed=self.packed, planes=self.packed_planes.get(path), rngs=rngs)

    def attention(self, path: str, channels: int, *, rngs: nnx.Rngs):
        """The method's quantizers on the operands of attention block ``path`` (None: none)."""
        quantizers = self.method.attention_quantizers(path, self.config) or {}
        taq = self.method.attention_taq(path, self.config)
        if not quantizers and (taq is None or taq.mode == "off"):
            return None
        return AttentionOperands(path, quantizers, gated=self.method.attention_gated(self.config),
                                 channels=channels, taq=taq)

    @property
    def binary_paths(self) -> list[str]:
        """Paths of the binary layers built so far, in build order."""
        return [p for p, s in self.specs.items() if s.binary]


def fp_factory(dtype=None) -> QuantFactory:
    """A factory that builds every layer in full precision (method 'fp'); models built with
    it record their layer shapes for the efficiency summary like quantized ones."""
    cfg = get_quant_config()
    cfg.method = "fp"
    cfg.fp_layers = ("*",)
    return QuantFactory(cfg, dtype=dtype)
