"""Deterministic, resumable, per-process input pipeline.

A source is indexable: an in-memory uint8 array (CIFAR-10, digits), or a lazy source read
on demand (image folders and tfds builds, :mod:`bidm_jax.data.images`; cached latents,
:mod:`bidm_jax.data.latents`) with ``len(source)`` and ``source.take(indices)``. The global
batch of step s is a pure function of (seed, s): epoch e = s·B // N uses permutation
π_e = PRNG(seed, e), flips come from PRNG(seed, s). Each process takes, and reads, only its
contiguous slice of the global batch, so 1..N processes see exactly the same global batch
and a resumed run continues the same data order.
"""
from __future__ import annotations

import numpy as np

from bidm_jax.data import images as image_files
from bidm_jax.data.cifar10 import load_cifar10
from bidm_jax.data.digits import load_digits_images

DATASETS = ("cifar10", "digits") + image_files.DATASETS


def load_images(data_cfg):
    """The configured dataset and split: uint8 (N, R, R, C) in memory (CIFAR-10, digits) or
    a lazy source of such images (image folders, LSUN, FFHQ). C = ``data.channels``: 3,
    or 1 for the digits, whose scans are grey."""
    if data_cfg.dataset in image_files.DATASETS:
        return image_files.open_images(data_cfg)
    if data_cfg.dataset == "cifar10":
        if data_cfg.image_size != 32:
            raise ValueError(f"CIFAR-10 images are 32x32; data.image_size={data_cfg.image_size}")
        images, _ = load_cifar10(data_cfg.split, data_cfg.path or None, data_cfg.source)
        return images
    if data_cfg.dataset == "digits":
        return load_digits_images(data_cfg.image_size, data_cfg.get("channels", 3))[0]
    raise ValueError(f"data.dataset must be one of {DATASETS}, got {data_cfg.dataset!r}")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


class BatchSource:
    """Global batches by step index; this process's slice of it.

    Args:
      images: uint8 (N, R, R, C) in memory, or a lazy source: ``len()`` and
        ``take(indices) -> uint8 (B, R, R, C)``; or one with ``batch(indices, flip) ->
        float32`` that applies the flips (bool (B,)) itself (a latent cache).
      global_batch: examples per step over all processes.
      seed: data seed.
      random_flip: horizontal flips with p = 0.5.
      process_index, process_count: which slice this process feeds.
    """

    def __init__(self, images: np.ndarray, global_batch: int, seed: int, random_flip: bool,
                 process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"batch size {global_batch} is not divisible by the "
                             f"{process_count} processes")
        if len(images) < global_batch:
            raise ValueError(f"dataset has {len(images)} images, fewer than one batch "
                             f"({global_batch})")
        self.images, self.global_batch, self.seed = images, global_batch, seed
        self.random_flip = random_flip
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
            self._perm_epoch = epoch
        return self._perm

    def global_indices(self, step: int) -> np.ndarray:
        """Dataset indices of step ``step``'s global batch (drops the ragged epoch tail)."""
        per_epoch = len(self.images) // self.global_batch
        epoch, k = divmod(step, per_epoch)
        return self._permutation(epoch)[k * self.global_batch:(k + 1) * self.global_batch]

    def flips(self, step: int) -> np.ndarray:
        """bool (B_global,): which examples of step ``step`` are mirrored."""
        if not self.random_flip:
            return np.zeros(self.global_batch, bool)
        return np.random.default_rng([self.seed, 1 << 30, step]).random(self.global_batch) < 0.5

    def local_batch(self, step: int) -> np.ndarray:
        """float32 (B_local, R, R, C) in [-1, 1] for this process at ``step`` (a latent
        cache: its float32 values)."""
        sl = slice(self.offset, self.offset + self.local)
        idx, flip = self.global_indices(step)[sl], self.flips(step)[sl]
        if hasattr(self.images, "batch"):
            return self.images.batch(idx, flip)
        # (ndarray.take would flatten: arrays and memory maps are indexed)
        x = self.images[idx] if isinstance(self.images, np.ndarray) else self.images.take(idx)
        if self.random_flip:
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return to_float(x)
