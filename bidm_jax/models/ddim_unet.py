"""The DDIM/DDPM pixel-space UNet (ermongroup/pesser architecture, methods.md §1.1) in NNX.

Module attribute paths equal the official state-dict names (``down.1.attn.0.q``,
``up.2.upsample.conv``, ...), so checkpoints convert by name and quantization policies key on
the same strings. At the CIFAR-10 config (ch 128, mult (1, 2, 2, 2), 2 res blocks, attention
at 16) the model has exactly 35,746,307 parameters.

Call: ``eps, carry = unet(x_t, t, carry)`` with x_t (B, H, W, C) float, t (B,) int or float.
The FP model returns the carry unchanged; the cross-timestep (TBS) student reads and writes it
(methods.md §2.5) through the ``mixer`` hook below.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.layers import FPFactory, attention
from bidm_jax.models.functional import timestep_context

GN_EPS = 1e-6  # ermongroup/pesser GroupNorm epsilon (methods.md §1.1)


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """DDPM sinusoidal embedding, **sin first** (methods.md §1.1).

    f_i = exp(-i ln(1e4) / (half - 1)), emb = [sin(t f), cos(t f)].
    t: (B,) -> (B, dim) float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def swish(x):
    return x * jax.nn.sigmoid(x)


def dropout(x, rate: float, rng: jax.Array | None):
    """Inverted dropout with an explicit key (no RNG state inside the model)."""
    if rng is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def group_norm(ch: int, rngs: nnx.Rngs, dtype=None) -> nnx.GroupNorm:
    return nnx.GroupNorm(ch, num_groups=32, epsilon=GN_EPS, dtype=dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
    """norm1 → swish → conv1 → + temb_proj(swish(temb)) → norm2 → swish → dropout → conv2,
    plus the 1x1 ``nin_shortcut`` when channels change (methods.md §1.1)."""

    def __init__(self, path: str, cin: int, cout: int, temb_ch: int, dropout_rate: float,
                 factory, rngs: nnx.Rngs, dtype=None):
        self.dropout_rate = dropout_rate
        self.norm1 = group_norm(cin, rngs, dtype)
        self.conv1 = factory.conv(f"{path}.conv1", cin, cout, 3, padding=1, rngs=rngs)
        # temb_ch 0: no time embedding (the LDM autoencoders' blocks, temb_channels=0)
        self.temb_proj = (factory.dense(f"{path}.temb_proj", temb_ch, cout, rngs=rngs)
                          if temb_ch > 0 else None)
        self.norm2 = group_norm(cout, rngs, dtype)
        self.conv2 = factory.conv(f"{path}.conv2", cout, cout, 3, padding=1, rngs=rngs)
        self.nin_shortcut = (factory.conv(f"{path}.nin_shortcut", cin, cout, 1, rngs=rngs)
                             if cin != cout else None)

    def __call__(self, x, temb, rng=None, tap_conv2=None):
        """x (B, H, W, cin), temb (B, temb_ch) -> (B, H, W, cout). ``tap_conv2(h) -> h`` sees
        the conv2 output before the residual add (the point BiDM's CIFAR code hooks)."""
        h = self.conv1(swish(self.norm1(x)))
        if self.temb_proj is not None:
            h = h + self.temb_proj(swish(temb))[:, None, None, :]
        h = swish(self.norm2(h))
        h = self.conv2(dropout(h, self.dropout_rate, rng))
        if tap_conv2 is not None:
            h = tap_conv2(h)
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convs and a residual."""

    def __init__(self, path: str, ch: int, factory, rngs: nnx.Rngs, dtype=None):
        self.norm = group_norm(ch, rngs, dtype)
        self.q = factory.conv(f"{path}.q", ch, ch, 1, rngs=rngs)
        self.k = factory.conv(f"{path}.k", ch, ch, 1, rngs=rngs)
        self.v = factory.conv(f"{path}.v", ch, ch, 1, rngs=rngs)
        self.proj_out = factory.conv(f"{path}.proj_out", ch, ch, 1, rngs=rngs)
        self.operands = factory.attention(path, ch, rngs=rngs)  # None unless quantized

    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, hh * ww, c)
        k = self.k(h).reshape(b, hh * ww, c)
        v = self.v(h).reshape(b, hh * ww, c)
        h = attention(q, k, v, self.operands).reshape(b, hh, ww, c)
        return x + self.proj_out(h)


class Downsample(nnx.Module):
    """Asymmetric pad (0,1,0,1) then a 3x3 stride-2 VALID conv (TF 'SAME' of the original)."""

    def __init__(self, path: str, ch: int, factory, rngs: nnx.Rngs):
        self.conv = factory.conv(f"{path}.conv", ch, ch, 3, stride=2, padding=0, rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest x2 then a 3x3 conv, pad 1."""

    def __init__(self, path: str, ch: int, factory, rngs: nnx.Rngs):
        self.conv = factory.conv(f"{path}.conv", ch, ch, 3, padding=1, rngs=rngs)

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x)


