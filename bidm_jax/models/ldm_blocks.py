"""Blocks of the CompVis LDM UNet (CompVis/latent-diffusion
``ldm/modules/diffusionmodules/openaimodel.py``; methods.md §1.2), NHWC, in NNX.

Attribute paths mirror the PyTorch ``nn.Sequential`` indices so that parameter names are the
official state-dict names: a ResBlock's ``in_layers.{0: GroupNorm, 2: conv}``,
``emb_layers.1`` (Linear), ``out_layers.{0: GroupNorm, 3: conv}``, ``skip_connection``; an
AttentionBlock's ``norm``, ``qkv``, ``proj_out``; ``op`` (Downsample) and ``conv`` (Upsample).
Parameter-free positions (SiLU, Dropout) are ``None`` entries of an ``nnx.List``.

Every conv/linear comes from the layer factory by its path (``models.layers``), so quantized
methods replace them without touching this file. The attention qkv/proj_out are PyTorch
Conv1d (O, I, 1) layers; here they are 1x1 convs on the (B, H, W, C) map (the same product).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.ddim_unet import dropout
from bidm_jax.models.layers import attention

GN_EPS = 1e-5  # GroupNorm32 uses PyTorch's default epsilon (methods.md §1.2); Flax's is 1e-6


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """LDM sinusoidal embedding, **cos first** (openaimodel ``timestep_embedding``).

    f_i = exp(-ln(max_period) i / half), emb = [cos(t f), sin(t f)] (zero-padded if dim is
    odd). Unlike the DDIM embedding (sin first, divisor half - 1). t: (B,) -> (B, dim) float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm32(ch: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm32: 32 groups, eps 1e-5, statistics in float32 (the module runs in float32
    whatever the compute dtype; :func:`norm` casts around it). Two-pass variance as PyTorch."""
    return nnx.GroupNorm(ch, num_groups=32, epsilon=GN_EPS, dtype=jnp.float32,
                         use_fast_variance=False, rngs=rngs)


def norm(layer: nnx.GroupNorm, x: jax.Array) -> jax.Array:
    """``GroupNorm32.forward``: normalise x.float(), then cast back to x's dtype."""
    return layer(x.astype(jnp.float32)).astype(x.dtype)


def zero_init(layer) -> None:
    """``zero_module``: the out convs start at zero, so every residual block starts as the
    identity. Layers without an FP ``kernel`` (packed exports) get their values loaded."""
    for leaf in ("kernel", "bias"):
        var = getattr(layer, leaf, None)
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.zeros_like(var.get_value()))


