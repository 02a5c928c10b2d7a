# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # BiDM on CIFAR-10: teacher, distillation, sampling, metrics
#
# The BiDM paper's pipeline on CIFAR-10 32×32, on a GPU or TPU runtime
# (Runtime → Change runtime type):
#
# 1. an FP DDIM teacher: trained here, or the official DDIM CIFAR-10 checkpoint converted;
# 2. a BiDM W1A1 student distilled from it (`configs/cifar10_ddim.py`: TBS + SPD);
# 3. samples of both models from the same noise;
# 4. FID, sFID, IS, precision and recall, with the FID Inception weights when they can be
#    had and with the project's proxy feature network otherwise (its numbers are labelled
#    `proxy_*` and are not comparable with published FIDs);
# 5. the loss curves and the learnt TBS coefficients over the timesteps.
#
# The default lengths below fit a Colab session and do **not** reproduce the paper (its
# teacher trained for 800k steps and the student for 100k iterations; its FIDs use 50,000
# samples). Lengthen them, or start from the converted official teacher, for real numbers.

# %% tags=["skip-ci"]
# Colab set-up: clone the repository, install it and the jax build of this runtime.
# Outside Colab this cell does nothing (install the repository yourself: see README.md).
REPO_URL = "https://github.com/YOUR_GITHUB_USER/bidm_jax"  # the repository to run

import os, shutil, subprocess, sys

if "google.colab" in sys.modules:
    if not os.path.isdir("bidm_jax_repo"):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "bidm_jax_repo"], check=True)
    os.chdir("bidm_jax_repo")
    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0"):
        jax_build = ["jax[tpu]"]
    elif shutil.which("nvidia-smi"):
        jax_build = ["jax[cuda12]"]
    else:
        jax_build = []
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".", *jax_build], check=True)

# %% [markdown]
# ## Parameters
#
# * `DATA`: the official `cifar-10-python.tar.gz` (downloaded below when missing), its
#   extracted folder, or the project's JPEG npz;
# * `TEACHER_CKPT`: the official EMA checkpoint `model-790000.ckpt` of pesser/pytorch_diffusion
#   (`ema_diffusion_cifar10_model`; upload it to the runtime), converted below; empty: train
#   a teacher here for `TEACHER_STEPS` steps;
# * `DISTILL_STEPS`: distillation iterations of the student;
# * `NUM_SAMPLES`: samples per model for the metrics (FID needs at least 2,048; the papers
#   use 50,000);
# * `FEATURES`: `"auto"` uses the FID Inception weights if they are cached or can be
#   downloaded (converting them needs torch, which Colab has), else trains the proxy network;
#   `"proxy"` always uses the proxy;
# * `SIZE`: `--config` overrides given to every command (the automated test of this notebook
#   shrinks the UNet and the metrics with it).

# %% tags=["parameters"]
WORKDIR = "runs/nb02_cifar10"
DATA = "data/cifar-10-python.tar.gz"
TEACHER_CKPT = ""
TEACHER_STEPS = 5000
DISTILL_STEPS = 2000
NUM_SAMPLES = 5000
FEATURES = "auto"
PROXY_STEPS = 3000
SIZE = {}

# %% [markdown]
# ## Set-up
#
# Each step calls the project's command line (`python -m bidm_jax.main`) inside this Python
# process (`bidm_jax.main.cli`). A run that fails raises with the command's one-line error.

# %%
import json
import os
import urllib.request

if not os.path.isdir("configs") and os.path.isdir(os.path.join("..", "configs")):
    os.chdir("..")  # opened from notebooks/: run from the repository root

import jax
import matplotlib.pyplot as plt
import numpy as np
from bidm_jax.main import cli


