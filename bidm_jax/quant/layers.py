"""Quantized NNX conv/dense layers built from a :class:`~bidm_jax.quant.policy.LayerSpec`.

Both layers keep the FP layer's ``kernel`` ((kh,kw,I,O) / (I,O)) and ``bias`` (O,) so a
teacher's parameters load into them unchanged; binary layers add their method's extras:

* ``tau`` (I,): learnable channel shift before the sign (BiDM ``channel_threshold``,
  ReActNet RSign, BBCU move0), init 0;
* the variables its quantizers declare (:class:`~bidm_jax.quant.registry.QVar`), e.g.
  ``weight_scale`` (O,): learnable sigma (``quant.weight_scale='learnable'``);
* ``kconv``: BiDM's 1→1 conv on mean_c|x| (kernel (k,k,1,1) init 1/k², optional bias);
* ``xnorpp``: XNOR-Net++ Gamma factors alpha (O,), beta (H_out,), gamma (W_out,);
* ``shortcut_scale`` (1,) and ``shortcut`` (FP 1×1 conv, only when I != O) (§2.4);
* ``rprelu``: RPReLU shifts and slopes (O,);
* ``reste_o``: ReSTE's schedule value o, a :class:`ReSTEPower` (auxiliary state);
* ``quant_on`` (``spec.gated``): a :class:`QuantGate` (auxiliary state, 1.0 = quantized),
  which BinaryDM's progressive binarization sets per layer group (methods.md §3.5): while it
  is 0 the layer runs its FP kernel on its FP input.

Packed form (``packed=PackedOptions(...)``, built by ``QuantFactory(..., packed=...)`` for
``--mode export`` checkpoints): a binary layer holds ``kernel_bits`` (sign bits of the kernel,
int32 words, one plane per basis of the weight quantizer: (P, words, O)) and
``kernel_scale`` (P, O) instead of ``kernel`` (and the weight quantizer's variables), and no
``bias`` unless the spec keeps it; its core product runs from the bits
(:mod:`bidm_jax.quant.packed`) and the epilogue is the same code as the fake-quant layer's.
Multi-bit activations (LSQ) enter the integer core as their integer levels, the step
multiplied after it. A multi-bit weight quantizer (LSQ, 8-bit first/last convs, EfficientDM's
asymmetric weights at any width) is stored as ``kernel_q`` (the kernel's shape, int8 levels),
``kernel_step`` (O,) and, with a zero point, ``kernel_zp`` (O,) instead; with multi-bit
activations its core is one integer product of the levels with the zero-point terms in the
epilogue (:func:`bidm_jax.quant.packed.int_conv_core`), with FP activations a float product
on the dequantized kernel.

Inputs are NHWC (conv) or (..., I) (dense). Binary forwards follow methods.md §2.2-2.4
(bidm, xnor) and §5 (baselines); the bias is dropped unless ``quant.binary_bias='keep'``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.quant import binarizers as B
from bidm_jax.quant import packed as P
from bidm_jax.quant import trace, variables
from bidm_jax.quant.extras import (KConv, RPReLU, Shortcut1x1, XnorppScale, _torch_uniform,
                                   avg_pool)
from bidm_jax.quant.policy import LayerSpec
from bidm_jax.quant.registry import QuantGate, ReSTEPower

__all__ = ["ReSTEPower", "QuantGate", "QConv", "QDense", "quantizers_in"]


def _has_levels(spec: LayerSpec) -> bool:
    """Whether a packed layer stores integer weight levels (``kernel_q``) rather than sign
    planes: its weight quantizer has ``levels`` (every multi-bit one, and asymmetric 1-bit)."""
    return spec.weight_quantizer.levels is not None


class _Binary:
    """Weight/activation quantization shared by QConv and QDense."""

    spec: LayerSpec
    packed: P.PackedOptions | None

    def _build_kernel(self, spec: LayerSpec, shape: tuple, fan_in: int,
                      packed: P.PackedOptions | None, rngs: nnx.Rngs, planes: int | None = None):
        """FP ``kernel`` (kh,kw,I,O)/(I,O) and ``bias`` (O,), or, for a packed binary layer,
        ``kernel_bits`` (P, num_words(K, g), O) int32 and ``kernel_scale`` (P, O): P sign
        planes of the weight quantizer with their scales (W_q = Σ_p scale_p·sign_p);
        K = prod of all kernel axes but the last. Packed values are placeholders until a
        checkpoint loads. ``planes``: the planes of a packed layer (an export's own count),
        default the weight quantizer's ``stored_planes``. A weight quantizer with integer
        ``levels`` packs as ``kernel_q`` (shape, int8), ``kernel_step`` (O,) and, with a zero
        point, ``kernel_zp`` (O,) instead."""
        self.packed = packed if spec.binary else None
        self.kernel_shape = tuple(shape)
        out = shape[-1]
        if self.packed is None:
            if spec.gated:  # a packed layer is quantized for good
                self.quant_on = QuantGate(jnp.asarray(1.0, jnp.float32))
            self.kernel = nnx.Param(_torch_uniform(rngs.params(), shape, fan_in))
            self.bias = nnx.Param(_torch_uniform(rngs.params(), (out,), fan_in))
            return
        self.bias = nnx.Param(jnp.zeros((out,), jnp.float32)) if spec.keep_bias else None
        if _has_levels(spec):
            self.kernel_q = nnx.Param(jnp.zeros(tuple(shape), jnp.int8))
            self.kernel_step = nnx.Param(jnp.ones((out,), jnp.float32))
            if spec.weight_quantizer.zero_point:
                self.kernel_zp = nnx.Param(jnp.zeros((out,), jnp.float32))
            return
        k = math.prod(shape[:-1])
        planes = spec.weight_quantizer.stored_planes if planes is None else planes
        self.group_words = packed.group_words(k)
        self.kernel_bits = nnx.Param(jnp.zeros((planes,) + P.words_shape(k, out,
                                                                         self.group_words),
                                               jnp.int32))
        self.kernel_scale = nnx.Param(jnp.ones((planes, out), jnp.float32))

    def _build_common(self, spec: LayerSpec, in_features: int):
        if spec.channel_shift:
            self.tau = nnx.Param(jnp.zeros((in_features,), jnp.float32))
        if self.packed is None:
            # Packed layers hold the weight quantizer's values in their planes' scales.
            variables.build(self, spec.weight_quantizer.variables, self.kernel[...],
                            in_features)
        variables.build(self, self._act_quantizer(dense=False).variables, None, in_features)

    def _act_quantizer(self, dense: bool):
        name = self.spec.act
        if self.spec.channel_shift and dense and self.spec.linear_tau == "code":
            name = "rsign_linear_code"
        return variables.quantizer(name, "activation")

    def _gate(self, quantized: jax.Array, fp: jax.Array) -> jax.Array:
        if not self.spec.gated or self.packed is not None:
            return quantized
        return jnp.where(self.quant_on[...] > 0, quantized, fp)

    def _quant_weight(self) -> jax.Array:
        q = self.spec.weight_quantizer
        w = self.kernel[...]
        return self._gate(q(w, **variables.kwargs(self, q, self.spec, None)), w)

    def _act_kwargs(self, x: jax.Array, dense: bool):
        q = self._act_quantizer(dense)
        kw = variables.kwargs(self, q, self.spec, x)
        if self.spec.channel_shift:
            kw["tau"] = self.tau[...].astype(x.dtype)
        return q, kw

    def _quant_act(self, x: jax.Array, dense: bool) -> jax.Array:
        q, kw = self._act_kwargs(x, dense)
        return self._gate(q(x, **kw), x)

    def _packed_input(self, x: jax.Array, dense: bool) -> tuple[jax.Array, jax.Array | None]:
        """(integer-valued input of the packed core, step multiplied after it or None): the
        activation quantizer's levels for a multi-bit quantizer, its ±1/0 values else."""
        q, kw = self._act_kwargs(x, dense)
        if q.levels is None:
            return q(x, **kw), None
        levels, step = q.levels(x, **kw)
        return levels, step

    def _dequantized(self) -> jax.Array:
        """W_q of a packed 1-bit layer as a float kernel (its activations are not integer)."""
        return P.dequantize(self.kernel_bits[...], self.kernel_scale[...], self.kernel_shape,
                            self.group_words)

    def _packed_weight(self) -> jax.Array:
        """The dequantized kernel of a packed multi-bit layer: (levels − zero point) · step."""
        w = self.kernel_q[...].astype(jnp.float32)
        if getattr(self, "kernel_zp", None) is not None:
            w = w - self.kernel_zp[...]
        return w * self.kernel_step[...]

    def _int_core(self, x: jax.Array, dense: bool) -> jax.Array:
        """The product of a packed multi-bit layer: the activation levels times the weight
        levels in integers, zero points and steps in the epilogue; a float product on the
        dequantized kernel when the activations have no integer levels (FP activations,
        code-form zero points)."""
        q, kw = self._act_kwargs(x, dense)
        if q.levels is None:
            a, w = self._quant_act(x, dense), self._packed_weight().astype(x.dtype)
            return a @ w if dense else B.conv2d_nhwc(a, w, self.stride, self.padding)
        out = q.levels(x, **kw)
        qa, sa, za = out if q.zero_point else (*out, None)
        zw = self.kernel_zp[...] if getattr(self, "kernel_zp", None) is not None else None
        if dense:
            acc = P.int_dense_core(qa, za, self.kernel_q[...], zw)
        else:
            acc = P.int_conv_core(qa, za, self.kernel_q[...], zw, stride=self.stride,
                                  padding=self.padding)
        return (acc * sa * self.kernel_step[...]).astype(x.dtype)

    def init_from_kernel(self) -> None:
        """Re-derive kernel-based inits (a learnable σ, XNOR-Net++ α) from the current
        kernel; call after loading a teacher's weights (the student build does). No-op when
        packed (no FP kernel)."""
        if self.packed is not None:
            return
        variables.refresh_from_kernel(self, self.spec.weight_quantizer, self.kernel[...],
                                      self.kernel_shape[-2])
        if getattr(self, "xnorpp", None) is not None:
            self.xnorpp.alpha[...] = B.per_channel_abs_mean(self.kernel[...])


class QConv(_Binary, nnx.Module):
    """Conv2d (NHWC, symmetric integer padding like PyTorch) in FP or binary form."""

    def __init__(self, spec: LayerSpec, in_features: int, out_features: int, kernel_size: int,
                 *, stride: int = 1, padding: int = 0, out_hw: tuple[int, int] | None = None,
                 dtype=None, packed: P.PackedOptions | None = None, planes: int | None = None,
                 rngs: nnx.Rngs):
        for name, v, lo in (("in_features", in_features, 1), ("out_features", out_features, 1),
                            ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                            ("padding", padding, 0)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{spec.path}: {name} must be an int >= {lo}, got {v!r}")
        self.spec, self.dtype = spec, dtype
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        k, fan_in = kernel_size, in_features * kernel_size ** 2
        self._build_kernel(spec, (k, k, in_features, out_features), fan_in, packed, rngs, planes)
        if not spec.binary:
            return
        self._build_common(spec, in_features)
        if spec.input_scale == "kconv":
            self.kconv = KConv(k, stride, padding, spec.kconv_bias, rngs)
        if spec.input_scale == "xnorpp":
            if out_hw is None:
                raise ValueError(f"{spec.path}: xnor++ needs the conv's output size (H_out, W_out)")
            alpha = (jnp.ones((out_features,), jnp.float32) if self.packed is not None
                     else B.per_channel_abs_mean(self.kernel[...]))
            self.xnorpp = XnorppScale(alpha, tuple(out_hw))
        if spec.shortcut == "scaled":
            self.shortcut_scale = nnx.Param(jnp.full((1,), spec.shortcut_scale_init, jnp.float32))
        if spec.shortcut != "none" and in_features != out_features:
            self.shortcut = Shortcut1x1(in_features, out_features, stride, rngs)
        if spec.rprelu != "none":
            self.rprelu = RPReLU(out_features)

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.spec.path}: expected NHWC input with {self.in_features} "
                             f"channels, got shape {x.shape}")

    def _shortcut(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if getattr(self, "shortcut", None) is not None:
            sc = self.shortcut(x)
        elif self.stride > 1:
            sc = avg_pool(x, self.stride)
        else:
            sc = x
        if sc.shape != y.shape:
            raise ValueError(f"{self.spec.path}: shortcut output {sc.shape} does not match the "
                             f"conv output {y.shape}; use quant.shortcut='none' for this layer")
        if self.spec.shortcut == "unit":
            return sc
        s = self.shortcut_scale[...].astype(x.dtype)
        return (jnp.abs(s) if self.spec.shortcut_abs else s) * sc

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, I) -> (B, H_out, W_out, O), computed in ``dtype`` when given."""
        self._check_input(x)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        spec = self.spec
        if not spec.binary:
            y = B.conv2d_nhwc(x, self.kernel[...].astype(x.dtype), self.stride, self.padding)
            y = y + self.bias[...].astype(x.dtype)
        else:
            y = self._epilogue(x, self._core(x))
        if trace.recording():
            self._record(x, y)
        return y

    def _core(self, x: jax.Array) -> jax.Array:
        """The quantized product conv(x_q, W_q): fake-quant, packed 1-bit planes (integer
        input, step after), or packed multi-bit levels (:meth:`_int_core`)."""
        conv = lambda a, w: B.conv2d_nhwc(a, w.astype(x.dtype), self.stride, self.padding)
        if self.packed is None:
            return conv(self._quant_act(x, False), self._quant_weight())
        if _has_levels(self.spec):
            return self._int_core(x, dense=False)
        if self.spec.bits_a == 32:  # W1A32: ±1 weights meet float activations
            return conv(self._quant_act(x, False), self._dequantized())
        xb, step = self._packed_input(x, dense=False)
        y = P.conv_core(xb, self.kernel_bits[...], self.kernel_scale[...],
                        kernel_size=self.kernel_size, in_features=self.in_features,
                        stride=self.stride, padding=self.padding,
                        group_words=self.group_words, opts=self.packed,
                        act_bits=self.spec.bits_a)
        return (y if step is None else y * step).astype(x.dtype)

    def _epilogue(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The method's pieces after the binary core y = conv(x_q, W_q) (fake-quant and packed
        layers share this): K map or Γ, optional bias, RPReLU, per-conv shortcut of ``x``."""
        spec = self.spec
        if spec.input_scale == "box":  # XNOR-Net K = box * mean_c|x| (fixed)
            y = y * B.box_filter_scale(x, self.kernel_size, self.stride, self.padding)
        elif spec.input_scale == "kconv":  # BiDM: K = k * mean_c|x| + b_k (unshifted x)
            y = y * self.kconv(B.input_abs_mean(x))
        elif spec.input_scale == "xnorpp":
            gamma = self.xnorpp()
            if gamma.shape != y.shape[1:]:
                raise ValueError(f"{spec.path}: XNOR-Net++ Gamma was built for output "
                                 f"{gamma.shape[:2]} but the conv produced {y.shape[1:3]}")
            y = y * gamma.astype(x.dtype)
        if spec.keep_bias:
            y = y + self.bias[...].astype(x.dtype)
        if spec.rprelu == "pre_residual":
            y = self.rprelu(y)
        if spec.shortcut != "none":
            y = y + self._shortcut(x, y)
        if spec.rprelu == "post_residual":
            y = self.rprelu(y)
        return y

    def _record(self, x, y):
        spec = self.spec
        hw = math.prod(y.shape[1:3])
        sc = getattr(self, "shortcut", None)
        trace.record(trace.LayerRecord(
            path=spec.path, kind="conv", binary=spec.binary,
            bits_w=spec.stored_bits_w, bits_a=spec.bits_a if spec.binary else 32,
            in_shape=tuple(x.shape), out_shape=tuple(y.shape),
            kernel_shape=self.kernel_shape,
            macs=trace.conv_macs(y.shape, self.kernel_shape),
            shortcut_macs=hw * self.in_features * self.out_features if sc is not None else 0,
            kconv_macs=hw * self.kernel_size ** 2 if spec.input_scale in ("box", "kconv") else 0))


