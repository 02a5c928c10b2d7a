"""Sampling: batched, sharded DDIM/DDPM generation and ``--mode sample``.

Outputs ``{workdir}/samples/samples.npz`` (uint8 NHWC under ``arr_0``, the ADM evaluator's
format) and ``{workdir}/samples/grid.png``. The initial noise of sample i depends only on
(seed, i), so every model sampled with the same seed starts from the same x_T.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bidm_jax import checkpoint, logs, parallel
from bidm_jax.diffusion import samplers, schedules
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional, check_shapes
from flax import nnx


def initial_noise(seed: int, start: int, count: int, shape) -> np.ndarray:
    """x_T for samples start..start+count-1: (count, *shape) float32, one key per sample."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        jnp.arange(start, start + count))
    return np.asarray(jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys))


def make_sampler(model_fn, config, carry_init=None):
    """Returns jitted ``sample(params, x_T, rng) -> uint8 images`` for the configured sampler.

    model_fn(params, x, t, carry) -> (eps, carry); carry_init(x) -> initial carry.
    """
    dcfg = config.diffusion
    abar = schedules.from_config(dcfg)

    def sample(params, x_T, rng):
        fn = lambda x, t, c: model_fn(params, x, t, c)
        carry = carry_init(x_T) if carry_init is not None else None
        if dcfg.sampler == "ddim":
            x0, _ = samplers.ddim_sample(fn, x_T, abar, steps=dcfg.sample_steps, eta=dcfg.eta,
                                         convention=dcfg.timestep_convention, carry=carry, rng=rng)
        else:
            x0, _ = samplers.ddpm_sample(fn, x_T, abar, steps=dcfg.sample_steps,
                                         var_type=dcfg.var_type, clip_x0=dcfg.clip_x0,
                                         carry=carry, rng=rng)
        return samplers.to_uint8(x0)

    return sample


def generate(sample_fn, params, config, mesh, *, num: int, seed: int) -> np.ndarray:
    """Runs ``sample_fn`` over ``num`` samples in batches of ``config.sample.batch_size``
    (padded to a multiple of the device count), batch sharded over the mesh.
    Returns uint8 (num, R, R, C) on every process."""
    res, ch = config.model.resolution, config.model.in_channels
    n_dev = mesh.devices.size
    bs = -(-config.sample.batch_size // n_dev) * n_dev
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    fn = jax.jit(sample_fn, in_shardings=(repl, shard, repl), out_shardings=repl)
    out = []
    for start in range(0, num, bs):
        count = min(bs, num - start)
        x_T = initial_noise(seed, start, bs, (res, res, ch))  # pad the last batch, drop later
        rng = jax.random.fold_in(jax.random.key(seed + 1), start)
        x_T = jax.make_array_from_callback(x_T.shape, shard, lambda idx: x_T[idx])
        imgs = fn(params, x_T, rng)
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


def fp_model_fn(fm: Functional):
    return lambda params, x, t, carry: fm(params, x, t, carry)


def sampling_model(config):
    """(Functional, model_fn, carry_init) of the model a workdir holds: the FP UNet, or, for a
    distillation config (``mode=distill`` or a binary ``quant.method``), the student with its
    TBS carry. Only the graph is built (the values come from the checkpoint), so no teacher
    checkpoint is needed."""
    if config.get("mode") != "distill" and config.quant.method == "fp":
        fm = Functional(nnx.eval_shape(lambda: build_unet(config.model, rngs=nnx.Rngs(0))))
        return fm, fp_model_fn(fm), None
    from bidm_jax.export import student_model

    return student_model(config)


def run_sample(config, workdir: str) -> str:
    """``--mode sample``: loads the latest checkpoint of ``{workdir}/checkpoints`` (EMA weights
    unless sample.use_ema=False) of a teacher or a distilled student and writes samples and a
    grid (``samples/samples.npz``, ``samples/grid.png``). With ``sample.packed`` ('auto' =
    ``{workdir}/export/packed.npz``, or a path) the student comes from a ``--mode export``
    file instead and runs from its 1-bit weights (``export.kernel``; docs/export.md)."""
    mesh = parallel.make_data_mesh(config.mesh.data)
    if config.sample.get("packed"):
        from bidm_jax.export import packed_sampling_model, resolve_packed_path

        source = resolve_packed_path(config, workdir)
        fm, model_fn, carry_init, params = packed_sampling_model(config, source)
        params = jax.device_put(params, parallel.replicated(mesh))
    else:
        source = os.path.join(workdir, "checkpoints")
        if not os.path.isdir(source):
            raise FileNotFoundError(f"no checkpoints under {source}; train first "
                                    "(--mode train or --mode distill)")
        fm, model_fn, carry_init = sampling_model(config)
        params = checkpoint.load_params(source, use_ema=config.sample.use_ema,
                                        sharding=parallel.replicated(mesh))
        check_shapes(fm.shapes(), params, f"checkpoint {source}")
    t0 = time.time()
    sample_fn = make_sampler(model_fn, config, carry_init)
    images = generate(sample_fn, params, config, mesh, num=config.sample.num_samples,
                      seed=config.sample.seed)
    path = write_samples(os.path.join(workdir, "samples"), images, config.sample.grid_size)
    logging.info("wrote %d samples of %s to %s in %.1fs", len(images), source, path,
                 time.time() - t0)
    return path
