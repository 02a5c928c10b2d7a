"""Batched, sharded DDIM/DDPM generation and the sample files.

Outputs ``samples{tag}.npz`` (uint8 NHWC under ``arr_0``, the ADM evaluator's format) and
``grid{tag}.png``. The initial noise of sample i depends only on (seed, i), so every model
sampled with the same seed starts from the same x_T.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax import logs, parallel
from bidm_jax.diffusion import samplers, schedules


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


def generate(sample_fn, values, config, mesh, *, num: int, seed: int, shape) -> np.ndarray:
    """Runs ``sample_fn(values, x_T, rng)`` over ``num`` samples of per-sample ``shape``
    (H, W, C) of x_T in batches of ``config.sample.batch_size`` (padded to a multiple of the
    device count), batch sharded over the mesh. Returns the uint8 images (num, H', W', 3) on
    every process (H' = H unless ``sample_fn`` decodes latents)."""
    n_dev = mesh.devices.size
    bs = -(-config.sample.batch_size // n_dev) * n_dev
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(sample_fn, in_shardings=(repl, shard, repl), out_shardings=repl)
    out = []
    for start in range(0, num, bs):
        count = min(bs, num - start)
        x_T = initial_noise(seed, start, bs, tuple(shape))  # pad the last batch, drop later
        rng = jax.random.fold_in(jax.random.key(seed + 1), start)
        x_T = jax.make_array_from_callback(x_T.shape, shard, lambda idx: x_T[idx])
        imgs = fn(values, x_T, rng)
        out.append(np.asarray(imgs.addressable_data(0))[:count])
    return np.concatenate(out)


def write_samples(directory: str, images: np.ndarray, grid_size: int, tag: str = "") -> str:
    """Writes ``samples{tag}.npz`` (arr_0) and ``grid{tag}.png``; returns the npz path."""
    if jax.process_index() != 0:
        return ""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"samples{tag}.npz")
    np.savez(path, arr_0=images)
    upscale = max(1, 64 // images.shape[1])
    logs.save_png(os.path.join(directory, f"grid{tag}.png"),
                  logs.image_grid(images[:grid_size]), upscale=upscale)
    return path