class QDense(_Binary, nnx.Module):
    """Dense layer in FP or binary form. BiDM's BNNLinear (§2.3): shifted sign per
    ``quant.linear_tau``, per-row weight scale, no K map, no shortcut, bias dropped."""

    def __init__(self, spec: LayerSpec, in_features: int, out_features: int, *, dtype=None,
                 packed: P.PackedOptions | None = None, planes: int | None = None,
                 rngs: nnx.Rngs):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{spec.path}: {name} must be an int >= 1, got {v!r}")
        self.spec, self.dtype = spec, dtype
        self.in_features, self.out_features = in_features, out_features
        self._build_kernel(spec, (in_features, out_features), in_features, packed, rngs, planes)
        if not spec.binary:
            return
        self._build_common(spec, in_features)
        if spec.input_scale == "xnorpp":
            alpha = (jnp.ones((out_features,), jnp.float32) if self.packed is not None
                     else B.per_channel_abs_mean(self.kernel[...]))
            self.xnorpp = XnorppScale(alpha, None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., I) -> (..., O), computed in ``dtype`` when given."""
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.spec.path}: expected (..., {self.in_features}) input, "
                             f"got shape {x.shape}")
        if self.dtype is not None:
            x = x.astype(self.dtype)
        spec = self.spec
        if not spec.binary:
            y = x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)
        else:
            if self.packed is not None and _has_levels(spec):
                y = self._int_core(x, dense=True)
            elif self.packed is not None and spec.bits_a == 32:
                y = self._quant_act(x, dense=True) @ self._dequantized().astype(x.dtype)
            elif self.packed is not None:
                xb, step = self._packed_input(x, dense=True)
                y = P.dense_core(xb, self.kernel_bits[...], self.kernel_scale[...],
                                 in_features=self.in_features, group_words=self.group_words,
                                 opts=self.packed, act_bits=spec.bits_a)
                y = (y if step is None else y * step).astype(x.dtype)
            else:
                y = self._quant_act(x, dense=True) @ self._quant_weight().astype(x.dtype)
            # Dense epilogue (BiDM BNNLinear has no K map, shortcut or RPReLU).
            if spec.input_scale == "xnorpp":
                y = y * self.xnorpp().astype(x.dtype)
            if spec.keep_bias:
                y = y + self.bias[...].astype(x.dtype)
        if trace.recording():
            trace.record(trace.LayerRecord(
                path=spec.path, kind="dense", binary=spec.binary,
                bits_w=spec.stored_bits_w,
                bits_a=spec.bits_a if spec.binary else 32,
                in_shape=tuple(x.shape), out_shape=tuple(y.shape),
                kernel_shape=self.kernel_shape,
                macs=math.prod(x.shape[1:-1]) * self.in_features * self.out_features))
        return y


def quantizers_in(module: nnx.Module) -> list:
    """Every registry quantizer the layers of ``module`` use (binary layers' weight and
    activation quantizers, attention operand quantizers), without repeats."""
    from bidm_jax.quant.extras import AttentionOperands

    found = {}
    for _, m in nnx.iter_modules(module):
        if isinstance(m, (QConv, QDense)) and m.spec.binary:
            qs = [m.spec.weight_quantizer, m._act_quantizer(dense=isinstance(m, QDense))]
        elif isinstance(m, AttentionOperands):
            qs = [variables.quantizer(n, "activation") for n in m.names.values()]
        else:
            continue
        for q in qs:
            found[(q.kind, q.name)] = q
    return list(found.values())
