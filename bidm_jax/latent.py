"""Training and sampling in a first stage's latent space (LatentDiffusion; docs/ldm.md).

* :func:`batch_source`: the training batches: images (encoded in the step) or, with
  ``first_stage.latents``, a cached latent dataset's moments (:mod:`bidm_jax.data.latents`),
  both through the deterministic :class:`~bidm_jax.data.pipeline.BatchSource`;
* :func:`attach`: gives a :class:`~bidm_jax.build.Trainable` its ``prepare`` (batch ->
  latents, inside the jitted step and the calibration) and ``frozen`` values (the first
  stage's, passed to the step as arguments), and its ``decode`` for the end-of-run samples;
* :func:`sampling_decoder`: (decode, values) for ``--mode sample``.

The key of the KL posterior sample is the step key folded with
``training.loop.ENCODE_FOLD``, apart from the keys of the loss (timesteps, noise, dropout).
"""
from __future__ import annotations

import dataclasses

import jax

from bidm_jax import first_stage as fs_lib
from bidm_jax.data import latents as cache_lib


def cache_want(config, fs: fs_lib.FirstStage) -> dict:
    """What a cache for ``config`` must have been written from (count unknown: 0)."""
    return cache_lib.describe(config, fs, 0)


def batch_source(config, fs: fs_lib.FirstStage | None = None):
    """This process's batches: images in [-1, 1], or a latent cache's moments (checked
    against the config and ``fs``)."""
    from bidm_jax.training.loop import batch_source as image_batches

    if not (fs_lib.enabled(config) and config.first_stage.latents):
        return image_batches(config)
    from bidm_jax.data.pipeline import BatchSource

    fs = fs if fs is not None else fs_lib.load(config)
    cache = cache_lib.LatentCache.open(config.first_stage.latents, cache_want(config, fs))
    return BatchSource(cache, config.train.batch_size, config.seed, config.data.random_flip,
                       jax.process_index(), jax.process_count())


def prepare_fn(config, fs: fs_lib.FirstStage):
    """(prepare(frozen, batch, key) -> latents, frozen values): on-the-fly encoding of an
    image batch, or the draw from a cache's moments (which needs only the scale factor)."""
    if config.first_stage.latents:
        frozen = {"scale_factor": fs.values["scale_factor"]}
        return (lambda v, m, key: fs.latents(v["scale_factor"], m, key)), frozen
    return fs.encode, dict(fs.values)


def attach(trainable, config, fs: fs_lib.FirstStage | None = None):
    """``trainable`` (a :class:`~bidm_jax.build.Trainable`) training on latents of
    ``config.first_stage``; unchanged in pixel space."""
    if not fs_lib.enabled(config):
        return trainable
    fs = fs if fs is not None else fs_lib.load(config)
    prepare, frozen = prepare_fn(config, fs)
    info = dict(trainable.info)
    if trainable.info_file:
        info["first_stage"] = {"kind": fs.kind, "sha256": fs.digest,
                               "scale_factor": float(fs.config.scale_factor),
                               "latents": config.first_stage.latents or "on the fly"}
    return dataclasses.replace(trainable, prepare=prepare, frozen=frozen, decode=fs.decode,
                               decode_values=dict(fs.values), info=info)


def sampling_decoder(config):
    """(decode(values, z) -> images, the first stage's values), or (None, None) in pixel
    space."""
    if not fs_lib.enabled(config):
        return None, None
    fs = fs_lib.load(config)
    return fs.decode, dict(fs.values)