def nearest_up(x: jax.Array) -> jax.Array:
    """F.interpolate(scale_factor=2, mode='nearest') on (B, H, W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
    """AvgPool2d(kernel 2, stride 2) on (B, H, W, C) (H, W even)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResBlock(nnx.Module):
    """openaimodel ``ResBlock`` (methods.md §1.2).

    in_layers = [GN, SiLU, conv3x3]; emb_layers = [SiLU, Linear(emb -> C_out, or 2 C_out
    with ``scale_shift``)]; out_layers = [GN, SiLU, Dropout, conv3x3 (zero-init)];
    skip_connection = identity if C_in == C_out else a 1x1 conv. ``updown`` 'up'/'down'
    (LDM-8's resblock_updown) resamples both h (between SiLU and the in conv) and x by
    nearest x2 / 2x2 average pooling.
    """

    def __init__(self, path: str, cin: int, cout: int, emb_ch: int, dropout_rate: float,
                 factory, rngs: nnx.Rngs, *, scale_shift: bool = False,
                 updown: str | None = None):
        if updown not in (None, "up", "down"):
            raise ValueError(f"ResBlock updown={updown!r}: valid choices: None, up, down")
        self.scale_shift, self.updown, self.dropout_rate = scale_shift, updown, dropout_rate
        self.in_layers = nnx.List([group_norm32(cin, rngs), None,
                                   factory.conv(f"{path}.in_layers.2", cin, cout, 3, padding=1,
                                                rngs=rngs)])
        self.emb_layers = nnx.List([None, factory.dense(
            f"{path}.emb_layers.1", emb_ch, 2 * cout if scale_shift else cout, rngs=rngs)])
        out_conv = factory.conv(f"{path}.out_layers.3", cout, cout, 3, padding=1, rngs=rngs)
        zero_init(out_conv)
        self.out_layers = nnx.List([group_norm32(cout, rngs), None, None, out_conv])
        self.skip_connection = (factory.conv(f"{path}.skip_connection", cin, cout, 1, rngs=rngs)
                                if cin != cout else None)

    def _resample(self, x):
        if self.updown == "up":
            return nearest_up(x)
        return avg_pool2(x) if self.updown == "down" else x

    def __call__(self, x, emb, rng=None):
        """x (B, H, W, C_in), emb (B, emb_ch) -> (B, H', W', C_out)."""
        h = jax.nn.silu(norm(self.in_layers[0], x))
        h, x = self._resample(h), self._resample(x)
        h = self.in_layers[2](h)
        e = self.emb_layers[1](jax.nn.silu(emb)).astype(h.dtype)[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = norm(self.out_layers[0], h) * (1 + scale) + shift
        else:
            h = norm(self.out_layers[0], h + e)
        h = self.out_layers[3](dropout(jax.nn.silu(h), self.dropout_rate, rng))
        skip = self.skip_connection(x) if self.skip_connection is not None else x
        return skip + h


class AttentionBlock(nnx.Module):
    """openaimodel ``AttentionBlock`` with ``QKVAttentionLegacy`` (methods.md §1.2).

    GN -> qkv (C -> 3C); the 3C channels are grouped per head as [q_h | k_h | v_h] (the
    legacy reshape to (B*H, 3*ch, T)); q and k are each scaled by ch^(-1/4), the softmax runs
    in float32; proj_out (zero-init); residual add.
    """

    def __init__(self, path: str, ch: int, heads: int, factory, rngs: nnx.Rngs):
        if heads < 1 or ch % heads:
            raise ValueError(f"{path}: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = group_norm32(ch, rngs)
        self.qkv = factory.conv(f"{path}.qkv", ch, 3 * ch, 1, rngs=rngs)
        self.proj_out = factory.conv(f"{path}.proj_out", ch, ch, 1, rngs=rngs)
        zero_init(self.proj_out)
        self.operands = factory.attention(path, ch, rngs=rngs)  # None unless quantized

    def __call__(self, x):
        """x (B, H, W, C) -> (B, H, W, C)."""
        b, hh, ww, c = x.shape
        qkv = self.qkv(norm(self.norm, x)).reshape(b, hh * ww, self.heads, 3, c // self.heads)
        q, k, v = (qkv[:, :, :, i].reshape(b, hh * ww, c) for i in range(3))
        h = attention(q, k, v, self.operands, heads=self.heads, split_scale=True)
        return x + self.proj_out(h.reshape(b, hh, ww, c))


class Downsample(nnx.Module):
    """conv3x3, stride 2, symmetric pad 1 (not the DDIM/autoencoder asymmetric pad)."""

    def __init__(self, path: str, ch: int, factory, rngs: nnx.Rngs):
        self.op = factory.conv(f"{path}.op", ch, ch, 3, stride=2, padding=1, rngs=rngs)

    def __call__(self, x):
        return self.op(x)


class Upsample(nnx.Module):
    """Nearest x2, then conv3x3 pad 1."""

    def __init__(self, path: str, ch: int, factory, rngs: nnx.Rngs):
        self.conv = factory.conv(f"{path}.conv", ch, ch, 3, padding=1, rngs=rngs)

    def __call__(self, x):
        return self.conv(nearest_up(x))
