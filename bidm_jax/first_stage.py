"""The frozen first-stage autoencoder of a latent diffusion model (``first_stage`` config
section; methods.md §1.3; docs/ldm.md).

LatentDiffusion trains and samples in the autoencoder's latent space:

* VQ-f4 (LDM-4): latent = scale_factor · quant_conv(encoder(x)), *not* quantized; decoding
  looks up the nearest codebook vector first (``VQModelInterface.decode``);
* KL-f8 (LDM-8): latent = scale_factor · (mean + exp(logvar/2)·N(0, 1)), a fresh posterior
  sample each time an image is encoded (``get_first_stage_encoding``).

Both are split into *moments* (what an image determines: VQ ``h``, KL ``[mean | logvar]``
on the channel axis) and the draw from them (:meth:`FirstStage.latents`), so a cached latent
dataset (:mod:`bidm_jax.data.latents`) stores the moments once and the training step still
draws a new KL sample per step. Every function here is pure with the autoencoder's values
(parameters and ``scale_factor``) as an argument, so a jitted step receives them as
arguments instead of baking 55–84 M weights into the program as constants.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("", "vq-f4", "kl-f8")
CACHE_DTYPES = ("float16", "float32")
HOW_TO_GET = ("convert the official checkpoint with `python -m bidm_jax.convert.ldm "
              "--checkpoint models/ldm/lsun_beds256/model.ckpt --out checkpoints/lsun_beds256` "
              "(or a standalone models/first_stage_models/{vq-f4,kl-f8}/model.ckpt) and pass "
              "--config.first_stage.path=<out>/first_stage (docs/ldm.md)")


def enabled(config) -> bool:
    return bool(config.first_stage.kind)


def _meta(path: str) -> dict | None:
    """meta.json of a converted first_stage/ dir, or None when there is none."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        from bidm_jax import errors
        raise errors.CorruptFile(f"{path}/meta.json is unreadable: {errors.one_line(e)}") \
            from None


def ae_config(config):
    """The :class:`~bidm_jax.models.autoencoder.AEConfig` of ``config.first_stage``: the
    converted checkpoint's (its meta.json, when ``path`` has one) or the kind's preset with
    the overrides; ``resolution`` = ``data.image_size``; ``scale_factor`` resolved."""
    from bidm_jax.models.autoencoder import PRESETS, AEConfig

    a = config.first_stage
    cfg = PRESETS[a.kind]
    meta = _meta(a.path) if a.path and not a.random_init else None
    if meta is not None:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
        cfg = dataclasses.replace(AEConfig(**fields), scale_factor=float(meta["scale_factor"]))
    over = {k: (tuple(a[k]) if k == "ch_mult" else int(a[k]))
            for k in ("ch", "ch_mult", "num_res_blocks", "n_embed") if a[k]}
    cfg = dataclasses.replace(cfg, resolution=int(config.data.image_size), **over)
    if a.scale_factor > 0:
        cfg = dataclasses.replace(cfg, scale_factor=float(a.scale_factor))
    return cfg


def validate(config) -> None:
    """The ``first_stage`` section and its fit with ``model`` and ``data`` (ValueError)."""
    a = config.first_stage
    if a.kind not in KINDS:
        raise ValueError(f"first_stage.kind={a.kind!r} is invalid; valid choices: '' (pixel "
                         "space), vq-f4, kl-f8")
    if a.cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"first_stage.cache_dtype={a.cache_dtype!r} is invalid; valid "
                         f"choices: {', '.join(CACHE_DTYPES)}")
    if a.encode_batch_size < 1:
        raise ValueError(f"first_stage.encode_batch_size={a.encode_batch_size} must be >= 1")
    if not (a.scale_factor == -1 or a.scale_factor > 0):
        raise ValueError(f"first_stage.scale_factor={a.scale_factor} must be -1 (the "
                         "checkpoint's) or > 0")
    overrides = [k for k in ("ch", "ch_mult", "num_res_blocks", "n_embed") if a[k]]
    if overrides and not a.random_init:
        raise ValueError(f"first_stage.{overrides[0]} overrides the autoencoder's architecture, "
                         "which only a random-weight test model may do (first_stage."
                         "random_init=True); a converted checkpoint brings its own")
    if not a.kind:
        if a.random_init or a.path or a.latents:
            raise ValueError("first_stage.path / random_init / latents are set but "
                             "first_stage.kind is '' (pixel space); set kind to vq-f4 or kl-f8")
        return
    if a.random_init and a.path:
        raise ValueError(f"first_stage.random_init=True and first_stage.path={a.path!r} "
                         "both given: random weights are for tests only; drop one")
    cfg = ae_config(config)
    if cfg.kind != {"vq-f4": "vq", "kl-f8": "kl"}[a.kind]:
        raise ValueError(f"first_stage.path={a.path!r} holds a {cfg.kind.upper()} autoencoder "
                         f"but first_stage.kind={a.kind!r}")
    size = int(config.data.image_size)
    if size % cfg.factor:
        raise ValueError(f"data.image_size={size} is not divisible by the autoencoder's "
                         f"downsampling factor {cfg.factor} ({a.kind})")
    from bidm_jax.models import get_family

    want = tuple(get_family(config.model.name).input_shape(config))
    if tuple(cfg.latent_shape) != want:
        r = size // cfg.factor
        raise ValueError(
            f"the {a.kind} autoencoder turns data.image_size={size} images into "
            f"{cfg.latent_shape} latents, but model {config.model.name} takes {want} "
            f"(model.resolution={config.model.resolution}, model.in_channels="
            f"{config.model.in_channels}); set data.image_size={want[0] * cfg.factor} or "
            f"model.resolution={r} and model.in_channels={cfg.embed_dim}")