def run(*args, **config):
    """`python -m bidm_jax.main ARGS --config.K=V ...` in this process."""
    fmt = lambda v: repr(v).replace(" ", "") if isinstance(v, tuple) else str(v)
    argv = ["bidm_jax.main", *map(str, args)] + [f"--config.{k}={fmt(v)}" for k, v in config.items()]
    code = cli(argv)
    if code:
        raise RuntimeError(f"exit code {code}: {' '.join(argv)}")


def ema_decay(steps):
    """An EMA that averages over about the last tenth of a run (the configs' 0.9999 suits
    runs of 100k steps and more; on a short run it would still hold the initial weights)."""
    return min(0.9999, max(0.5, 1 - 10 / max(steps, 1)))


TEACHER = os.path.join(WORKDIR, "teacher")
STUDENT = os.path.join(WORKDIR, "student")
COMMON = {"data.path": DATA, **SIZE}
print("jax", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## Data
#
# CIFAR-10's official archive (163 MB) from its authors' page, unless `DATA` exists.

# %%
if not os.path.exists(DATA):
    os.makedirs(os.path.dirname(DATA) or ".", exist_ok=True)
    urllib.request.urlretrieve("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                               DATA + ".part")
    os.replace(DATA + ".part", DATA)
print(DATA, os.path.getsize(DATA), "bytes")

# %% [markdown]
# ## 1. The FP teacher
#
# Either the official checkpoint, converted to a project checkpoint in `TEACHER/checkpoints`
# (torch reads the `.ckpt` once), or the ermongroup DDIM UNet (35.7M parameters) trained
# with the DDPM recipe of `configs/cifar10_ddim_teacher.py` for `TEACHER_STEPS` steps. A
# workdir that already holds checkpoints resumes from its latest one.

# %%
if TEACHER_CKPT:
    if not os.path.isdir(os.path.join(TEACHER, "checkpoints")):
        import subprocess, sys
        subprocess.run([sys.executable, "-m", "bidm_jax.convert.ddim_cifar10", "--ckpt",
                        TEACHER_CKPT, "--out", os.path.join(TEACHER, "checkpoints")], check=True)
else:
    run("--config", "configs/cifar10_ddim_teacher.py", "--workdir", TEACHER, "--mode", "train",
        **{"train.num_steps": TEACHER_STEPS, "train.warmup_steps": min(5000, TEACHER_STEPS // 10),
           "train.ema_decay": ema_decay(TEACHER_STEPS), **COMMON})

# %% [markdown]
# ## 2. Distillation of the BiDM student
#
# `configs/cifar10_ddim.py` holds the paper's values (Adam lr 6e-5, λ_SPD 3e-2, TBS α_init
# 0.3, batch 64). The student starts from the teacher's weights, binarizes every block conv
# (1-bit weights, 1-bit activations) and learns from the teacher's noise estimates and
# features (SPD) while its TBS table learns how much of the previous sampling step's
# features to reuse at each timestep.

# %%
run("--config", "configs/cifar10_ddim.py", "--workdir", STUDENT, "--mode", "distill",
    **{"distill.teacher": os.path.join(TEACHER, "checkpoints"), "train.num_steps": DISTILL_STEPS,
       "train.ema_decay": ema_decay(DISTILL_STEPS), **COMMON})

# %% [markdown]
# ## 3. Sampling
#
# `--mode sample` writes `samples/samples.npz` (uint8, the ADM evaluator's format) and
# `samples/grid.png`: 100-step DDIM, η = 0, the same seed, so both models start from the
# same noise.

# %%
models = {"FP teacher": ["--config", "configs/cifar10_ddim_teacher.py", "--workdir", TEACHER],
          "BiDM W1A1": ["--config", "configs/cifar10_ddim.py", "--workdir", STUDENT]}
sampling = {**COMMON, "sample.num_samples": NUM_SAMPLES, "sample.batch_size": min(NUM_SAMPLES, 500),
            "sample.grid_size": min(NUM_SAMPLES, 64)}
for name, args in models.items():
    run(*args, "--mode", "sample", **sampling)

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, (name, args) in zip(axes, models.items()):
    ax.imshow(plt.imread(os.path.join(args[-1], "samples", "grid.png")))
    ax.set_title(name)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. FID, sFID, IS, precision and recall
#
# The FID InceptionV3 (pytorch-fid's port of the TF graph) is fetched and converted once
# into `~/.cache/bidm_jax`. Without it, a small CIFAR-10 classifier (the proxy network) is
# trained first (`--mode train_proxy`); every number is then prefixed `proxy_`: it ranks
# models evaluated with the same proxy, nothing more. The reference statistics of the
# training set are computed once and shared by both evaluations.

# %%
features = FEATURES
if features == "auto":
    from bidm_jax.metrics import weights
    try:
        weights.resolve_inception_npz()
        features = "inception"
    except Exception as e:  # no network, no torch, ...
        print(f"FID Inception weights unavailable ({e}); using the proxy network")
        features = "proxy"

evaluation = {"eval.features": features, "eval.num_samples": 0,
              "eval.ref_path": os.path.join(WORKDIR, "eval", f"ref_cifar10_train_{features}.npz")}
if features == "proxy":
    evaluation["eval.proxy_path"] = os.path.join(WORKDIR, "proxy", "proxy_features.npz")
    if not os.path.exists(evaluation["eval.proxy_path"]):
        run("--config", "configs/cifar10_ddim_teacher.py", "--workdir", os.path.join(WORKDIR, "proxy"),
            "--mode", "train_proxy", **{"eval.proxy_steps": PROXY_STEPS, **evaluation, **COMMON})

results = {}
for name, args in models.items():
    run(*args, "--mode", "eval", **{**evaluation, **COMMON})
    with open(os.path.join(args[-1], "eval", "metrics.json")) as f:
        results[name] = json.load(f)

prefix = "proxy_" if features == "proxy" else ""
keys = [prefix + k for k in ("fid", "sfid", "is", "precision", "recall")]
print("features:", next(iter(results.values()))["feature_network"])
print(f"{'':12s}" + "".join(f"{k:>16s}" for k in keys))
for name, m in results.items():
    print(f"{name:12s}" + "".join(f"{m[k]:16.3f}" for k in keys))
for name, m in results.items():
    for w in m.get("warnings", []):
        print(f"{name}: {w}")

# %% [markdown]
# ## 5. Loss curves
#
# Every run logs its metrics to `logs/metrics.jsonl`, one JSON object per logged step
# (also as TensorBoard events). The student's loss is the sum of the noise loss and the
# distillation loss. A converted teacher has no curve.

# %%
def loss_rows(workdir):
    path = os.path.join(workdir, "logs", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for ax, (name, args) in zip(axes, models.items()):
    rows = loss_rows(args[-1])
    for key in sorted({k for r in rows for k in r if "loss" in k}):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_title(name)
    ax.set_xlabel("step")
    if rows:
        ax.legend()
plt.show()

# %% [markdown]
# ## 6. The TBS coefficients over the timesteps
#
# BiDM's timestep-friendly binary structure blends a feature with the previous sampling
# step's: `h ← (1 − c)·h + c·h_prev`, with one learnt coefficient `c` per ten timesteps and
# per mixing point (the table `tbs.coefficients`, rows ⌊t/10⌋). Read from the student's
# checkpoint (EMA weights).

# %%
from bidm_jax.training import checkpoint

params = checkpoint.load_params(os.path.join(STUDENT, "checkpoints"), use_ema=True)
table = np.asarray(params["tbs.coefficients"])
plt.figure(figsize=(7, 3.5))
for column in range(table.shape[1]):
    plt.plot(np.arange(table.shape[0]) * 10, table[:, column], label=f"mixing point {column}")
plt.xlabel("timestep t")
plt.ylabel("coefficient c")
plt.legend()
plt.show()
print("table", table.shape, "min", table.min(), "max", table.max())
