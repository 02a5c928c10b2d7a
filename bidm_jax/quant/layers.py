"""Quantized NNX conv/dense layers built from a :class:`~bidm_jax.quant.policy.LayerSpec`.

Both layers keep the FP layer's ``kernel`` ((kh,kw,I,O) / (I,O)) and ``bias`` (O,) so a
teacher's parameters load into them unchanged; binary layers add their method's extras:

* ``tau`` (I,): learnable channel shift before the sign (BiDM ``channel_threshold``,
  ReActNet RSign, BBCU move0), init 0;
* ``weight_scale`` (O,): learnable sigma (``quant.weight_scale='learnable'``);
* ``kconv``: BiDM's 1→1 conv on mean_c|x| (kernel (k,k,1,1) init 1/k², optional bias);
* ``xnorpp``: XNOR-Net++ Gamma factors alpha (O,), beta (H_out,), gamma (W_out,);
* ``shortcut_scale`` (1,) and ``shortcut`` (FP 1×1 conv, only when I != O) (§2.4);
* ``rprelu``: RPReLU shifts and slopes (O,);
* ``reste_o``: ReSTE's schedule value o, a :class:`ReSTEPower` (not a Param).

Packed form (``packed=PackedOptions(...)``, built by ``QuantFactory(..., packed=...)`` for
``--mode export`` checkpoints): a binary layer holds ``kernel_bits`` (sign bits of the kernel,
int32 words) and ``kernel_scale`` (O,) instead of ``kernel`` (and ``weight_scale``), and no
``bias`` unless ``quant.binary_bias='keep'``; its core product runs from the bits
(:mod:`bidm_jax.quant.packed`) and the epilogue is the same code as the fake-quant layer's.

Inputs are NHWC (conv) or (..., I) (dense). Binary forwards follow methods.md §2.2-2.4
(bidm, xnor) and §5 (baselines); the bias is dropped unless ``quant.binary_bias='keep'``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.quant import binarizers as B
from bidm_jax.quant import packed as P
from bidm_jax.quant import registry, trace
from bidm_jax.quant.policy import LayerSpec

__all__ = ["ReSTEPower", "RPReLU", "KConv", "XnorppScale", "Shortcut1x1", "QConv", "QDense"]


class ReSTEPower(nnx.Variable):
    """ReSTE's power o (methods.md §5). Not a Param, so optimizers filtered on nnx.Param skip
    it; the training loop sets it explicitly each step with
    :func:`bidm_jax.quant.student.with_reste_o` (state) or ``set_reste_o`` (module)."""


@functools.partial(jax.jit, static_argnums=1)
def _uniform_pm1(key, n: int) -> jax.Array:
    return jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)


@functools.partial(jax.jit, static_argnums=1)
def _take(u: jax.Array, shape: tuple, bound) -> jax.Array:
    return u[:math.prod(shape)].reshape(shape) * bound


def _torch_uniform(key, shape, fan_in):
    """PyTorch's default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    The random draw is made at a power-of-two length and sliced, so building a UNet compiles
    the (slow to compile) threefry kernel once per size bucket instead of once per shape.
    """
    n = math.prod(shape)
    bucket = 1 << max(n - 1, 0).bit_length()
    return _take(_uniform_pm1(key, bucket), tuple(shape), 1.0 / math.sqrt(fan_in))


class RPReLU(nnx.Module):
    """ReActNet RPReLU: PReLU(x + shift_in) + shift_out, per channel (slope init 0.25)."""

    def __init__(self, channels: int):
        self.shift_in = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.slope = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))
        self.shift_out = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        z = x + self.shift_in[...]
        return jnp.where(z > 0, z, self.slope[...] * z) + self.shift_out[...]


class KConv(nnx.Module):
    """BiDM's learnable tiny conv k (§2.3 step 3): 1→1 channel, host kernel/stride/padding.

    kernel (k,k,1,1) init 1/k² (XNOR-Net's box); bias (1,) with PyTorch's default init
    U(-1/k, 1/k) in code mode, absent in paper mode.
    """

    def __init__(self, kernel_size: int, stride: int, padding: int, use_bias: bool, rngs: nnx.Rngs):
        k = kernel_size
        self.stride, self.padding = stride, padding
        self.kernel = nnx.Param(jnp.full((k, k, 1, 1), 1.0 / (k * k), jnp.float32))
        self.bias = nnx.Param(_torch_uniform(rngs.params(), (1,), k * k)) if use_bias else None

    def __call__(self, a: jax.Array) -> jax.Array:
        k = B.conv2d_nhwc(a, self.kernel[...].astype(a.dtype), self.stride, self.padding)
        return k if self.bias is None else k + self.bias[...].astype(a.dtype)


class XnorppScale(nnx.Module):
    """XNOR-Net++ Gamma = alpha ⊗ beta ⊗ gamma (methods.md §5); alpha init mean|W| per
    output channel (refreshed from loaded weights by ``init_from_kernel``), beta/gamma 1."""

    def __init__(self, alpha: jax.Array, out_hw: tuple[int, int] | None):
        self.alpha = nnx.Param(alpha)
        if out_hw is None:  # dense layers: Gamma = alpha only
            self.beta = self.gamma = None
        else:
            self.beta = nnx.Param(jnp.ones((out_hw[0],), jnp.float32))
            self.gamma = nnx.Param(jnp.ones((out_hw[1],), jnp.float32))

    def __call__(self) -> jax.Array:
        if self.beta is None:
            return self.alpha[...]
        return B.xnorpp_gamma(self.alpha[...], self.beta[...], self.gamma[...])


class Shortcut1x1(nnx.Module):
    """FP 1×1 conv with bias used as shortcut when I != O (BiDM code, §2.4), PyTorch init."""

    def __init__(self, in_features: int, out_features: int, stride: int, rngs: nnx.Rngs):
        self.stride = stride
        self.kernel = nnx.Param(_torch_uniform(rngs.params(), (1, 1, in_features, out_features),
                                               in_features))
        self.bias = nnx.Param(_torch_uniform(rngs.params(), (out_features,), in_features))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = B.conv2d_nhwc(x, self.kernel[...].astype(x.dtype), self.stride, 0)
        return y + self.bias[...].astype(x.dtype)


def _avg_pool(x: jax.Array, s: int) -> jax.Array:
    """AvgPool2d(kernel=s, stride=s), floor mode (trailing rows/cols dropped), NHWC."""
    b, h, w, c = x.shape
    ho, wo = h // s, w // s
    return x[:, :ho * s, :wo * s].reshape(b, ho, s, wo, s, c).mean(axis=(2, 4))


class _Binary:
    """Weight/activation quantization shared by QConv and QDense."""

    spec: LayerSpec
    packed: P.PackedOptions | None

    def _build_kernel(self, spec: LayerSpec, shape: tuple, fan_in: int,
                      packed: P.PackedOptions | None, rngs: nnx.Rngs):
        """FP ``kernel`` (kh,kw,I,O)/(I,O) and ``bias`` (O,), or, for a packed binary layer,
        ``kernel_bits`` (num_words(K, g), O) int32 and ``kernel_scale`` (O,); K = prod of all
        kernel axes but the last. Packed values are placeholders until a checkpoint loads."""
        self.packed = packed if spec.binary else None
        self.kernel_shape = tuple(shape)
        out = shape[-1]
        if self.packed is None:
            self.kernel = nnx.Param(_torch_uniform(rngs.params(), shape, fan_in))
            self.bias = nnx.Param(_torch_uniform(rngs.params(), (out,), fan_in))
            return
        k = math.prod(shape[:-1])
        self.group_words = packed.group_words(k)
        self.kernel_bits = nnx.Param(jnp.zeros(P.words_shape(k, out, self.group_words),
                                               jnp.int32))
        self.kernel_scale = nnx.Param(jnp.ones((out,), jnp.float32))
        # A dropped bias (binary_bias='drop') is dead weight: the packed layer has none.
        self.bias = nnx.Param(jnp.zeros((out,), jnp.float32)) if spec.keep_bias else None

    def _build_common(self, spec: LayerSpec, in_features: int):
        if spec.channel_shift:
            self.tau = nnx.Param(jnp.zeros((in_features,), jnp.float32))
        if spec.weight == "learnable_scale" and self.packed is None:
            # Packed layers hold sigma as their kernel_scale.
            self.weight_scale = nnx.Param(B.per_channel_abs_mean(self.kernel[...]))
        if "reste" in (spec.weight, spec.act):
            self.reste_o = ReSTEPower(jnp.asarray(1.0, jnp.float32))

    def _reste_kwargs(self):
        return {"o": self.reste_o[...], "t": self.spec.reste_threshold}

    def _quant_weight(self) -> jax.Array:
        spec, w = self.spec, self.kernel[...]
        kw = {}
        if spec.weight == "learnable_scale":
            kw["sigma"] = self.weight_scale[...]
        elif spec.weight == "reste":
            kw = self._reste_kwargs()
        return registry.get_quantizer(spec.weight, "weight")(w, **kw)

    def _quant_act(self, x: jax.Array, dense: bool) -> jax.Array:
        spec, name, kw = self.spec, self.spec.act, {}
        if spec.channel_shift:
            kw["tau"] = self.tau[...].astype(x.dtype)
            if dense and spec.linear_tau == "code":
                name = "rsign_linear_code"
        if name == "reste":
            kw = self._reste_kwargs()
        return registry.get_quantizer(name, "activation")(x, **kw)

    def init_from_kernel(self) -> None:
        """Re-derive kernel-based inits (learnable sigma, XNOR-Net++ alpha) from the current
        kernel; call after loading a teacher's weights (build_student does). No-op when
        packed (no FP kernel)."""
        if self.packed is not None:
            return
        alpha = B.per_channel_abs_mean(self.kernel[...])
        if getattr(self, "weight_scale", None) is not None:
            self.weight_scale[...] = alpha
        if getattr(self, "xnorpp", None) is not None:
            self.xnorpp.alpha[...] = alpha


class QConv(_Binary, nnx.Module):
    """Conv2d (NHWC, symmetric integer padding like PyTorch) in FP or binary form."""

    def __init__(self, spec: LayerSpec, in_features: int, out_features: int, kernel_size: int,
                 *, stride: int = 1, padding: int = 0, out_hw: tuple[int, int] | None = None,
                 dtype=None, packed: P.PackedOptions | None = None, rngs: nnx.Rngs):
        for name, v, lo in (("in_features", in_features, 1), ("out_features", out_features, 1),
                            ("kernel_size", kernel_size, 1), ("stride", stride, 1),
                            ("padding", padding, 0)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{spec.path}: {name} must be an int >= {lo}, got {v!r}")
        self.spec, self.dtype = spec, dtype
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        k, fan_in = kernel_size, in_features * kernel_size ** 2
        self._build_kernel(spec, (k, k, in_features, out_features), fan_in, packed, rngs)
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
            sc = _avg_pool(x, self.stride)
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
            xb = self._quant_act(x, dense=False)
            if self.packed is not None:
                y = P.conv_core(xb, self.kernel_bits[...], self.kernel_scale[...],
                                kernel_size=self.kernel_size, in_features=self.in_features,
                                stride=self.stride, padding=self.padding,
                                group_words=self.group_words, opts=self.packed).astype(x.dtype)
            else:
                wb = self._quant_weight().astype(x.dtype)
                y = B.conv2d_nhwc(xb, wb, self.stride, self.padding)
            y = self._epilogue(x, y)
        if trace.recording():
            self._record(x, y)
        return y

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
            bits_w=spec.bits_w if spec.binary else 32, bits_a=spec.bits_a if spec.binary else 32,
            in_shape=tuple(x.shape), out_shape=tuple(y.shape),
            kernel_shape=self.kernel_shape,
            macs=trace.conv_macs(y.shape, self.kernel_shape),
            shortcut_macs=hw * self.in_features * self.out_features if sc is not None else 0,
            kconv_macs=hw * self.kernel_size ** 2 if spec.input_scale in ("box", "kconv") else 0))


class QDense(_Binary, nnx.Module):
    """Dense layer in FP or binary form. BiDM's BNNLinear (§2.3): shifted sign per
    ``quant.linear_tau``, per-row weight scale, no K map, no shortcut, bias dropped."""

    def __init__(self, spec: LayerSpec, in_features: int, out_features: int, *, dtype=None,
                 packed: P.PackedOptions | None = None, rngs: nnx.Rngs):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{spec.path}: {name} must be an int >= 1, got {v!r}")
        self.spec, self.dtype = spec, dtype
        self.in_features, self.out_features = in_features, out_features
        self._build_kernel(spec, (in_features, out_features), in_features, packed, rngs)
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
            xb = self._quant_act(x, dense=True)
            if self.packed is not None:
                y = P.dense_core(xb, self.kernel_bits[...], self.kernel_scale[...],
                                 in_features=self.in_features, group_words=self.group_words,
                                 opts=self.packed).astype(x.dtype)
            else:
                y = xb @ self._quant_weight().astype(x.dtype)
            # Dense epilogue (BiDM BNNLinear has no K map, shortcut or RPReLU).
            if spec.input_scale == "xnorpp":
                y = y * self.xnorpp().astype(x.dtype)
            if spec.keep_bias:
                y = y + self.bias[...].astype(x.dtype)
        if trace.recording():
            trace.record(trace.LayerRecord(
                path=spec.path, kind="dense", binary=spec.binary,
                bits_w=spec.bits_w if spec.binary else 32,
                bits_a=spec.bits_a if spec.binary else 32,
                in_shape=tuple(x.shape), out_shape=tuple(y.shape),
                kernel_shape=self.kernel_shape,
                macs=math.prod(x.shape[1:-1]) * self.in_features * self.out_features))
        return y
