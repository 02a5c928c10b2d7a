"""Reference statistics (methods.md §6): Gaussian fits of a whole dataset split's features,
plus the features of a fixed random subset used for precision/recall and KID.

File layout (``.npz``), compatible with ADM's evaluator where the names overlap:

* ``mu``, ``sigma``     pool-feature mean (D,) and covariance (D, D), float64;
* ``mu_s``, ``sigma_s`` spatial-feature mean and covariance;
* ``pr_features``       (M, D) pool features of the subset (M = ``pr_num_images``, 10,000);
* ``pr_indices``        (M,) indices of the subset in the split;
* ``arr_0``             (M, H, W, 3) uint8 subset images (optional; ADM's ``ref_batch``);
* ``feature_network``, ``feature_kind``, ``fingerprint``, ``preprocess``, ``source``,
  ``num_images``        what the statistics were computed with and from.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from bidm_jax.npzio import load_npz
from bidm_jax.metrics.features import FeatureNetwork, extract_features
from bidm_jax.metrics.fid import compute_statistics


def build_reference(net: FeatureNetwork, images: np.ndarray, path: str, *, source: str,
                    batch_size: int = 256, pr_num_images: int = 10000, store_images: bool = True,
                    seed: int = 0) -> dict:
    """Extracts features of uint8 ``images`` (N, H, W, 3), writes the reference ``.npz``.

    Returns the arrays written (features included), so a caller can use them directly.
    """
    feats = extract_features(net, images, batch_size)
    mu, sigma = compute_statistics(feats["pool"])
    mu_s, sigma_s = compute_statistics(feats["spatial"])
    n = images.shape[0]
    idx = np.sort(np.random.default_rng(seed).choice(n, min(pr_num_images, n), replace=False))
    arrays = {
        "mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s,
        "pr_features": feats["pool"][idx], "pr_indices": idx,
        "feature_network": np.array(net.label), "feature_kind": np.array(net.kind),
        "fingerprint": np.array(net.info.get("fingerprint", "")),
        "preprocess": np.array(net.info.get("preprocess", "")),
        "source": np.array(source), "num_images": np.array(n),
    }
    if store_images:
        arrays["arr_0"] = images[idx]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    logging.info("wrote reference statistics of %d images (%s) to %s", n, net.label, path)
    return arrays


def load_reference(path: str, net: FeatureNetwork) -> dict:
    """Reads a reference ``.npz`` and checks it was made with the same feature network.

    Raises ValueError on a different network kind, weights fingerprint or preprocessing,
    since statistics from another feature space make every distance meaningless.
    """
    ref = load_npz(path, "reference statistics")
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
