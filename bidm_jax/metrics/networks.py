"""Builds the configured feature network (``eval.features``): FID Inception or the proxy."""
from __future__ import annotations

import os

import jax
from flax import nnx

from bidm_jax.npzio import load_npz
from bidm_jax.metrics import inception, proxy, weights
from bidm_jax.metrics.features import FeatureNetwork, state_fingerprint, to_precision

INCEPTION_LABEL = "FID InceptionV3 (pytorch-fid weights pt_inception-2015-12-05-6726825d)"


def build_inception(preprocess: str = "adm", precision: str = "highest",
                    npz_path: str | None = None, seed: int = 0) -> FeatureNetwork:
    """FID Inception as a FeatureNetwork. ``npz_path=None`` keeps random weights (for speed
    measurements and shape tests only; the label then says so)."""
    label = INCEPTION_LABEL
    if npz_path is not None:
        arrays = load_npz(npz_path, "FID Inception weights")
    else:
        arrays = weights.random_flat_weights(seed)
        label = "FID InceptionV3 architecture with RANDOM weights (not a metric)"
    model = weights.inception_from_flat(arrays, to_precision(precision))
    graphdef, state = nnx.split(model)

    def apply(m, images):
        out = m(inception.preprocess(images, preprocess, to_precision(precision)))
        return {"pool": out["pool"], "spatial": out["spatial"],
                "is_logits": out["logits_unbiased"]}

    return FeatureNetwork("inception", f"{label}, preprocess={preprocess}", graphdef, state,
                          apply, {"preprocess": preprocess, "random_weights": npz_path is None,
                                  "fingerprint": state_fingerprint(state)})


def proxy_label(meta: dict) -> str:
    """e.g. 'proxy (CIFAR-10 JPEG q75 classifier, test acc 0.912)'."""
    return f"proxy ({meta['data']} classifier, test acc {meta['test_accuracy']:.3f})"


def build_proxy(path: str) -> FeatureNetwork:
    """Loads a trained proxy (``proxy.save_proxy`` file) as a FeatureNetwork."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No proxy feature network at {path}. Train it first: python -m bidm_jax.main "
            f"--mode train_proxy --workdir <dir> (or set eval.proxy_path).")
    model, meta = proxy.load_proxy(path)
    graphdef, state = nnx.split(model)

    def apply(m, images):
        return m(images, train=False)

    return FeatureNetwork("proxy", proxy_label(meta), graphdef, state, apply,
                          {"proxy_test_accuracy": meta["test_accuracy"],
                           "fingerprint": state_fingerprint(state), "proxy_meta": meta})


def default_proxy_path(cfg, workdir: str) -> str:
    return cfg.proxy_path or os.path.join(workdir, "proxy", "proxy_features.npz")


def build_feature_network(cfg, workdir: str) -> FeatureNetwork:
    """The network selected by ``cfg.features`` (``cfg`` = the config's ``eval`` section)."""
    if cfg.features == "proxy":
        return build_proxy(default_proxy_path(cfg, workdir))
    if cfg.features == "inception":
        npz = weights.resolve_inception_npz(cfg.inception_path, cfg.cache_dir)
        return build_inception(cfg.inception_preprocess, cfg.precision, npz)
    raise ValueError(f"eval.features must be one of ('inception', 'proxy'), got {cfg.features!r}")


def device_summary() -> str:
    d = jax.devices()
    return f"{len(d)}x {d[0].device_kind}"
