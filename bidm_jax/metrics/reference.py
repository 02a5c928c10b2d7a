"""Reference statistics (methods.md §6): Gaussian fits of a whole dataset split's features,
plus the features of a fixed random subset used for precision/recall and KID.

File layout (``.npz``), compatible with ADM's evaluator where the names overlap:

* ``mu``, ``sigma``     pool-feature mean (D,) and covariance (D, D), float64;
* ``mu_s``, ``sigma_s`` spatial-feature mean and covariance;
* ``pr_features``       (M, D) pool features of the subset (M = ``pr_num_images``, 10,000);
* ``pr_indices``        (M,) indices of the subset in the split;
* ``arr_0``             (M, H, W, 3) uint8 subset images (optional; ADM's ``ref_batch``);
* ``feature_network``, ``feature_kind``, ``fingerprint``, ``preprocess``, ``source``,
  ``num_images``        what the statistics were computed with and from;
* further provenance from the caller (``dataset``, ``image_size``, ``split``,
  ``dataset_size``, ``adm_file`` ...), strings and integers.

Building streams: images arrive in blocks (an array, a lazy image folder, an npz member), the
statistics are merged block by block (:class:`~bidm_jax.metrics.fid.RunningStats`) and only
the subset's features and images are kept, so memory is bounded by a block plus the subset.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from bidm_jax.npy_stream import NpzArrayWriter, npz_keys
from bidm_jax.npzio import load_npz
from bidm_jax.metrics.features import FeatureNetwork, image_batches, iter_features
from bidm_jax.metrics.fid import RunningStats


def subset_indices(n: int, count: int, seed: int) -> np.ndarray:
    """Sorted indices of the seeded precision/recall subset: ``min(count, n)`` of range(n)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(count, n), replace=False))


def build_reference_stream(net: FeatureNetwork, batches, n: int, path: str, *, source: str,
                           batch_size: int = 256, pr_num_images: int = 10000,
                           store_images: bool = True, seed: int = 0,
                           meta: dict | None = None) -> dict:
    """Writes the reference ``.npz`` of the ``n`` uint8 images (N, H, W, 3) that ``batches``
    yields in consecutive blocks of <= ``batch_size`` (:func:`features.image_batches`).

    ``meta``: extra provenance (str / int values) stored beside the statistics. Returns the
    arrays written except ``arr_0`` (so a caller can use them without reading the file back).
    """
    import jax

    idx = subset_indices(n, pr_num_images, seed)
    # Every process runs the network (a collective); process 0 alone writes the file.
    store_images = store_images and jax.process_index() == 0
    pool, spatial = RunningStats(), RunningStats()
    pr_rows, offset, writer = [], 0, None
    tmp = path + ".building.npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        blocks = _tee_blocks(batches)
        for feats in iter_features(net, blocks, batch_size, total=n):
            block = blocks.done.pop(0)
            b = block.shape[0]
            pool.update(feats["pool"])
            spatial.update(feats["spatial"])
            lo, hi = np.searchsorted(idx, [offset, offset + b])
            keep = idx[lo:hi] - offset
            pr_rows.append(feats["pool"][keep])
            if store_images and len(idx):
                if writer is None:
                    writer = NpzArrayWriter(tmp, (len(idx),) + block.shape[1:], np.uint8)
                writer.write(block[keep])
            offset += b
        if offset != n:
            raise ValueError(f"the reference images ended after {offset} of {n}")
        mu, sigma = pool.finalize()
        mu_s, sigma_s = spatial.finalize()
        arrays = {
            "mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s,
            "pr_features": np.concatenate(pr_rows), "pr_indices": idx,
            "feature_network": np.array(net.label), "feature_kind": np.array(net.kind),
            "fingerprint": np.array(net.info.get("fingerprint", "")),
            "preprocess": np.array(net.info.get("preprocess", "")),
            "source": np.array(source), "num_images": np.array(n),
            **{k: np.array(v) for k, v in (meta or {}).items()},
        }
        if jax.process_index() != 0:
            return arrays
        if writer is None:
            np.savez(tmp, **arrays)
        else:
            writer.close(extra=arrays)
            writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.abort()
        if jax.process_index() == 0 and os.path.exists(tmp):
            os.remove(tmp)
        raise
    logging.info("wrote reference statistics of %d images (%s) to %s", n, net.label, path)
    return arrays


class _tee_blocks:
    """Passes blocks through while remembering them until their features are back
    (:func:`iter_features` yields one block late)."""

    def __init__(self, batches):
        self._it, self.done = iter(batches), []

    def __iter__(self):
        return self

    def __next__(self):
        block = next(self._it)
        self.done.append(block)
        return block


def build_reference(net: FeatureNetwork, images: np.ndarray, path: str, *, source: str,
                    batch_size: int = 256, pr_num_images: int = 10000, store_images: bool = True,
                    seed: int = 0, meta: dict | None = None) -> dict:
    """:func:`build_reference_stream` of images held in memory (uint8 (N, H, W, 3))."""
    bs = feature_batch(batch_size)
    return build_reference_stream(net, image_batches(images, bs), len(images), path,
                                  source=source, batch_size=bs, pr_num_images=pr_num_images,
                                  store_images=store_images, seed=seed, meta=meta)


def feature_batch(batch_size: int) -> int:
    """The feature batch rounded up to a multiple of the device count (what iter_features
    pads to), so that image blocks and device batches coincide."""
    import jax

    n = jax.device_count()
    return -(-batch_size // n) * n


def load_reference(path: str, net: FeatureNetwork) -> dict:
    """Reads a reference ``.npz`` and checks it was made with the same feature network.

    Raises ValueError on a different network kind, weights fingerprint or preprocessing,
    since statistics from another feature space make every distance meaningless.
    """
    # Everything but the subset images (up to gigabytes at 256x256; unused here).
    ref = load_npz(path, "reference statistics",
                   keys=[k for k in npz_keys(path, "reference statistics") if k != "arr_0"])
    need = ("mu", "sigma", "mu_s", "sigma_s", "pr_features")
    missing = [k for k in need if k not in ref]
    if missing:
        raise ValueError(f"{path} lacks reference keys {missing}")
    checks = {"feature_kind": net.kind, "fingerprint": net.info.get("fingerprint", ""),
              "preprocess": net.info.get("preprocess", "")}
    for key, want in checks.items():
        have = str(ref[key]) if key in ref else ""
        if have != want:
            raise ValueError(f"{path} was built with {key}={have!r} but the evaluation uses "
                             f"{want!r} ({net.label}); rebuild it (--mode ref_stats) or point "
                             f"eval.ref_path at a matching file")
    return ref