class Level(nnx.Module):
    """One resolution level: ``block`` list, ``attn`` list and an optional resampler."""

    def __init__(self, blocks, attns, resample_name: str | None, resample):
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        self.downsample = resample if resample_name == "downsample" else None
        self.upsample = resample if resample_name == "upsample" else None


class Mid(nnx.Module):
    def __init__(self, block_1, attn_1, block_2):
        self.block_1, self.attn_1, self.block_2 = block_1, attn_1, block_2


class Temb(nnx.Module):
    def __init__(self, dense):
        self.dense = nnx.List(dense)


# A mixer lets the TBS student blend a feature with the previous step's cached one:
# mixer(name, h, carry, t) -> (h_mixed, carry). ``None`` = plain FP behaviour.
Mixer = Callable[[str, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


class ForwardHooks:
    """A family forward's dropout keys and tap points: ``rng()`` gives a fresh key per call
    (None without ``dropout_rng``); ``tap(name, h)`` lets ``mixer`` blend h (updating
    ``carry``) and records the result in ``features``."""

    def __init__(self, t, carry, dropout_rng, mixer: Mixer | None, features: dict | None):
        self.t, self.carry, self.dropout_rng = t, carry, dropout_rng
        self.mixer, self.features = mixer, features
        self._keys = iter(range(1 << 30))

    def rng(self):
        if self.dropout_rng is None:
            return None
        return jax.random.fold_in(self.dropout_rng, next(self._keys))

    def tap(self, name: str, h):
        if self.mixer is not None:
            h, self.carry = self.mixer(name, h, self.carry, self.t)
        if self.features is not None:
            self.features[name] = h
        return h


class DDIMUNet(nnx.Module):
    """ermongroup DDIM UNet. Shapes: x (B, R, R, in_ch) → eps (B, R, R, out_ch)."""

    def __init__(self, *, ch: int = 128, ch_mult=(1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.1, in_channels: int = 3,
                 out_ch: int = 3, resolution: int = 32, resamp_with_conv: bool = True,
                 factory=None, dtype=None, rngs: nnx.Rngs):
        if not resamp_with_conv:
            raise ValueError("model.resamp_with_conv=False is not supported (the papers use True)")
        factory = factory if factory is not None else FPFactory(dtype)
        self.ch, self.num_res_blocks = ch, num_res_blocks
        self.num_levels = len(ch_mult)
        self.attn_resolutions = tuple(attn_resolutions)
        temb_ch = 4 * ch
        self.temb = Temb([factory.dense("temb.dense.0", ch, temb_ch, rngs=rngs),
                          factory.dense("temb.dense.1", temb_ch, temb_ch, rngs=rngs)])
        self.conv_in = factory.conv("conv_in", in_channels, ch, 3, padding=1, rngs=rngs)

        in_mult = (1,) + tuple(ch_mult)
        res, down = resolution, []
        for i in range(self.num_levels):
            cin, cout = ch * in_mult[i], ch * ch_mult[i]
            blocks, attns = [], []
            for j in range(num_res_blocks):
                blocks.append(ResnetBlock(f"down.{i}.block.{j}", cin, cout, temb_ch, dropout,
                                          factory, rngs, dtype))
                cin = cout
                if res in self.attn_resolutions:
                    attns.append(AttnBlock(f"down.{i}.attn.{j}", cin, factory, rngs, dtype))
            ds = None
            if i != self.num_levels - 1:
                ds = Downsample(f"down.{i}.downsample", cin, factory, rngs)
                res //= 2
            down.append(Level(blocks, attns, "downsample", ds))
        self.down = nnx.List(down)

        self.mid = Mid(ResnetBlock("mid.block_1", cin, cin, temb_ch, dropout, factory, rngs, dtype),
                       AttnBlock("mid.attn_1", cin, factory, rngs, dtype),
                       ResnetBlock("mid.block_2", cin, cin, temb_ch, dropout, factory, rngs, dtype))

        up = [None] * self.num_levels  # stored by level index, built from the bottom up
        for i in reversed(range(self.num_levels)):
            cout = ch * ch_mult[i]
            blocks, attns = [], []
            for j in range(num_res_blocks + 1):
                skip = ch * (in_mult[i] if j == num_res_blocks else ch_mult[i])
                blocks.append(ResnetBlock(f"up.{i}.block.{j}", cin + skip, cout, temb_ch,
                                          dropout, factory, rngs, dtype))
                cin = cout
                if res in self.attn_resolutions:
                    attns.append(AttnBlock(f"up.{i}.attn.{j}", cin, factory, rngs, dtype))
            us = None
            if i != 0:
                us = Upsample(f"up.{i}.upsample", cin, factory, rngs)
                res *= 2
            up[i] = Level(blocks, attns, "upsample", us)
        self.up = nnx.List(up)

        self.norm_out = group_norm(cin, rngs, dtype)
        self.conv_out = factory.conv("conv_out", cin, out_ch, 3, padding=1, rngs=rngs)

    def __call__(self, x, t, carry=None, *, dropout_rng=None, mixer: Mixer | None = None,
                 features: dict | None = None):
        """Predicts ε.

        Args:
          x: (B, R, R, C) noisy images x_t. t: (B,) timesteps.
          carry: cross-timestep state, passed to ``mixer``; returned unchanged when mixer is None.
          dropout_rng: key enabling dropout (training); None = no dropout.
          mixer: TBS hook, see ``Mixer``.
          features: optional dict filled with every tap point's output (after mixing), keyed
            by name: ``conv_in``, ``down.{i}.block.{j}`` (after its attention, if any),
            ``down.{i}.downsample``, ``{block}.conv2`` (the conv2 output of every ResnetBlock,
            before the residual add; BiDM's CIFAR code hooks ``down.3.block.1.conv2`` and
            ``mid.block_2.conv2``), ``mid.block_2``, ``up.{i}.block.{j}`` (the ResnetBlock
            output), ``up.{i}.attn.{j}`` and ``up.{i}.upsample``. Used by distillation.
        Returns:
          (eps (B, R, R, out_ch), carry).
        """
        with timestep_context(t):
            return self._forward(x, t, carry, dropout_rng, mixer, features)

    def _forward(self, x, t, carry, dropout_rng, mixer, features):
        hooks = ForwardHooks(t, carry, dropout_rng, mixer, features)
        rng, tap = hooks.rng, hooks.tap

        def conv2_tap(block_name):
            return lambda h: tap(f"{block_name}.conv2", h)

        temb = self.temb.dense[1](swish(self.temb.dense[0](timestep_embedding(t, self.ch))))
        hs = [tap("conv_in", self.conv_in(x))]
        for i, level in enumerate(self.down):
            for j in range(self.num_res_blocks):
                h = level.block[j](hs[-1], temb, rng(), conv2_tap(f"down.{i}.block.{j}"))
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(tap(f"down.{i}.block.{j}", h))
            if level.downsample is not None:
                hs.append(tap(f"down.{i}.downsample", level.downsample(hs[-1])))
        h = self.mid.block_1(hs[-1], temb, rng(), conv2_tap("mid.block_1"))
        h = self.mid.attn_1(h)
        h = tap("mid.block_2", self.mid.block_2(h, temb, rng(), conv2_tap("mid.block_2")))
        for i in reversed(range(self.num_levels)):
            level = self.up[i]
            for j in range(self.num_res_blocks + 1):
                h = level.block[j](jnp.concatenate([h, hs.pop()], axis=-1), temb, rng(),
                                   conv2_tap(f"up.{i}.block.{j}"))
                h = tap(f"up.{i}.block.{j}", h)
                if len(level.attn):
                    h = tap(f"up.{i}.attn.{j}", level.attn[j](h))
            if level.upsample is not None:
                h = tap(f"up.{i}.upsample", level.upsample(h))
        h = self.conv_out(swish(self.norm_out(h)))
        return h, hooks.carry
