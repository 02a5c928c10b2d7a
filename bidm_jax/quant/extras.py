"""The pieces a method places around a binary core (methods.md §2.3–2.4, §5), and the
quantizers on attention operands.

* :class:`RPReLU` (ReActNet, BBCU), :class:`KConv` (BiDM's K map), :class:`XnorppScale`
  (XNOR-Net++ Γ), :class:`Shortcut1x1` (the FP 1×1 per-conv shortcut when channels change);
* :class:`AttentionOperands`: activation quantizers on q, k, the softmax weights and v of an
  attention block, built by the factory's attention hook from the method's recipe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.layers import torch_uniform
from bidm_jax.quant import binarizers as B
from bidm_jax.quant import variables
from bidm_jax.quant.registry import QuantGate
from bidm_jax.quant.taq import TaQ, TaQSpec

__all__ = ["RPReLU", "KConv", "XnorppScale", "Shortcut1x1", "avg_pool", "AttentionOperands",
           "OPERANDS"]


def _torch_uniform(key, shape, fan_in):
    """PyTorch's default conv/linear init, the one the FP layers use too
    (:func:`bidm_jax.models.layers.torch_uniform`)."""
    return torch_uniform(fan_in)(key, tuple(shape))


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


def avg_pool(x: jax.Array, s: int) -> jax.Array:
    """AvgPool2d(kernel=s, stride=s), floor mode (trailing rows/cols dropped), NHWC."""
    b, h, w, c = x.shape
    ho, wo = h // s, w // s
    return x[:, :ho * s, :wo * s].reshape(b, ho, s, wo, s, c).mean(axis=(2, 4))


OPERANDS = ("q", "k", "weights", "v")


class AttentionOperands(nnx.Module):
    """Activation quantizers on the operands of one attention block (the factory's attention
    hook): ``quantizers`` maps any of 'q', 'k', 'weights' (the softmax output) and 'v' to a
    registry activation quantizer; ``taq`` (Q-DM) normalises its operands first. Each operand's quantizer variables live under
    ``{block}.operands.{operand}``. ``gated``: a ``quant_on`` switch (auxiliary state, 1.0 =
    quantize) that the method's step hook sets (BinaryDM's code turns it on at step 5)."""

    def __init__(self, path: str, quantizers: dict[str, str], gated: bool = False,
                 channels: int | None = None, taq: TaQSpec | None = None):
        bad = set(quantizers) - set(OPERANDS) | set(taq.operands if taq else ()) - {"q", "k", "v"}
        if bad:
            raise ValueError(f"{path}: unknown attention operands {sorted(bad)}; valid: "
                             f"{', '.join(OPERANDS)}")
        self.path = path
        self.names = {op: quantizers[op] for op in OPERANDS if quantizers.get(op)}
        for op, name in self.names.items():
            holder = nnx.Module()
            variables.build(holder, variables.quantizer(name, "activation").variables,
                            None, None)
            setattr(self, op, holder)
        self.quant_on = QuantGate(jnp.asarray(1.0, jnp.float32)) if gated else None
        # Q-DM's TaQ before the quantizer of each listed operand (bidm_jax.quant.taq).
        # Its variables are {block}.operands.taq_{operand}.{gamma, beta, running_mean, ...}.
        self.taq_operands = ()
        if taq is not None and taq.mode != "off":
            if channels is None:
                raise ValueError(f"{path}: TaQ needs the attention block's channel count")
            self.taq_operands = tuple(taq.operands)
            for op in self.taq_operands:
                setattr(self, f"taq_{op}", TaQ(channels, taq))

    def __call__(self, operand: str, x: jax.Array) -> jax.Array:
        """x normalised (TaQ) and quantized as ``operand`` says (unchanged when that operand
        has neither)."""
        if operand in self.taq_operands:
            x = getattr(self, f"taq_{operand}")(x)
        name = self.names.get(operand)
        if name is None:
            return x
        q = variables.quantizer(name, "activation")
        y = q(x, **variables.kwargs(getattr(self, operand), q, None, x))
        if self.quant_on is None:
            return y
        return jnp.where(self.quant_on[...] > 0, y, x)
