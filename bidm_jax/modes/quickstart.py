"""``--mode quickstart``: the end-to-end demo on the embedded digits (no network, no files).

1. trains the small FP teacher UNet (``{workdir}/checkpoints``);
2. distils a W1A1 student from it (``quant.method``, BiDM by default: TBS + SPD) for
   ``distill.num_steps`` steps (``{workdir}/student``);
3. samples both from the same initial noise and writes them side by side (teacher left,
   student right) to ``{workdir}/quickstart.png``, with ``{workdir}/quickstart_metrics.json``;
4. prints the student's ``--mode summary`` table and a table of the digits scores.

Each training phase is announced and then shows the loop's progress line (step, loss,
speed, ETA of the phase). The sample quality figure is a digit-classifier Inception Score (a
logistic-regression classifier on the 8x8 digits, fed the box-downsampled channel mean of a
sample, so grey and grey-as-RGB images score alike; the real data's own score is reported
beside it): a quick sanity number, not a paper metric.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from bidm_jax import logs, modes
from bidm_jax.configlib import resolve_config


def digits_classifier():
    """Logistic regression on scikit-learn's 8x8 digits (values 0..16)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    d = load_digits()
    return LogisticRegression(max_iter=2000).fit(d.data, d.target)


def to_digits_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, R, R, C) → (N, 64) in the 0..16 range of the 8x8 digits (box downsample of
    the channel mean: the grey value itself for C = 1, and for grey replicated as RGB)."""
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
    """Digits IS and the classifier's mean top-class probability of uint8 images."""
    probs = clf.predict_proba(to_digits_features(images))
    return {"digits_is": inception_score(probs),
            "digits_confidence": float(probs.max(axis=1).mean())}


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two uint8 image grids (H, W, C) next to each other with a white gap."""
    h = max(left.shape[0], right.shape[0])
    pad = lambda g: np.pad(g, ((0, h - g.shape[0]), (0, 0), (0, 0)), constant_values=255)
    sep = np.full((h, gap, left.shape[2]), 255, np.uint8)
    return np.concatenate([pad(left), sep, pad(right)], axis=1)


def student_config(config, workdir: str):
    """The quickstart's student run, resolved for ``--mode distill``: distil from the teacher
    just trained in ``workdir``."""
    import copy

    c = copy.deepcopy(config)
    with c.unlocked():
        c.distill.teacher = os.path.join(workdir, "checkpoints")
        if c.quant.method == "fp":
            c.quant.method = "bidm"
            # the method's defaults (TBS, SPD) apply to the student, not to the teacher run
            c.distill.tbs, c.distill.loss = None, "auto"
        # A run of ~100 steps samples its raw weights: an EMA of decay 0.99 would still give
        # the freshly binarized (step-0) student a large weight.
        c.sample.use_ema = False
    return resolve_config(c, "distill")


def _phase(n: int, what: str, steps: int, batch: int, every: int) -> None:
    """Announces a phase; the loop's progress line (step, loss, speed, ETA of the phase)
    follows every ``every`` steps."""
    logging.info("quickstart [%d/2] %s: %d steps of batch %d (progress and ETA every %d "
                 "steps)", n, what, steps, batch, every)


def results_table(metrics: dict) -> str:
    """The run's figures as a small text table (printed at the end of the quickstart)."""
    rows = [("real digits", metrics["real_data"], "", None),
            ("FP teacher", metrics["teacher"], f"{metrics['teacher_steps']} steps",
             metrics.get("train_seconds")),
            (f"{metrics['student_method']} student", metrics["student"],
             f"{metrics['student_steps']} steps", metrics.get("student_seconds"))]
    lines = [f"{'':24} {'digits IS':>9} {'confidence':>10}  {'training':>20}"]
    for name, score, steps, secs in rows:
        took = f"{steps} ({secs:.0f} s)" if secs is not None else steps
        lines.append(f"{name:24} {score['digits_is']:9.2f} {score['digits_confidence']:10.2f}"
                     f"  {took:>20}")
    lines.append(f"{metrics['num_samples']} samples each; quickstart.png: teacher left, "
                 f"student right, from the same noise; total {metrics['total_seconds']:.0f} s")
    return "\n".join(lines)


def run_quickstart(config, workdir: str) -> dict:
    """Teacher → W1A1 student → side-by-side samples, the student's summary table and the
    figures printed; returns the metrics dict."""
    from bidm_jax.data.digits import load_digits_images

    t0 = time.time()
    t = config.train
    _phase(1, "training the FP teacher", t.num_steps, t.batch_size, t.log_every)
    final = modes.run("train", config, workdir)
    teacher = np.load(os.path.join(workdir, "samples", "samples_train.npz"))["arr_0"]
    t1 = time.time()
    scfg = student_config(config, workdir)
    student_dir = os.path.join(workdir, "student")
    os.makedirs(student_dir, exist_ok=True)
    _phase(2, f"distilling the {scfg.quant.method} W1A1 student", scfg.train.num_steps,
           scfg.train.batch_size, scfg.train.log_every)
    sfinal = modes.run("distill", scfg, student_dir)
    student = np.load(os.path.join(student_dir, "samples", "samples_distill.npz"))["arr_0"]

    real = load_digits_images(config.data.image_size,
                              config.data.get("channels", 3))[0][: len(teacher)]
    clf = digits_classifier()
    metrics = {"teacher_final_loss": final.get("loss"), "train_seconds": final.get("train_seconds"),
               "num_samples": int(len(teacher)), "teacher": digits_score(clf, teacher),
               "student_method": f"{scfg.quant.method} W1A1",
               "student_final_loss": sfinal.get("loss"),
               "student_noise_loss": sfinal.get("noise_loss"),
               "student_distill_loss": sfinal.get("distill_loss"),
               "student_train_seconds": sfinal.get("train_seconds"),
               "student_seconds": time.time() - t1,
               "student": digits_score(clf, student),
               "real_data": digits_score(clf, real), "total_seconds": time.time() - t0,
               "teacher_steps": int(config.train.num_steps),
               "student_steps": int(scfg.train.num_steps),
               "note": "digits IS: logistic-regression classifier on 8x8 digits, not Inception; "
                       "quickstart.png: teacher (left) and student (right) from the same noise"}
    image = side_by_side(logs.image_grid(teacher), logs.image_grid(student))
    logs.save_png(os.path.join(workdir, "quickstart.png"), image, upscale=4)
    with open(os.path.join(workdir, "quickstart_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    logging.info("quickstart done in %.0fs: %s", metrics["total_seconds"], json.dumps(metrics))
    print(f"\nthe student's model ({student_dir}, --mode summary):", flush=True)
    modes.run("summary", scfg, student_dir)
    print("\n" + results_table(metrics), flush=True)
    return metrics
