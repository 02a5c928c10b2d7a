"""The CompVis latent-diffusion UNet (``ldm/modules/diffusionmodules/openaimodel.py``
``UNetModel``, unconditional; methods.md §1.2) in NNX, NHWC.

Module paths equal the official state-dict names under ``model.diffusion_model.``:
``time_embed.{0,2}``, ``input_blocks.{i}.{j}...``, ``middle_block.{0,1,2}...``,
``output_blocks.{i}.{j}...``, ``out.{0,2}``. Each ``input_blocks.i`` / ``middle_block`` /
``output_blocks.i`` is one TimestepEmbedSequential; its output is a tap point of the same
name (25 for LDM-4, 31 for LDM-8), which is where BiDM mixes and distils (§2.5, §2.6).

Paper configs: LDM-4 (VQ-f4 latents 64x64x3; ch 224, mult 1-2-3-4, attention at 32/16/8
px, 32 channels per head) has 274,056,163 parameters; LDM-8 (KL-f8 latents 32x32x4; ch 192,
mult 1-2-2-4-4, attention at 32/16/8/4 px, 8 heads, scale-shift norm, resblock up/down)
has 294,966,916. CompVis's ``attention_resolutions`` are downsample factors ds; here
``attn_resolutions`` are feature resolutions (resolution / ds), as for the DDIM family.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.ddim_unet import ForwardHooks
from bidm_jax.models.functional import timestep_context
from bidm_jax.models.layers import FPFactory
from bidm_jax.models.ldm_blocks import (AttentionBlock, Downsample, ResBlock, Upsample,
                                        group_norm32, norm, timestep_embedding, zero_init)


def num_heads_for(ch: int, num_heads: int, num_head_channels: int) -> int:
    """Heads of an attention block on ``ch`` channels: ch / num_head_channels when that is
    set (> 0), else num_heads (openaimodel; the legacy path never changes this count)."""
    if num_head_channels > 0:
        if ch % num_head_channels:
            raise ValueError(f"{ch} channels are not a multiple of "
                             f"model.num_head_channels={num_head_channels}")
        return ch // num_head_channels
    if num_heads < 1:
        raise ValueError("set model.num_heads >= 1 or model.num_head_channels >= 1")
    return num_heads


class LDMUNet(nnx.Module):
    """openaimodel ``UNetModel``. Shapes: x (B, R, R, in_channels) -> eps (B, R, R, out_ch)."""

    def __init__(self, *, ch: int = 224, ch_mult=(1, 2, 3, 4), num_res_blocks: int = 2,
                 attn_resolutions=(32, 16, 8), dropout: float = 0.0, in_channels: int = 3,
                 out_ch: int = 3, resolution: int = 64, num_heads: int = -1,
                 num_head_channels: int = 32, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False, resamp_with_conv: bool = True,
                 factory=None, dtype=None, rngs: nnx.Rngs):
        if not resamp_with_conv:
            raise ValueError("model.resamp_with_conv=False (pooling/conv-free resampling) is "
                             "not supported: every LDM config uses conv_resample=True")
        factory = factory if factory is not None else FPFactory(dtype)
        self.ch, self.num_res_blocks, self.num_levels = ch, num_res_blocks, len(ch_mult)
        emb_ch = 4 * ch
        self.time_embed = nnx.List([factory.dense("time_embed.0", ch, emb_ch, rngs=rngs), None,
                                    factory.dense("time_embed.2", emb_ch, emb_ch, rngs=rngs)])
        attn_res = set(attn_resolutions)

        def res_block(path, cin, cout, updown=None):
            return ResBlock(path, cin, cout, emb_ch, dropout, factory, rngs,
                            scale_shift=use_scale_shift_norm, updown=updown)

        def attn_block(path, c):
            return AttentionBlock(path, c, num_heads_for(c, num_heads, num_head_channels),
                                  factory, rngs)

        blocks = [[factory.conv("input_blocks.0.0", in_channels, ch, 3, padding=1, rngs=rngs)]]
        skip_chans, c, res = [ch], ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                path = f"input_blocks.{len(blocks)}"
                layers = [res_block(f"{path}.0", c, ch * mult)]
                c = ch * mult
                if res in attn_res:
                    layers.append(attn_block(f"{path}.1", c))
                blocks.append(layers)
                skip_chans.append(c)
            if level != len(ch_mult) - 1:
                path = f"input_blocks.{len(blocks)}.0"
                blocks.append([res_block(path, c, c, "down") if resblock_updown
                               else Downsample(path, c, factory, rngs)])
                skip_chans.append(c)
                res //= 2
        self.input_blocks = nnx.List([nnx.List(b) for b in blocks])

        self.middle_block = nnx.List([res_block("middle_block.0", c, c),
                                      attn_block("middle_block.1", c),
                                      res_block("middle_block.2", c, c)])

        blocks = []
        for level, mult in reversed(list(enumerate(ch_mult))):
            for i in range(num_res_blocks + 1):
                path = f"output_blocks.{len(blocks)}"
                layers = [res_block(f"{path}.0", c + skip_chans.pop(), ch * mult)]
                c = ch * mult
                if res in attn_res:
                    layers.append(attn_block(f"{path}.{len(layers)}", c))
                if level and i == num_res_blocks:
                    up = f"{path}.{len(layers)}"
                    layers.append(res_block(up, c, c, "up") if resblock_updown
                                  else Upsample(up, c, factory, rngs))
                    res *= 2
                blocks.append(layers)
        self.output_blocks = nnx.List([nnx.List(b) for b in blocks])

        out_conv = factory.conv("out.2", ch, out_ch, 3, padding=1, rngs=rngs)
        zero_init(out_conv)
        self.out = nnx.List([group_norm32(ch, rngs), None, out_conv])

    @property
    def num_input_blocks(self) -> int:
        return len(self.input_blocks)

    @property
    def num_output_blocks(self) -> int:
        return len(self.output_blocks)

    def __call__(self, x, t, carry=None, *, dropout_rng=None, mixer=None,
                 features: dict | None = None):
        """Predicts eps.

        Args:
          x: (B, R, R, C) noisy latents x_t. t: (B,) timesteps (int or float).
          carry: cross-timestep state passed to ``mixer``; returned unchanged without one.
          dropout_rng: key enabling dropout (training); None = no dropout.
          mixer: TBS hook ``mixer(name, h, carry, t) -> (h, carry)`` (models.ddim_unet.Mixer).
          features: optional dict filled with every tap point's output (after mixing):
            ``input_blocks.{i}``, ``middle_block``, ``output_blocks.{i}`` (the
            TimestepEmbedSequential outputs, in execution order).
        Returns:
          (eps (B, R, R, out_ch), carry).
        """
        with timestep_context(t):
            return self._forward(x, t, carry, dropout_rng, mixer, features)

    @staticmethod
    def _run_block(layers, h, emb, rng):
        """TimestepEmbedSequential: ResBlocks take the embedding, every other layer only h."""
        for layer in layers:
            h = layer(h, emb, rng()) if isinstance(layer, ResBlock) else layer(h)
        return h

    def _forward(self, x, t, carry, dropout_rng, mixer, features):
        hooks = ForwardHooks(t, carry, dropout_rng, mixer, features)
        rng, tap = hooks.rng, hooks.tap
        emb = self.time_embed[2](jax.nn.silu(self.time_embed[0](timestep_embedding(t, self.ch))))
        hs, h = [], x
        for i, layers in enumerate(self.input_blocks):
            h = tap(f"input_blocks.{i}", self._run_block(layers, h, emb, rng))
            hs.append(h)
        h = tap("middle_block", self._run_block(self.middle_block, h, emb, rng))
        for i, layers in enumerate(self.output_blocks):
            h = jnp.concatenate([h, hs.pop()], axis=-1)
            h = tap(f"output_blocks.{i}", self._run_block(layers, h, emb, rng))
        h = self.out[2](jax.nn.silu(norm(self.out[0], h)))
        return h, hooks.carry
