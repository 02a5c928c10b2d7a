"""``--mode quickstart``: the end-to-end demo on the embedded digits (no network, no files).

Trains the small FP UNet, samples it, writes ``{workdir}/quickstart.png`` and
``{workdir}/quickstart_metrics.json``. The sample quality figure is a digit-classifier
Inception Score (a logistic-regression classifier on the 8x8 digits; the real data's own
score is reported beside it): a quick sanity number, not a paper metric.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from bidm_jax import logs
from bidm_jax.train import run_train


def digits_classifier():
    """Logistic regression on scikit-learn's 8x8 digits (values 0..16)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    return LogisticRegression(max_iter=2000).fit(d.data, d.target)


def to_digits_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, R, R, 3) → (N, 64) in the 0..16 range of the 8x8 digits (box downsample)."""
    from PIL import Image

    grey = images.mean(axis=-1).astype(np.uint8)
    small = np.stack([np.asarray(Image.fromarray(g).resize((8, 8), Image.BOX)) for g in grey])
    return small.reshape(len(images), 64).astype(np.float64) * (16.0 / 255.0)


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) for class probabilities (N, K)."""
    p_y = probs.mean(axis=0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(p_y + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


def digits_score(clf, images: np.ndarray) -> dict:
    probs = clf.predict_proba(to_digits_features(images))
    return {"digits_is": inception_score(probs),
            "digits_confidence": float(probs.max(axis=1).mean())}


def run_quickstart(config, workdir: str) -> dict:
    t0 = time.time()
    final = run_train(config, workdir)
    samples = np.load(os.path.join(workdir, "samples", "samples_train.npz"))["arr_0"]
    from bidm_jax.data.digits import load_digits_rgb

    real = load_digits_rgb(config.data.image_size)[0][: len(samples)]
    clf = digits_classifier()
    metrics = {"teacher_final_loss": final.get("loss"), "train_seconds": final.get("train_seconds"),
               "num_samples": int(len(samples)), "teacher": digits_score(clf, samples),
               "real_data": digits_score(clf, real), "total_seconds": time.time() - t0,
               "note": "digits IS: logistic-regression classifier on 8x8 digits, not Inception"}
    logs.save_png(os.path.join(workdir, "quickstart.png"), logs.image_grid(samples), upscale=4)
    with open(os.path.join(workdir, "quickstart_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    logging.info("quickstart done in %.0fs: %s", metrics["total_seconds"], json.dumps(metrics))
    return metrics
