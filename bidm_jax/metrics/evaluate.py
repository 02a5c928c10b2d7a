"""Evaluation entry points (``--mode eval | ref_stats | train_proxy``), methods.md §6.

* ``run_eval``: samples npz (key ``arr_0``, uint8 NHWC) -> features -> FID, sFID, IS,
  precision, recall, KID against the reference statistics -> ``{workdir}/eval/metrics.json``.
* ``run_ref_stats``: builds the reference ``.npz`` from the configured dataset split.
* ``run_train_proxy``: trains the proxy feature network on CIFAR-10 and reports its test
  accuracy.

With ``eval.features = "proxy"`` every metric key carries the ``proxy_`` prefix and the JSON
states the proxy's test accuracy; such numbers must never be compared with published ones.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from bidm_jax.npzio import load_npz
from bidm_jax.metrics.config import validate_eval_config
from bidm_jax.metrics.features import extract_features
from bidm_jax.metrics.fid import compute_statistics, frechet_distance
from bidm_jax.metrics.inception_score import inception_score
from bidm_jax.metrics.kid import kernel_inception_distance
from bidm_jax.metrics.networks import (build_feature_network, default_proxy_path,
                                       device_summary, proxy_label)
from bidm_jax.metrics.prec_recall import precision_recall
from bidm_jax.metrics.reference import build_reference, load_reference


def _field(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return default
        node = node[part]
    return node


def dataset_description(path: str | None) -> str:
    """Human-readable name of the training data for labels ('CIFAR-10 JPEG q75', ...)."""
    if path and path.endswith(".npz"):
        return "CIFAR-10 JPEG q75" if "q75" in os.path.basename(path) else "CIFAR-10 JPEG npz"
    return "CIFAR-10"


def _load_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
    from bidm_jax.data.cifar10 import load_cifar10

    return load_cifar10(split, _field(config, "data.path"), _field(config, "data.source", "auto"))


def default_ref_path(cfg, workdir: str) -> str:
    return cfg.ref_path or os.path.join(workdir, "eval",
                                        f"ref_cifar10_{cfg.ref_split}_{cfg.features}.npz")


def load_samples(path: str, num_samples: int = 0) -> np.ndarray:
    """Reads ``arr_0`` (uint8 (N, H, W, 3)) from a samples npz; keeps the first ``num_samples``
    (0 = all). Raises ValueError when the file has fewer samples than requested."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no samples at {path}; sample first or set eval.samples_path")
    z = load_npz(path, "samples")
    files = list(z)
    x = z.get("arr_0")
    if x is None:
        raise ValueError(f"{path} has no arr_0 (found {files})")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    if num_samples:
        if x.shape[0] < num_samples:
            raise ValueError(f"{path} holds {x.shape[0]} samples but eval.num_samples="
                             f"{num_samples}; sample more or set eval.num_samples=0 (use all)")
        x = x[:num_samples]
    return x


def _build_ref(config, cfg, net, path: str) -> dict:
    images, _ = _load_split(config, cfg.ref_split)
    if cfg.ref_num_images:
        images = images[:cfg.ref_num_images]
    source = f"{dataset_description(_field(config, 'data.path'))} {cfg.ref_split}"
    return build_reference(net, images, path, source=source, batch_size=cfg.batch_size,
                           pr_num_images=cfg.pr_num_images, store_images=cfg.ref_store_images,
                           seed=_field(config, "seed", 0))


def _ref_stats(config, workdir: str, net, cfg) -> tuple[dict, str]:
    path = default_ref_path(cfg, workdir)
    if os.path.exists(path):
        return load_reference(path, net), path
    logging.info("no reference statistics at %s; building them from CIFAR-10 %s", path,
                 cfg.ref_split)
    return _build_ref(config, cfg, net, path), path


def run_ref_stats(config, workdir: str) -> dict:
    """Builds the reference statistics ``.npz`` (``eval.ref_path``) and returns a summary."""
    cfg = config.eval
    validate_eval_config(cfg)
    net = build_feature_network(cfg, workdir)
    path = default_ref_path(cfg, workdir)
    t0 = time.time()
    ref = _build_ref(config, cfg, net, path)
    return {"ref_path": path, "num_images": int(ref["num_images"]),
            "feature_network": net.label, "seconds": time.time() - t0}


FID_MIN_SAMPLES = 2048  # Inception pool_3's dimension: fewer samples give a singular covariance


