"""A cached latent dataset: the first stage's moments of every image, written once by
``--mode encode_latents`` and read by index (a memory map) while training.

Layout of the directory (``first_stage.latents``):

* ``latents.npy``: float16 or float32 (N, F, r, r, C_m): image n's moments
  (:meth:`bidm_jax.first_stage.FirstStage.moments`: VQ ``h``, KL ``[mean | logvar]``), and
  with F = 2 those of its mirror image, so random flips stay exact (an encoder is not
  mirror-equivariant: flipping a latent is not encoding the flipped image);
* ``meta.json``: what the moments are of (:func:`describe`): format, first-stage kind and
  the sha256 of its parameters, dataset, split, path, file list, image size, interpolation,
  flips, dtype, shape, scale_factor (for information: the moments are stored unscaled and
  the training step multiplies by the config's scale factor), ``done`` (rows written) and
  ``complete``.

A cache is refused (:func:`check`) when it was written from another first stage or other
data than the config's, or is incomplete. KL samples are drawn from the moments in the
training step, as LatentDiffusion draws a new posterior sample for every batch.
"""
from __future__ import annotations

import json
import os

import numpy as np

from bidm_jax import errors

FORMAT = 1
ARRAY, META = "latents.npy", "meta.json"
# meta fields that must equal the config's for the cache to stand in for encoding the data
MATCH = ("format", "kind", "first_stage_sha256", "stored", "dataset", "split", "image_size",
         "interpolation", "file_list")


def describe(config, fs, count: int) -> dict:
    """The meta.json of a cache of ``count`` images of ``config.data`` under first stage
    ``fs`` (:class:`bidm_jax.first_stage.FirstStage`), before any row is written."""
    d = config.data
    flips = 2 if d.random_flip else 1
    r = fs.latent_shape[0]
    return {"format": FORMAT, "kind": fs.kind, "first_stage_sha256": fs.digest,
            "first_stage_path": config.first_stage.path,
            "stored": "mean_logvar" if fs.config.kind == "kl" else "pre_quant",
            "scale_factor": float(fs.config.scale_factor),
            "dataset": d.dataset, "split": d.split, "path": d.path,
            "file_list": os.path.basename(d.file_list) if d.file_list else "",
            "image_size": int(d.image_size), "interpolation": d.interpolation,
            "flips": flips, "dtype": config.first_stage.cache_dtype,
            "shape": [int(count), flips, r, r, fs.moment_channels],
            "done": 0, "complete": False}


def read_meta(directory: str) -> dict | None:
    path = os.path.join(directory, META)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise errors.CorruptFile(f"{path} (a latent cache's metadata) is unreadable: "
                                 f"{errors.one_line(e)}") from None


def write_meta(directory: str, meta: dict) -> None:
    tmp = os.path.join(directory, META + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(directory, META))  # a reader never sees half a file


def mismatch(meta: dict, want: dict) -> str | None:
    """The first field (as 'field: cache X, config Y') where a cache differs from ``want``."""
    for k in MATCH:
        if meta.get(k) != want.get(k):
            return f"{k}: cache {meta.get(k)!r}, config {want.get(k)!r}"
    if want["flips"] > meta.get("flips", 1):
        return ("flips: the cache holds no mirrored images but data.random_flip=True "
                "(encode again with random flips, or set data.random_flip=False)")
    return None


class LatentCache:
    """A complete cache opened read-only as a memory map: ``len()`` images,
    ``batch(indices, flip) -> float32 (B, r, r, C_m)`` moments (the mirrored image's where
    ``flip``)."""

    def __init__(self, directory: str, meta: dict, array: np.ndarray):
        self.directory, self.meta, self.array = directory, meta, array

    @classmethod
    def open(cls, directory: str, want: dict | None = None) -> "LatentCache":
        """Opens ``directory``; with ``want`` (:func:`describe` of the config) refuses a cache
        of other data or another first stage, naming the field."""
        meta = read_meta(directory)
        if meta is None:
            raise FileNotFoundError(
                f"no latent cache at first_stage.latents={directory!r} (no {META}); write one "
                "with --mode encode_latents, or set first_stage.latents='' to encode on the fly")
        if not meta.get("complete"):
            raise ValueError(f"the latent cache {directory} is incomplete ({meta.get('done')} of "
                             f"{meta['shape'][0]} images): run --mode encode_latents again to "
                             "finish it")
        if want is not None:
            bad = mismatch(meta, want)
            if bad:
                raise ValueError(f"the latent cache {directory} does not match the config "
                                 f"({bad}); encode again into another first_stage.latents")
        path = os.path.join(directory, ARRAY)
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"the latent cache {directory} has no {ARRAY}") from None
        except Exception as e:  # a truncated header, a bad magic string
            raise errors.CorruptFile(f"{path} is not a readable .npy latent array: "
                                     f"{errors.one_line(e)}") from None
        if list(array.shape) != list(meta["shape"]):
            raise errors.CorruptFile(f"{path} has shape {array.shape}, its {META} says "
                                     f"{tuple(meta['shape'])} (truncated or replaced)")
        return cls(directory, meta, array)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def batch(self, indices, flip) -> np.ndarray:
        indices = np.asarray(indices).reshape(-1)
        variant = (np.asarray(flip, bool) & (self.array.shape[1] > 1)).astype(np.int64)
        order = np.argsort(indices)  # ascending reads of the memory map, then back in order
        rows = np.asarray(self.array[indices[order]])
        out = np.empty_like(rows[:, 0])
        out[order] = rows[np.arange(len(indices)), variant[order]]
        return out.astype(np.float32)


def create(directory: str, meta: dict) -> np.ndarray:
    """A new writable cache (``done`` = 0): its memory-mapped array."""
    os.makedirs(directory, exist_ok=True)
    array = np.lib.format.open_memmap(os.path.join(directory, ARRAY), mode="w+",
                                      dtype=np.dtype(meta["dtype"]), shape=tuple(meta["shape"]))
    write_meta(directory, meta)
    return array


def reopen(directory: str) -> np.ndarray:
    """A partial cache's array, writable (``encode_latents`` resumes at ``done``)."""
    path = os.path.join(directory, ARRAY)
    try:
        return np.load(path, mmap_mode="r+")
    except Exception as e:
        raise errors.CorruptFile(f"{path} (a partial latent cache) is unreadable: "
                                 f"{errors.one_line(e)}; delete {directory} and encode again") \
            from None
