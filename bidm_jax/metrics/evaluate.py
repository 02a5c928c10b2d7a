"""Evaluation entry points (``--mode eval | ref_stats | train_proxy``), methods.md §6.

* ``run_eval``: samples npz (key ``arr_0``, uint8 NHWC, read in blocks) -> features -> FID,
  sFID, IS, precision, recall, KID against the reference -> ``{workdir}/eval/metrics.json``.
* ``run_ref_stats``: builds the reference ``.npz`` from the configured dataset (CIFAR-10, the
  digits, image folders, LSUN, FFHQ: :mod:`bidm_jax.metrics.ref_sources`), streamed; or the
  cached reference of an ADM reference batch (:mod:`bidm_jax.metrics.adm_reference`).
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

from bidm_jax.diffusion.sample_files import tag_suffix
from bidm_jax.errors import BadInput
from bidm_jax.metrics.adm_reference import (reference_from_adm_batch, reference_from_adm_stats,
                                            reference_kind)
from bidm_jax.metrics.config import validate_eval_config
from bidm_jax.metrics.features import image_batches, iter_features
from bidm_jax.metrics.fid import RunningStats, frechet_distance
from bidm_jax.metrics.inception_score import inception_score
from bidm_jax.metrics.kid import kernel_inception_distance
from bidm_jax.metrics.networks import (build_feature_network, default_proxy_path,
                                       device_summary, proxy_label)
from bidm_jax.metrics.prec_recall import precision_recall
from bidm_jax.metrics.ref_sources import default_ref_path, open_reference_images
from bidm_jax.metrics.reference import build_reference_stream, feature_batch, load_reference
from bidm_jax.metrics.samples_io import load_samples, open_samples, samples_file

__all__ = ["run_eval", "run_ref_stats", "run_train_proxy", "load_samples", "open_samples",
           "samples_file", "default_ref_path", "dataset_description"]


def _field(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return default
        node = node[part]
    return node


def dataset_description(path: str | None) -> str:
    """Human-readable name of CIFAR-10 training data for labels ('CIFAR-10 JPEG q75', ...)."""
    if path and path.endswith(".npz"):
        return "CIFAR-10 JPEG q75" if "q75" in os.path.basename(path) else "CIFAR-10 JPEG npz"
    return "CIFAR-10"


def _load_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
    from bidm_jax.data.cifar10 import load_cifar10

    return load_cifar10(split, _field(config, "data.path"), _field(config, "data.source", "auto"))


def _build_ref(config, cfg, net, path: str) -> dict:
    images, n, source, meta = open_reference_images(config)
    logging.info("building reference statistics of %s: %d images -> %s", source, n, path)
    bs = feature_batch(cfg.batch_size)
    return build_reference_stream(net, image_batches(images, bs, n), n, path, source=source,
                                  batch_size=bs, pr_num_images=cfg.pr_num_images,
                                  store_images=cfg.ref_store_images,
                                  seed=_field(config, "seed", 0), meta=meta)


def _adm_batch(config, cfg, net, path: str, workdir: str) -> tuple[dict, str]:
    return reference_from_adm_batch(path, net, os.path.join(workdir, "eval"),
                                    batch_size=cfg.batch_size, pr_num_images=cfg.pr_num_images,
                                    seed=_field(config, "seed", 0))


def _ref_stats(config, workdir: str, net, cfg) -> tuple[dict, str, list[str]]:
    """(reference arrays, its path, notes): a project file as is, an ADM batch through its
    cached reference, ADM statistics alone, or built from the dataset when missing."""
    path = default_ref_path(config, workdir)
    if not os.path.exists(path):
        logging.info("no reference statistics at %s; building them from the configured data",
                     path)
        return _build_ref(config, cfg, net, path), path, []
    kind = reference_kind(path)
    if kind == "project":
        return load_reference(path, net), path, []
    if kind == "adm_images":
        ref, cached = _adm_batch(config, cfg, net, path, workdir)
        return ref, path, [f"reference computed from the arr_0 images of {path} with "
                           f"{net.label} (cached at {cached})"]
    ref, notes = reference_from_adm_stats(path, net)
    return ref, path, notes


def run_ref_stats(config, workdir: str) -> dict:
    """Builds the reference statistics ``.npz`` (``eval.ref_path``, else a name saying the
    dataset, resolution, split and network) from the configured dataset; when
    ``eval.ref_path`` is an ADM reference batch, its cached reference instead."""
    cfg = config.eval
    validate_eval_config(cfg)
    net = build_feature_network(cfg, workdir)
    path = default_ref_path(config, workdir)
    t0 = time.time()
    kind = reference_kind(path) if os.path.exists(path) else "project"
    if kind == "adm_stats":
        raise BadInput(f"{path} holds ADM's statistics only; --mode eval uses them as they "
                       "are and there is nothing to build from them")
    if kind == "adm_images":
        ref, path = _adm_batch(config, cfg, net, path, workdir)
    else:
        ref = _build_ref(config, cfg, net, path)
    return {"ref_path": path, "num_images": int(ref["num_images"]),
            "source": str(ref["source"]), "feature_network": net.label,
            "seconds": time.time() - t0}


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


def run_eval(config, workdir: str, net=None) -> dict:
    """Evaluates ``{workdir}/samples/samples{_tag}.npz`` (or ``eval.samples_path``), read in
    blocks; writes and returns the metrics dict (``{workdir}/eval/metrics.json``, and
    ``metrics_{tag}.json`` with ``sample.tag``). ``net``: a feature network built by the
    caller (default: the configured one)."""
    cfg = config.eval
    validate_eval_config(cfg)
    path = samples_file(config, workdir)
    reader, n = open_samples(path, cfg.num_samples)
    with reader:
        net = net or build_feature_network(cfg, workdir)
        ref, ref_path, notes = _ref_stats(config, workdir, net, cfg)
        t0 = time.time()
        pool_stats, spatial_stats, pool, logits = RunningStats(), RunningStats(), [], []
        bs = feature_batch(cfg.batch_size)
        for out in iter_features(net, reader.batches(bs, n), bs, total=n):
            pool_stats.update(out["pool"])
            spatial_stats.update(out["spatial"])
            pool.append(out["pool"])
            logits.append(out["is_logits"])
        size = reader.shape[1]
    t_feat = time.time() - t0
    pool, logits = np.concatenate(pool), np.concatenate(logits)
    if ref["mu"].shape[0] != pool.shape[1]:
        raise BadInput(f"{ref_path} holds {ref['mu'].shape[0]}-d statistics but {net.label} "
                       f"gives {pool.shape[1]}-d features")
    metrics = _metrics(config, net, ref, pool_stats, spatial_stats, pool, logits)
    has_pr = "pr_features" in ref
    reference = {"path": ref_path, "source": str(ref.get("source", "")),
                 "num_images": int(ref.get("num_images", 0)),
                 "pr_num_images": int(ref["pr_features"].shape[0]) if has_pr else 0}
    if "adm_stats_fid" in ref:
        reference["adm_stats_fid"] = float(ref["adm_stats_fid"])
    result = {
        "num_samples": int(n),
        "feature_network": net.label,
        "metrics_are_proxy": net.kind == "proxy",
        **metrics,
        "samples_path": path,
        "reference": reference,
        "settings": {"is_split_size": cfg.is_split_size, "pr_k": cfg.pr_k,
                     "kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size,
                     "preprocess": net.info.get("preprocess", "")},
        "feature_seconds": t_feat,
        "device": device_summary(),
        "notes": notes,
    }
    if net.kind == "proxy":
        result["proxy_test_accuracy"] = net.info["proxy_test_accuracy"]
    warnings = sample_count_warnings(int(n), int(pool.shape[1]))
    ref_size = int(ref["image_size"]) if "image_size" in ref else 0
    if ref_size and ref_size != size:
        warnings.append(f"the samples are {size}px but the reference images {ref_size}px: "
                        "both are resized to the network's input, yet the FID also measures "
                        "the difference in resolution")
    result["warnings"] = warnings
    for w in warnings + notes:
        logging.warning("%s", w)
    _write_metrics(result, workdir, _field(config, "sample.tag", ""))
    for k, v in metrics.items():
        logging.info("%s = %.6g  [%s, %d samples]", k, v, net.label, n)
    return result


def _metrics(config, net, ref, pool_stats, spatial_stats, pool, logits) -> dict:
    """The metrics the reference supports: FID always, sFID with spatial statistics, IS,
    and precision/recall/KID with reference features (``pr_features``)."""
    cfg, p = config.eval, net.metric_prefix
    mu, sigma = pool_stats.finalize()
    metrics = {p + "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"])}
    if "mu_s" in ref and "sigma_s" in ref:
        mu_s, sigma_s = spatial_stats.finalize()
        metrics[p + "sfid"] = frechet_distance(mu_s, sigma_s, ref["mu_s"], ref["sigma_s"])
    metrics[p + "is"] = inception_score(logits, cfg.is_split_size)
    if "pr_features" in ref:
        prec, rec = precision_recall(ref["pr_features"], pool, cfg.pr_k, cfg.pr_block)
        kid, kid_std = kernel_inception_distance(
            pool, ref["pr_features"], cfg.kid_subsets, cfg.kid_subset_size,
            seed=_field(config, "seed", 0))
        metrics.update({p + "precision": prec, p + "recall": rec, p + "kid": kid,
                        p + "kid_std": kid_std})
    return metrics


def _write_metrics(result: dict, workdir: str, tag: str) -> None:
    """``metrics.json`` (the latest evaluation) and, for a tagged sample set, a copy named
    after it, so that evaluations of two sampler presets in one workdir both stay."""
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    for name in ["metrics.json"] + ([f"metrics{tag_suffix(tag)}.json"] if tag else []):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(result, f, indent=2)


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
