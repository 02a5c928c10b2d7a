"""Batched, sharded DDIM/DDPM generation and the sample files.

Outputs ``samples{tag}.npz`` (uint8 NHWC under ``arr_0``, the ADM evaluator's format) and
``grid{tag}.png``: from images in memory (:func:`generate` + :func:`write_samples`, small
sets), or streamed batch by batch to shards and assembled, resumable after a kill
(:func:`generate_to_files`, ``--mode sample``). The initial noise of sample i depends only on
(seed, i), so every model sampled with the same seed starts from the same x_T.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bidm_jax import parallel
from bidm_jax.diffusion import sample_files, samplers, schedules


def initial_noise(seed: int, start: int, count: int, shape) -> np.ndarray:
    """x_T for samples start..start+count-1: (count, *shape) float32, one key per sample."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        jnp.arange(start, start + count))
    return np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys))


def make_sampler(model_fn, config, carry_init=None, decode=None):
    """Returns ``sample(values, x_T, rng) -> uint8 images`` for the configured sampler.

    model_fn(values, x, t, carry) -> (eps, carry) with ``values`` the model's parameters and
    auxiliary state (one flat dict); carry_init(x) -> initial carry. With ``decode`` (a
    latent model's first stage, ``decode(decoder_values, z) -> images``) ``values`` is the
    pair (model values, decoder values) and each batch of latents is decoded inside the same
    jitted call, so no latent outlives its batch. The uint8 conversion follows
    ``diffusion.timestep_convention`` (:func:`~bidm_jax.diffusion.samplers.to_uint8`).
    """
    dcfg = config.diffusion
    abar = schedules.from_config(dcfg)

    def sample(values, x_T, rng):
        model_values, dec_values = values if decode is not None else (values, None)
        fn = lambda x, t, c: model_fn(model_values, x, t, c)
        carry = carry_init(x_T) if carry_init is not None else None
        if dcfg.sampler == "ddim":
            x0, _ = samplers.ddim_sample(fn, x_T, abar, steps=dcfg.sample_steps, eta=dcfg.eta,
                                         convention=dcfg.timestep_convention, carry=carry, rng=rng)
        else:
            x0, _ = samplers.ddpm_sample(fn, x_T, abar, steps=dcfg.sample_steps,
                                         var_type=dcfg.var_type, clip_x0=dcfg.clip_x0,
                                         carry=carry, rng=rng)
        if decode is not None:
            x0 = decode(dec_values, x0)
        return samplers.to_uint8(x0, dcfg.timestep_convention)

    return sample


def _batched(sample_fn, config, mesh, seed: int, shape):
    """(global batch size, ``run(values, start) -> uint8 images of samples start..start+bs``
    on every process): x_T of sample i from (seed, i), the sampler's key from (seed + 1,
    start); jitted once, batch sharded over the mesh, the output replicated."""
    n_dev = mesh.devices.size
    bs = -(-config.sample.batch_size // n_dev) * n_dev
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(sample_fn, in_shardings=(repl, shard, repl), out_shardings=repl)

    def run(values, start: int) -> np.ndarray:
        x_T = initial_noise(seed, start, bs, tuple(shape))  # the last batch is padded
        rng = jax.random.fold_in(jax.random.key(seed + 1), start)
        x_T = jax.make_array_from_callback(x_T.shape, shard, lambda idx: x_T[idx])
        return np.asarray(fn(values, x_T, rng).addressable_data(0))

    return bs, run


def generate(sample_fn, values, config, mesh, *, num: int, seed: int, shape) -> np.ndarray:
    """Runs ``sample_fn(values, x_T, rng)`` over ``num`` samples of per-sample ``shape``
    (H, W, C) of x_T in batches of ``config.sample.batch_size`` (padded to a multiple of the
    device count), batch sharded over the mesh. Returns the uint8 images (num, H', W', 3) on
    every process (H' = H unless ``sample_fn`` decodes latents). Holds all of them: for small
    sets (grids, end-of-training samples); large runs use :func:`generate_to_files`."""
    bs, run = _batched(sample_fn, config, mesh, seed, shape)
    return np.concatenate([run(values, start)[:min(bs, num - start)]
                           for start in range(0, num, bs)])


def _agree(mask: np.ndarray) -> np.ndarray:
    """Process 0's ``mask`` on every process (only it sees the parts folder, so all must
    skip the same batches: each batch is a collective)."""
    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask)).astype(bool)


def generate_to_files(sample_fn, values, config, mesh, *, num: int, seed: int, shape,
                      directory: str, tag: str = "", plan: dict | None = None) -> str:
    """:func:`generate` streamed to disk: each batch is saved as a shard as it comes
    (process 0), the shards are then assembled into ``samples{_tag}.npz`` and
    ``grid{_tag}.png`` (:mod:`~bidm_jax.diffusion.sample_files`). Host memory: one batch.
    Started again after a kill with the same ``plan`` (what identifies the model and the
    sampler, beside seed, shape and batch), finished batches are skipped. Returns the npz
    path ('' on other processes); the images equal :func:`generate`'s."""
    bs, run = _batched(sample_fn, config, mesh, seed, shape)
    batches = [(start, min(bs, num - start)) for start in range(0, num, bs)]
    primary = jax.process_index() == 0
    store = None
    if primary:
        full_plan = {"seed": seed, "shape": list(shape), "batch_size": bs, **(plan or {})}
        store = sample_files.ShardStore(directory, tag, full_plan)
    done = _agree(np.array([store.has(*b) for b in batches] if primary
                           else [False] * len(batches), bool))
    if done.any():
        logging.info("resuming: %d of %d batches are already in %s", int(done.sum()),
                     len(batches), store.parts if primary else directory)
    t0, made = time.time(), 0
    for (start, count), skip in zip(batches, done):
        if skip:
            continue
        images = run(values, start)[:count]
        if primary:
            store.save(start, images)
        made += count
        logging.info("samples %d-%d of %d (%.1f s)", start, start + count, num,
                     time.time() - t0)
    if not primary:
        return ""
    path = store.assemble(batches, config.sample.grid_size)
    logging.info("assembled %d samples (%d made now) into %s", num, made, path)
    return path


def write_samples(directory: str, images: np.ndarray, grid_size: int, tag: str = "") -> str:
    """Writes ``samples{tag}.npz`` (arr_0) and ``grid{tag}.png`` from images in memory;
    ``tag`` is the file-name suffix as is ('_train'). Returns the npz path."""
    if jax.process_index() != 0:
        return ""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"samples{tag}.npz")
    np.savez(path, arr_0=images)
    sample_files.write_grid(directory, images[:grid_size], tag)
    return path