def require(config, mode: str) -> None:
    """A latent family needs its first stage to train, distil, sample or encode: raises a
    ValueError saying how to get one when ``first_stage`` is unset or has no weights."""
    a = config.first_stage
    if not a.kind:
        if config.model.name == "ldm_unet":
            raise ValueError(f"--mode {mode} with model.name='ldm_unet' works on latents: set "
                             "first_stage.kind (vq-f4 | kl-f8) and first_stage.path; "
                             + HOW_TO_GET)
        return
    if a.random_init:
        return
    if not a.path:
        raise ValueError(f"first_stage.kind={a.kind!r} needs its weights: first_stage.path is "
                         "empty; " + HOW_TO_GET)
    if not os.path.isfile(os.path.join(a.path, "meta.json")):
        raise FileNotFoundError(f"no converted first stage at first_stage.path={a.path!r} "
                                "(no meta.json); " + HOW_TO_GET)


@dataclasses.dataclass
class FirstStage:
    """A loaded autoencoder: ``values`` (parameters + ``scale_factor``, numpy) and pure
    functions of them. ``digest``: sha256 of its parameters (a cache records it)."""

    fm: object                  # models.functional.Functional
    values: dict
    config: object              # AEConfig
    kind: str                   # "vq-f4" | "kl-f8"
    digest: str

    @property
    def latent_shape(self) -> tuple:
        return tuple(self.config.latent_shape)

    @property
    def moment_channels(self) -> int:
        """Channels of the moments: VQ embed_dim, KL 2·embed_dim (mean, logvar)."""
        return self.config.embed_dim * (2 if self.config.kind == "kl" else 1)

    def moments(self, values, images):
        """images (B, R, R, 3) in [-1, 1] -> moments (B, r, r, C_m), float32."""
        module = self.fm.module(values)
        images = images.astype(jnp.float32)
        if self.config.kind == "vq":
            return module.encode(images).astype(jnp.float32)
        mean, logvar = module.encode(images)
        return jnp.concatenate([mean, logvar], axis=-1).astype(jnp.float32)

    def latents(self, scale, moments, key):
        """The diffusion latents (B, r, r, embed_dim) from moments: VQ scale·h; KL
        scale·(mean + exp(logvar/2)·ε) with ε from ``key``."""
        moments = moments.astype(jnp.float32)
        if self.config.kind == "vq":
            return scale * moments
        mean, logvar = jnp.split(moments, 2, axis=-1)
        logvar = jnp.clip(logvar, -30.0, 20.0)
        return scale * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape))

    def encode(self, values, images, key):
        """images (B, R, R, 3) in [-1, 1] -> latents (B, r, r, embed_dim)."""
        return self.latents(values["scale_factor"], self.moments(values, images), key)

    def decode(self, values, z):
        """latents (B, r, r, embed_dim) -> images (B, R, R, 3), about [-1, 1] (unclipped);
        VQ looks up the nearest codebook vector first."""
        return self.fm.module(values).decode_latent(z.astype(jnp.float32))


def load(config, seed: int | None = None) -> FirstStage:
    """The first stage of ``config``: the converted checkpoint at ``first_stage.path``, or
    random weights (``first_stage.random_init``, seed ``config.seed``), with
    ``first_stage.scale_factor`` applied when > 0."""
    from flax import nnx

    from bidm_jax.convert.ldm import load_first_stage, params_digest
    from bidm_jax.models.autoencoder import build_autoencoder
    from bidm_jax.models.functional import Functional

    require(config, "encode")
    a = config.first_stage
    cfg = ae_config(config)
    if a.random_init:
        module = build_autoencoder(cfg, rngs=nnx.Rngs(config.seed if seed is None else seed))
        fm = Functional(module)
        digest = "random:" + params_digest(fm.params)
    else:
        meta = _meta(a.path)
        fm = Functional(load_first_stage(a.path))
        digest = meta.get("params_sha256") or params_digest(fm.params)
    values = {**{k: np.asarray(v) for k, v in fm.params.items()},
              "scale_factor": np.asarray(cfg.scale_factor, np.float32)}
    return FirstStage(fm, values, cfg, a.kind, digest)
