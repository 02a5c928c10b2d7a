"""The LDM first-stage autoencoders, full precision (methods.md §1.3): VQ-f4 (LDM-4, 64x64x3
latents of 256x256 images) and KL-f8 (LDM-8, 32x32x4 latents).

Sources: CompVis/latent-diffusion ``ldm/modules/diffusionmodules/model.py`` (Encoder,
Decoder), ``ldm/models/autoencoder.py`` (VQModelInterface, AutoencoderKL),
``ldm/modules/distributions/distributions.py`` (DiagonalGaussianDistribution) and taming's
VectorQuantizer (nearest-codebook lookup). The Encoder/Decoder blocks are those of the DDIM
UNet (``models.ddim_unet``: GroupNorm eps 1e-6, swish, single-head attention, asymmetric-pad
downsample) without a time embedding. Parameter paths are the state-dict names under
``first_stage_model.`` (``encoder.down.0.block.1.conv2``, ``quantize.embedding``, ...).
Images and latents are NHWC; images in [-1, 1].

Sizes (exact): VQ-f4 55,322,782 parameters (codebook 8192 x 3 included); KL-f8 83,653,863.
The papers never quantize these models, so they are built from plain FP layers.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.ddim_unet import (AttnBlock, Downsample, Level, Mid, ResnetBlock,
                                       Upsample, group_norm, swish)
from bidm_jax.models.functional import Aux
from bidm_jax.models.layers import FPFactory


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """An autoencoder's ``ddconfig`` plus its quantizer/posterior settings."""

    kind: str                    # "vq" | "kl"
    ch: int = 128
    ch_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = ()
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 0             # VQ codebook size
    scale_factor: float = 1.0    # LatentDiffusion.scale_factor (the LDM checkpoint's value)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.resolution // self.factor
        return (r, r, self.embed_dim)


# models/first_stage_models/vq-f4/config.yaml and kl-f8/config.yaml
VQ_F4 = AEConfig(kind="vq", ch_mult=(1, 2, 4), z_channels=3, embed_dim=3, n_embed=8192)
KL_F8 = AEConfig(kind="kl", ch_mult=(1, 2, 4, 4), z_channels=4, embed_dim=4)
PRESETS = {"vq-f4": VQ_F4, "kl-f8": KL_F8}


class ScaleFactor(Aux):
    """LatentDiffusion's ``scale_factor`` buffer: latents = scale_factor * z. Auxiliary
    state, so it travels in checkpoints without being counted or trained as a parameter."""


