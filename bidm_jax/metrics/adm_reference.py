"""Reference files of three kinds, told apart by their keys (docs/metrics.md):

* **project** (``pr_features`` present, written by ``--mode ref_stats``): used as is after
  the feature-network check of :func:`~bidm_jax.metrics.reference.load_reference`;
* **ADM reference batch with images** (``arr_0`` uint8 (N, H, W, 3), e.g. OpenAI's
  ``VIRTUAL_lsun_bedroom256.npz``, usually with ADM's own ``mu``/``sigma``/``mu_s``/
  ``sigma_s``): the project reference is computed from ``arr_0`` with the configured network
  (streamed, never all images in memory) and cached beside the evaluation as
  ``ref_adm_{name}_{features}.npz``. When the file carries ADM's statistics and the network
  is Inception, the Fréchet distance between theirs and ours (same images) is recorded as
  ``adm_stats_fid``: a check of the Inception port against ADM's TF graph (≈ 0 expected);
* **ADM statistics only** (``mu``/``sigma``[/``mu_s``/``sigma_s``], no images): FID (and
  sFID) use them directly; precision, recall and KID need reference images and are left out
  with a note. They are ADM's TF-Inception statistics, so only the FID Inception with real
  weights and ADM's preprocessing may be compared with them; the proxy network (another
  feature space: the distance would be meaningless) and random weights are refused.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from bidm_jax.errors import BadInput, CorruptFile
from bidm_jax.npy_stream import NpzArrayReader, npz_keys
from bidm_jax.npzio import load_npz
from bidm_jax.metrics.features import FeatureNetwork
from bidm_jax.metrics.fid import frechet_distance
from bidm_jax.metrics.reference import build_reference_stream, load_reference, feature_batch

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
STATS_ONLY_NOTE = ("precision, recall and KID need the reference images (arr_0); {name} holds "
                   "only ADM's statistics, so FID/sFID use them (ADM's TF-Inception features "
                   "against this project's Inception port) and those metrics are left out")


def reference_kind(path: str) -> str:
    """'project', 'adm_images' or 'adm_stats' from the keys of ``path`` (CorruptFile if none)."""
    keys = set(npz_keys(path, "reference statistics"))
    if "pr_features" in keys:
        return "project"
    if "arr_0" in keys:
        return "adm_images"
    if {"mu", "sigma"} <= keys:
        return "adm_stats"
    raise CorruptFile(f"{path} is not reference statistics: it has neither pr_features (a "
                      f"--mode ref_stats file), arr_0 (an ADM reference batch) nor mu/sigma "
                      f"(found {sorted(keys)})")


def adm_cache_path(path: str, net: FeatureNetwork, cache_dir: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir, f"ref_adm_{stem}_{net.kind}.npz")


def _cache_matches(cached: str, path: str, net: FeatureNetwork) -> dict | None:
    """The cached reference of ``path`` when it was made from this very file (name and size)
    by this network; None when it must be rebuilt."""
    if not os.path.exists(cached):
        return None
    try:
        ref = load_reference(cached, net)
    except ValueError as e:  # another network / preprocessing / a broken cache: rebuild
        logging.info("rebuilding %s: %s", cached, e)
        return None
    same = (str(ref.get("adm_file", "")) == os.path.basename(path)
            and int(ref.get("adm_file_size", -1)) == os.path.getsize(path))
    return ref if same else None


def reference_from_adm_batch(path: str, net: FeatureNetwork, cache_dir: str, *,
                             batch_size: int = 256, pr_num_images: int = 10000, seed: int = 0,
                             store_images: bool = False) -> tuple[dict, str]:
    """The project reference of an ADM batch's ``arr_0`` images (cached); returns
    ``(reference arrays, cache path)``."""
    cached = adm_cache_path(path, net, cache_dir)
    ref = _cache_matches(cached, path, net)
    if ref is not None:
        return ref, cached
    with NpzArrayReader(path, "arr_0", "ADM reference batch") as reader:
        if reader.dtype != np.uint8 or len(reader.shape) != 4 or reader.shape[-1] != 3:
            raise CorruptFile(f"{path}: arr_0 must be uint8 (N, H, W, 3) images, got "
                              f"{reader.dtype} {reader.shape}")
        n = reader.shape[0]
        name = os.path.basename(path)
        logging.info("computing the reference of %s (%d images, %s)", name, n, net.label)
        bs = feature_batch(batch_size)
        meta = {"adm_file": name, "adm_file_size": os.path.getsize(path),
                "image_size": int(reader.shape[1])}
        ref = build_reference_stream(
            net, reader.batches(bs), n, cached, batch_size=bs, pr_num_images=pr_num_images,
            store_images=store_images, seed=seed, meta=meta,
            source=f"ADM reference batch {name} ({n:,} images, {reader.shape[1]}px)")
    check = adm_stats_agreement(path, net, ref)
    if check is not None:
        ref["adm_stats_fid"] = np.array(check)
    if check is not None and jax.process_index() == 0:
        import zipfile  # append the check to the cache (a small member)

        with zipfile.ZipFile(cached, "a", allowZip64=True) as zf:
            with zf.open("adm_stats_fid.npy", "w") as f:
                np.lib.format.write_array(f, np.array(check))
    return ref, cached


def adm_stats_agreement(path: str, net: FeatureNetwork, ref: dict) -> float | None:
    """FID between the ADM file's own ``mu``/``sigma`` and ours from the same images (both
    Inception pool features): ~0 when the port matches ADM's TF graph. None when the file has
    no statistics or the network is not the Inception with real weights."""
    if net.kind != "inception" or net.info.get("random_weights"):
        return None
    keys = set(npz_keys(path))
    if not {"mu", "sigma"} <= keys:
        return None
    adm = load_npz(path, "ADM reference batch", keys=["mu", "sigma"])
    if adm["mu"].shape != ref["mu"].shape:
        return None
    value = frechet_distance(ref["mu"], ref["sigma"], adm["mu"], adm["sigma"])
    logging.info("FID between ADM's statistics in %s and this network's on the same images: "
                 "%.6g (0 = the same features)", os.path.basename(path), value)
    return value


def check_adm_stats_network(path: str, net: FeatureNetwork) -> None:
    """Refuses to compare ``net``'s features with ADM's TF-Inception statistics unless it is
    the FID Inception with real weights and ADM's preprocessing."""
    name = os.path.basename(path)
    if net.kind != "inception":
        raise BadInput(
            f"{name} holds only ADM's Inception statistics (mu/sigma, no images); the "
            f"{net.label} computes other features, so an FID against them would be "
            "meaningless. Use eval.features=inception (FID Inception weights), or a reference "
            "with images (an ADM batch with arr_0, or --mode ref_stats on the dataset)")
    if net.info.get("random_weights"):
        raise BadInput(f"{name} holds ADM's Inception statistics; this Inception has RANDOM "
                       "weights (no eval.inception_path): its features are not comparable")
    if net.info.get("preprocess") != "adm":
        raise BadInput(f"{name} holds ADM's statistics, computed with ADM's resize; set "
                       f"eval.inception_preprocess=adm (now {net.info.get('preprocess')!r})")


def reference_from_adm_stats(path: str, net: FeatureNetwork) -> tuple[dict, list[str]]:
    """ADM's ``mu``/``sigma``(/``mu_s``/``sigma_s``) as a reference without ``pr_features``;
    returns ``(reference, notes)``."""
    check_adm_stats_network(path, net)
    ref = load_npz(path, "ADM reference statistics", keys=list(STATS_KEYS))
    name = os.path.basename(path)
    mu, sigma = ref["mu"], ref["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise CorruptFile(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and "
                          "its covariance")
    notes = [STATS_ONLY_NOTE.format(name=name)]
    if "mu_s" not in ref or "sigma_s" not in ref:
        notes.append(f"{name} has no mu_s/sigma_s: sFID is left out")
    ref["source"] = np.array(f"ADM reference statistics {name}")
    ref["feature_network"] = np.array("ADM evaluator (TF InceptionV3 graph)")
    return ref, notes