def sample_count_warnings(n: int, feature_dim: int) -> list[str]:
    """What ``n`` samples cannot support: FID/sFID need more samples than feature dimensions
    (else the sample covariance is singular and FID is strongly biased upwards) and are only
    comparable with published numbers at the papers' 50,000."""
    need = max(FID_MIN_SAMPLES, feature_dim)
    if n < need:
        return [f"FID/sFID/KID/precision/recall on {n} samples: below {need:,} samples the "
                f"{feature_dim}-d feature covariance is rank-deficient and FID is strongly "
                "biased; use these numbers only to compare runs evaluated alike (the papers "
                "use 50,000)"]
    return []


def run_eval(config, workdir: str) -> dict:
    """Evaluates ``{workdir}/samples/samples.npz`` (or ``eval.samples_path``); writes and
    returns the metrics dict (also ``{workdir}/eval/metrics.json``)."""
    cfg = config.eval
    validate_eval_config(cfg)
    samples_path = cfg.samples_path or os.path.join(workdir, "samples", "samples.npz")
    samples = load_samples(samples_path, cfg.num_samples)
    net = build_feature_network(cfg, workdir)
    ref, ref_path = _ref_stats(config, workdir, net, cfg)
    t0 = time.time()
    feats = extract_features(net, samples, cfg.batch_size)
    t_feat = time.time() - t0
    mu, sigma = compute_statistics(feats["pool"])
    mu_s, sigma_s = compute_statistics(feats["spatial"])
    prec, rec = precision_recall(ref["pr_features"], feats["pool"], cfg.pr_k, cfg.pr_block)
    kid, kid_std = kernel_inception_distance(
        feats["pool"], ref["pr_features"], cfg.kid_subsets, cfg.kid_subset_size,
        seed=_field(config, "seed", 0))
    p = net.metric_prefix
    metrics = {
        p + "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
        p + "sfid": frechet_distance(mu_s, sigma_s, ref["mu_s"], ref["sigma_s"]),
        p + "is": inception_score(feats["is_logits"], cfg.is_split_size),
        p + "precision": prec,
        p + "recall": rec,
        p + "kid": kid,
        p + "kid_std": kid_std,
    }
    result = {
        "num_samples": int(samples.shape[0]),
        "feature_network": net.label,
        "metrics_are_proxy": net.kind == "proxy",
        **metrics,
        "samples_path": samples_path,
        "reference": {"path": ref_path, "source": str(ref.get("source", "")),
                      "num_images": int(ref.get("num_images", 0)),
                      "pr_num_images": int(ref["pr_features"].shape[0])},
        "settings": {"is_split_size": cfg.is_split_size, "pr_k": cfg.pr_k,
                     "kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size,
                     "preprocess": net.info.get("preprocess", "")},
        "feature_seconds": t_feat,
        "device": device_summary(),
    }
    if net.kind == "proxy":
        result["proxy_test_accuracy"] = net.info["proxy_test_accuracy"]
    result["warnings"] = sample_count_warnings(int(samples.shape[0]), int(feats["pool"].shape[1]))
    for w in result["warnings"]:
        logging.warning("%s", w)
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    for k, v in metrics.items():
        logging.info("%s = %.6g  [%s, %d samples]", k, v, net.label, samples.shape[0])
    return result


def run_train_proxy(config, workdir: str) -> dict:
    """Trains the proxy feature network on CIFAR-10 train, measures test accuracy, saves it
    to ``eval.proxy_path`` (default ``{workdir}/proxy/proxy_features.npz``)."""
    from bidm_jax.metrics import proxy

    cfg = config.eval
    validate_eval_config(cfg)
    x_train, y_train = _load_split(config, "train")
    x_test, y_test = _load_split(config, "test")
    model, info = proxy.train_proxy(x_train, y_train, cfg, seed=_field(config, "seed", 0))
    acc = proxy.evaluate_accuracy(model, x_test, y_test)
    meta = {"width": cfg.proxy_width, "embed_dim": cfg.proxy_embed_dim,
            "spatial_channels": cfg.proxy_spatial_channels, "test_accuracy": acc,
            "data": dataset_description(_field(config, "data.path")),
            "num_train": int(len(x_train)), "num_test": int(len(x_test)), **info}
    path = default_proxy_path(cfg, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    proxy.save_proxy(model, path, meta)
    summary = {"proxy_path": path, "feature_network": proxy_label(meta), **meta,
               "device": device_summary()}
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), "proxy_train.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logging.info("proxy feature network: test accuracy %.4f after %d steps (%.1f s); saved %s",
                 acc, info["steps"], info["train_seconds"], path)
    return summary
