"""``--mode encode_latents``: a latent model's training data encoded once by its frozen first
stage, into ``first_stage.latents`` (default ``{workdir}/latents``; format:
:mod:`bidm_jax.data.latents`).

    python -m bidm_jax.main --config configs/lsun_bedrooms_ldm4_bidm.py --workdir runs/beds \
        --mode encode_latents --config.first_stage.latents=data/lsun_beds_vqf4_latents

Then train or distil with the same ``--config.first_stage.latents``. Images are read in
dataset order (the file list's, else sorted paths), ``first_stage.encode_batch_size`` per
encoder call over this process's devices; with ``data.random_flip`` each image's mirror is
encoded too. The cache records how far it got after every few batches: an interrupted run
continues where it stopped; a finished cache of the same data and first stage is left as is;
any other cache in the way is refused, never overwritten. One process (all its devices).
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging

from bidm_jax import first_stage, parallel
from bidm_jax.data import latents as cache_lib
from bidm_jax.data.pipeline import load_images, to_float

SAVE_EVERY = 16  # batches between progress records


def output_dir(config, workdir: str) -> str:
    return config.first_stage.latents or os.path.join(workdir, "latents")


def _open(directory: str, want: dict):
    """(array, first row to write) of a new or resumable cache; refuses any other one."""
    meta = cache_lib.read_meta(directory)
    if meta is None:
        return cache_lib.create(directory, want), 0
    bad = cache_lib.mismatch(meta, want) or (
        None if meta.get("shape") == want["shape"] and meta.get("dtype") == want["dtype"]
        else f"shape/dtype: cache {meta.get('shape')} {meta.get('dtype')}, config "
             f"{want['shape']} {want['dtype']}")
    if bad:
        raise ValueError(f"{directory} already holds another latent cache ({bad}); pass another "
                         "first_stage.latents or delete it")
    if meta.get("complete"):
        return None, int(meta["shape"][0])
    return cache_lib.reopen(directory), int(meta.get("done", 0))


def run_encode_latents(config, workdir: str) -> dict:
    """Writes (or finishes) the cache; returns {path, images, seconds}."""
    if not first_stage.enabled(config):
        raise ValueError("--mode encode_latents needs a first stage: set first_stage.kind "
                         "(vq-f4 | kl-f8) and first_stage.path")
    if jax.process_count() > 1:
        raise ValueError("--mode encode_latents runs on one process (all of its devices); "
                         "start it without the multi-process settings")
    first_stage.require(config, "encode_latents")
    directory = output_dir(config, workdir)
    source = load_images(config.data)  # fails on missing data before any device work
    fs = first_stage.load(config)
    want = cache_lib.describe(config, fs, len(source))
    array, start = _open(directory, want)
    total = len(source)
    if array is None:
        logging.info("%s already holds the %d encoded images; nothing to do", directory, total)
        return {"path": directory, "images": total, "seconds": 0.0}

    mesh = parallel.make_data_mesh(config.mesh.data)
    n_dev = mesh.devices.size
    bs = -(-int(config.first_stage.encode_batch_size) // n_dev) * n_dev
    flips = want["flips"]
    repl, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    moments = jax.jit(lambda v, x: fs.moments(v, x).astype(config.first_stage.cache_dtype),
                      in_shardings=(repl, shard), out_shardings=repl)
    values = parallel.place(fs.values, repl)
    meta = dict(want, done=start)
    t0, done = time.time(), start
    take = (lambda idx: source[idx]) if isinstance(source, np.ndarray) else source.take
    for k, lo in enumerate(range(start, total, bs)):
        hi = min(lo + bs, total)
        x = to_float(take(np.arange(lo, hi)))
        if len(x) < bs:  # pad the last batch to the compiled shape
            x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
        for f in range(flips):
            xf = x[:, :, ::-1] if f else x
            out = moments(values, jax.device_put(np.ascontiguousarray(xf), shard))
            array[lo:hi, f] = np.asarray(out.addressable_data(0))[:hi - lo]
        done = hi
        if (k + 1) % SAVE_EVERY == 0 or done == total:
            array.flush()  # the rows before the record that counts them
            cache_lib.write_meta(directory, dict(meta, done=done, complete=done == total))
            rate = (done - start) / max(time.time() - t0, 1e-9)
            logging.info("encoded %d/%d images (%.1f images/s)", done, total, rate)
    array.flush()
    cache_lib.write_meta(directory, dict(meta, done=total, complete=True))
    seconds = time.time() - t0
    logging.info("wrote %s: %d images of %s, moments %s %s", directory, total,
                 config.data.dataset, tuple(want["shape"][1:]), want["dtype"])
    return {"path": directory, "images": total, "seconds": seconds}