class Encoder(nnx.Module):
    """x (B, R, R, in) -> (B, R/f, R/f, z or 2z channels) (``double_z`` for KL)."""

    def __init__(self, cfg: AEConfig, out_channels: int, factory, rngs: nnx.Rngs):
        ch, mult = cfg.ch, (1,) + tuple(cfg.ch_mult)
        self.conv_in = factory.conv("encoder.conv_in", cfg.in_channels, ch, 3, padding=1,
                                    rngs=rngs)
        res, down = cfg.resolution, []
        for i in range(len(cfg.ch_mult)):
            cin, cout = ch * mult[i], ch * mult[i + 1]
            blocks, attns = _blocks(f"encoder.down.{i}", cin, cout, cfg.num_res_blocks,
                                    res in cfg.attn_resolutions, factory, rngs)
            cin = cout
            ds = None
            if i != len(cfg.ch_mult) - 1:
                ds = Downsample(f"encoder.down.{i}.downsample", cin, factory, rngs)
                res //= 2
            down.append(Level(blocks, attns, "downsample", ds))
        self.down = nnx.List(down)
        self.mid = _mid("encoder", cin, factory, rngs)
        self.norm_out = group_norm(cin, rngs)
        self.conv_out = factory.conv("encoder.conv_out", cin, out_channels, 3, padding=1,
                                     rngs=rngs)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
        h = _run_mid(self.mid, h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nnx.Module):
    """z (B, R/f, R/f, z_channels) -> (B, R, R, out_ch)."""

    def __init__(self, cfg: AEConfig, factory, rngs: nnx.Rngs):
        ch, levels = cfg.ch, len(cfg.ch_mult)
        cin = ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.factor
        self.conv_in = factory.conv("decoder.conv_in", cfg.z_channels, cin, 3, padding=1,
                                    rngs=rngs)
        self.mid = _mid("decoder", cin, factory, rngs)
        up = [None] * levels  # stored by level index (``up.insert(0, ...)``), built bottom-up
        for i in reversed(range(levels)):
            cout = ch * cfg.ch_mult[i]
            blocks, attns = _blocks(f"decoder.up.{i}", cin, cout, cfg.num_res_blocks + 1,
                                    res in cfg.attn_resolutions, factory, rngs)
            cin = cout
            us = None
            if i != 0:
                us = Upsample(f"decoder.up.{i}.upsample", cin, factory, rngs)
                res *= 2
            up[i] = Level(blocks, attns, "upsample", us)
        self.up = nnx.List(up)
        self.norm_out = group_norm(cin, rngs)
        self.conv_out = factory.conv("decoder.conv_out", cin, cfg.out_ch, 3, padding=1,
                                     rngs=rngs)

    def __call__(self, z):
        h = _run_mid(self.mid, self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = _run_level(self.up[i], h)
        return self.conv_out(swish(self.norm_out(h)))


def _blocks(prefix: str, cin: int, cout: int, n: int, attn: bool, factory, rngs):
    """A level's ``n`` ResnetBlocks (no time embedding) cin -> cout, and their attentions."""
    blocks, attns = [], []
    for j in range(n):
        blocks.append(ResnetBlock(f"{prefix}.block.{j}", cin if j == 0 else cout, cout, 0, 0.0,
                                  factory, rngs))
        if attn:
            attns.append(AttnBlock(f"{prefix}.attn.{j}", cout, factory, rngs))
    return blocks, attns


def _mid(prefix: str, c: int, factory, rngs) -> Mid:
    return Mid(ResnetBlock(f"{prefix}.mid.block_1", c, c, 0, 0.0, factory, rngs),
               AttnBlock(f"{prefix}.mid.attn_1", c, factory, rngs),
               ResnetBlock(f"{prefix}.mid.block_2", c, c, 0, 0.0, factory, rngs))


def _run_level(level: Level, h):
    """A level's blocks (each followed by its attention, if any), then its resampler."""
    for j, block in enumerate(level.block):
        h = block(h, None)
        if len(level.attn):
            h = level.attn[j](h)
    resample = level.downsample if level.downsample is not None else level.upsample
    return resample(h) if resample is not None else h


def _run_mid(mid: Mid, h):
    return mid.block_2(mid.attn_1(mid.block_1(h, None)), None)


class VectorQuantizer(nnx.Module):
    """The codebook ``embedding`` (n_embed, embed_dim), as taming's ``quantize.embedding``."""

    def __init__(self, n_embed: int, dim: int, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(n_embed, dim, rngs=rngs)

    def __call__(self, h):
        """h (..., dim) -> the nearest codebook vector (L2), same shape (float32)."""
        e = self.embedding.embedding.get_value().astype(jnp.float32)
        flat = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
        d = (jnp.sum(flat ** 2, 1, keepdims=True) + jnp.sum(e ** 2, 1)[None, :]
             - 2.0 * flat @ e.T)
        return e[jnp.argmin(d, axis=1)].reshape(h.shape)


class _FirstStage(nnx.Module):
    def __init__(self, cfg: AEConfig, enc_out: int, quant_in: int, quant_out: int,
                 factory, rngs: nnx.Rngs):
        self.config = cfg
        self.encoder = Encoder(cfg, enc_out, factory, rngs)
        self.decoder = Decoder(cfg, factory, rngs)
        self.quant_conv = factory.conv("quant_conv", quant_in, quant_out, 1, rngs=rngs)
        self.post_quant_conv = factory.conv("post_quant_conv", cfg.embed_dim, cfg.z_channels,
                                            1, rngs=rngs)
        self.scale_factor = ScaleFactor(jnp.asarray(cfg.scale_factor, jnp.float32))

    def decode_latent(self, z):
        """LatentDiffusion.decode_first_stage: z (B, r, r, embed_dim) diffusion latents ->
        images (B, R, R, out_ch)."""
        return self.decode(z / self.scale_factor.get_value())


class VQModel(_FirstStage):
    """VQModelInterface: ``encode`` = encoder -> quant_conv with no quantization (the LDM is
    trained on these pre-quantization latents); ``decode`` = nearest-codebook lookup ->
    post_quant_conv -> decoder."""

    def __init__(self, cfg: AEConfig = VQ_F4, *, factory=None, rngs: nnx.Rngs):
        factory = factory if factory is not None else FPFactory()
        super().__init__(cfg, cfg.z_channels, cfg.z_channels, cfg.embed_dim, factory, rngs)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, rngs)

    def encode(self, x):
        """x (B, R, R, 3) -> h (B, R/f, R/f, embed_dim), not quantized."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h):
        return self.decoder(self.post_quant_conv(self.quantize(h)))

    def encode_latent(self, x, key=None):
        """get_first_stage_encoding: scale_factor * encode(x) (key unused: deterministic)."""
        return self.scale_factor.get_value() * self.encode(x)


class AutoencoderKL(_FirstStage):
    """AutoencoderKL: the encoder gives 2 z channels -> quant_conv -> (mean, logvar); latents
    are scale_factor * a posterior sample; decode = post_quant_conv -> decoder."""

    def __init__(self, cfg: AEConfig = KL_F8, *, factory=None, rngs: nnx.Rngs):
        factory = factory if factory is not None else FPFactory()
        super().__init__(cfg, 2 * cfg.z_channels, 2 * cfg.z_channels, 2 * cfg.embed_dim,
                         factory, rngs)

    def encode(self, x):
        """x (B, R, R, 3) -> (mean, logvar), each (B, R/f, R/f, embed_dim); logvar clipped
        to [-30, 20] as DiagonalGaussianDistribution does."""
        mean, logvar = jnp.split(self.quant_conv(self.encoder(x)), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    @staticmethod
    def sample(mean, logvar, key):
        """A posterior sample mean + exp(logvar / 2) * N(0, 1)."""
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def encode_latent(self, x, key=None):
        """get_first_stage_encoding: scale_factor * posterior sample (the mean without key)."""
        mean, logvar = self.encode(x)
        z = mean if key is None else self.sample(mean, logvar, key)
        return self.scale_factor.get_value() * z


def build_autoencoder(cfg: AEConfig | str, *, rngs: nnx.Rngs, dtype=None) -> _FirstStage:
    """The autoencoder of ``cfg`` (an :class:`AEConfig` or a preset name: vq-f4, kl-f8)."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"autoencoder {cfg!r} is unknown; valid choices: "
                             f"{', '.join(PRESETS)}")
        cfg = PRESETS[cfg]
    cls = {"vq": VQModel, "kl": AutoencoderKL}.get(cfg.kind)
    if cls is None:
        raise ValueError(f"AEConfig.kind={cfg.kind!r} is invalid; valid choices: vq, kl")
    return cls(cfg, factory=FPFactory(dtype), rngs=rngs)
