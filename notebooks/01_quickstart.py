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
# # BiDM quickstart: a tiny teacher and its 1-bit student
#
# This notebook runs the project's quickstart end to end on a CPU in a few minutes, with no
# data download: the handwritten digits that ship with scikit-learn are the training set.
#
# 1. a small full-precision (FP) DDIM UNet, the **teacher**, learns to generate digits;
# 2. a **BiDM W1A1 student** (1-bit weights *and* 1-bit activations, with BiDM's
#    timestep-friendly binary structure and space patched distillation) is distilled from it;
# 3. both sample from the same initial noise, so their images can be compared pair by pair,
#    and a digit classifier scores them (an Inception-score analogue, not a paper metric).
#
# It runs on any Colab runtime (CPU is enough).

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
# `OVERRIDES` are `--config.SECTION.FIELD=VALUE` settings on top of `configs/quickstart.py`,
# for example `{"quant.method": "xnor"}` for a plain XNOR-Net student or
# `{"train.num_steps": 2000}` for a longer-trained teacher. (The automated test of this
# notebook replaces this cell with a tiny model and a handful of steps.)

# %% tags=["parameters"]
WORKDIR = "runs/nb01_quickstart"
OVERRIDES = {}

# %% [markdown]
# ## Set-up
#
# Every step below calls the project's command line, `python -m bidm_jax.main`, inside this
# Python process (`bidm_jax.main.cli`), so the programs jax compiles stay in memory between
# steps. A run that fails raises with the command's one-line error.

# %%
import json
import os
import shutil

if not os.path.isdir("configs") and os.path.isdir(os.path.join("..", "configs")):
    os.chdir("..")  # opened from notebooks/: run from the repository root

import jax
from bidm_jax.main import cli


def run(*args, **config):
    """`python -m bidm_jax.main ARGS --config.K=V ...` in this process."""
    fmt = lambda v: repr(v).replace(" ", "") if isinstance(v, tuple) else str(v)
    argv = ["bidm_jax.main", *map(str, args)] + [f"--config.{k}={fmt(v)}" for k, v in config.items()]
    code = cli(argv)
    if code:
        raise RuntimeError(f"exit code {code}: {' '.join(argv)}")


print("jax", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## Teacher, student, samples: one command
#
# `--mode quickstart` trains the teacher (written to `WORKDIR/checkpoints`), distils the
# BiDM student from it, samples both from the same noise and writes
# `WORKDIR/quickstart.png` and `WORKDIR/quickstart_metrics.json`. The progress lines show
# the loss and the speed. The workdir is cleared first: a workdir that already holds a
# finished run would otherwise be resumed, not retrained.

# %%
shutil.rmtree(WORKDIR, ignore_errors=True)
run("--config", "configs/quickstart.py", "--workdir", WORKDIR, "--mode", "quickstart",
    **OVERRIDES)

# %% [markdown]
# ## Teacher and student side by side
#
# Left: the FP teacher; right: the W1A1 student. The same position in both grids started
# from the same noise, so differences are what binarization changed.

# %%
from IPython.display import Image, display

display(Image(filename=os.path.join(WORKDIR, "quickstart.png")))

# %% [markdown]
# ## The summary table
#
# The digit classifier's Inception-score analogue (`digits_is`, at most 10; real digits are
# scored too, as the ceiling) and its mean confidence, then the run's other figures.

# %%
with open(os.path.join(WORKDIR, "quickstart_metrics.json")) as f:
    metrics = json.load(f)

rows = {name: value for name, value in metrics.items() if isinstance(value, dict)}
columns = sorted({key for value in rows.values() for key in value})
print(f"{'':14s}" + "".join(f"{c:>20s}" for c in columns))
for name, value in rows.items():
    cells = [value.get(c) for c in columns]
    print(f"{name:14s}" + "".join(f"{v:20.3f}" if isinstance(v, (int, float)) else f"{str(v):>20s}"
                                  for v in cells))
print()
for name, value in metrics.items():
    if not isinstance(value, dict):
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")

# %% [markdown]
# Next: `02_bidm_cifar10` runs the paper pipeline on CIFAR-10 (GPU or TPU runtime),
# `03_packed_inference` turns a student into a file of 1-bit words and samples from it,
# `04_more_methods` distils BinaryDM and Q-DM students and a latent-diffusion model.
