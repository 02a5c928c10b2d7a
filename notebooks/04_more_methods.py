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
# # More methods: BinaryDM, Q-DM and latent diffusion
#
# Besides BiDM (W1A1), the project implements
#
# * **BinaryDM** (W1A4): binary weights with an evolvable basis (two bases in the blocks
#   next to the input and output, one elsewhere), 4-bit LSQ activations, and low-rank
#   representation mimicking (LRM) of the teacher's features (`docs/binarydm.md`);
# * **Q-DM** (W4A4): 4-bit LSQ weights and activations, timestep-aware quantization of the
#   attention operands (TaQ) and noise-estimating mimicking (NeM) of the teacher
#   (`docs/qdm.md`);
# * **latent diffusion** (LDM-4 / LDM-8): the UNet works on the latents of a frozen
#   autoencoder (the "first stage"), and BiDM / BinaryDM binarize that UNet (`docs/ldm.md`).
#
# Everything here runs at toy sizes on the digits that ship with scikit-learn, so it finishes
# in minutes on a CPU: it shows the commands and what each run writes, not the papers'
# quality. The paper configs are listed at the end.

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
# `MODEL`: the pixel-space UNet and data shared by the teacher and its students (a student
# must have its teacher's architecture); `LATENT`: the latent run's data, autoencoder and
# UNet; the step counts of each run. (The automated test of this notebook shrinks all of
# them.)

# %% tags=["parameters"]
WORKDIR = "runs/nb04_methods"
MODEL = {"data.dataset": "digits", "data.image_size": 16, "data.random_flip": False,
         "model.resolution": 16, "model.ch": 32, "model.ch_mult": (1, 2),
         "model.num_res_blocks": 1, "model.attn_resolutions": (8,), "model.dropout": 0.0,
         "diffusion.loss_reduction": "mean", "diffusion.sample_steps": 50,
         "train.batch_size": 64, "sample.num_samples": 16, "sample.batch_size": 16,
         "sample.grid_size": 16}
LATENT = {"data.image_size": 16, "first_stage.ch": 32, "first_stage.ch_mult": (1, 2),
          "first_stage.num_res_blocks": 1, "first_stage.n_embed": 64, "model.resolution": 8,
          "model.ch": 32, "model.ch_mult": (1,), "model.num_res_blocks": 1,
          "model.attn_resolutions": (), "diffusion.sample_steps": 50, "train.batch_size": 16,
          "sample.num_samples": 16, "sample.batch_size": 16, "sample.grid_size": 16}
TEACHER_STEPS = 300
STUDENT_STEPS = 150
LATENT_STEPS = 100

# %% [markdown]
# ## Set-up

# %%
import json
import os
import shutil

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


def show(grids):
    """PNG grids side by side: {title: path}."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.3))
    for ax, (title, path) in zip(np.atleast_1d(axes), grids.items()):
        ax.imshow(plt.imread(path), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    plt.show()


shutil.rmtree(WORKDIR, ignore_errors=True)
print("jax", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## An FP teacher
#
# Both pixel-space students learn from the same small DDIM UNet, trained with
# `configs/cifar10_ddim_teacher.py` on the digits instead of CIFAR-10.

# %%
teacher = os.path.join(WORKDIR, "teacher")
run("--config", "configs/cifar10_ddim_teacher.py", "--workdir", teacher, "--mode", "train",
    **{"train.num_steps": TEACHER_STEPS, "train.lr": 2e-3, "train.warmup_steps": TEACHER_STEPS // 5,
       "train.ema_decay": 0.99, **MODEL})

# %% [markdown]
# ## BinaryDM (W1A4)
#
# `configs/cifar10_ddim_binarydm.py` holds the paper's values (`distill.faithful_to=code`
# switches to the released code's). Its learning rate (2e-5) suits 200k iterations; this
# short run uses a larger one and samples the raw weights instead of the EMA. The paper's
# EBB stage switch comes at half of the run (`quant.ebb_switch_step`).

# %%
short = {"distill.teacher": os.path.join(teacher, "checkpoints"), "train.num_steps": STUDENT_STEPS,
         "distill.lr": 1e-3, "sample.use_ema": False, **MODEL}
binarydm = os.path.join(WORKDIR, "binarydm")
run("--config", "configs/cifar10_ddim_binarydm.py", "--workdir", binarydm, "--mode", "distill", **short)

# %% [markdown]
# ## Q-DM (W4A4)
#
# `configs/cifar10_ddim_qdm.py`: LSQ W4A4 with TaQ on the attention q and k and the NeM
# loss. Q-DM has no public code; every choice the paper leaves open is a flag
# (`docs/qdm.md`), e.g. `quant.bits_w=3 quant.bits_a=3` for W3A3.

# %%
qdm = os.path.join(WORKDIR, "qdm")
run("--config", "configs/cifar10_ddim_qdm.py", "--workdir", qdm, "--mode", "distill", **short)

# %% [markdown]
# Each run sampled its model at the end from the same noise (`samples/grid_*.png`):

# %%
show({"FP teacher": os.path.join(teacher, "samples", "grid_train.png"),
      "BinaryDM W1A4": os.path.join(binarydm, "samples", "grid_distill.png"),
      "Q-DM W4A4": os.path.join(qdm, "samples", "grid_distill.png")})

# %% [markdown]
# ## What the bits buy
#
# `--mode summary` counts a config's parameters per bit width, its storage and its binary
# and FP operations, without training (the model is built abstractly). Here for the two
# students above, from their workdirs' saved configs; `--config configs/NAME.py` instead gives
# the full-width paper model's figures.

# %%
for name, workdir in (("BinaryDM W1A4", binarydm), ("Q-DM W4A4", qdm)):
    print(f"=== {name}")
    run("--workdir", workdir, "--mode", "summary")

# %% [markdown]
# ## Latent diffusion
#
# A latent model trains its UNet on `scale · encoder(x)` of a frozen autoencoder and decodes
# its samples back to images. The official VQ-f4 / KL-f8 autoencoders and LDM UNets are
# converted with `python -m bidm_jax.convert.ldm` (`docs/ldm.md`); here the autoencoder is
# a **tiny one with random weights** (`first_stage.random_init=True`), so the pipeline
# runs end to end but the decoded images mean nothing. The data is a folder of image files
# (LSUN and FFHQ are read the same way): the digits written as PNGs.

# %%
from PIL import Image
from bidm_jax.data.digits import load_digits_rgb

images = os.path.join(WORKDIR, "digit_images")
os.makedirs(images, exist_ok=True)
for i, im in enumerate(load_digits_rgb(32)[0][:128]):
    Image.fromarray(im).save(os.path.join(images, f"{i:04d}.png"))

latent = {"data.dataset": "image_folder", "data.path": images, "data.random_flip": False,
          "data.workers": 2, "first_stage.random_init": True, "first_stage.path": "",
          "model.dropout": 0.0, **LATENT}
ldm_teacher = os.path.join(WORKDIR, "ldm_teacher")
run("--config", "configs/lsun_bedrooms_ldm4_teacher.py", "--workdir", ldm_teacher, "--mode", "train",
    **{"train.num_steps": LATENT_STEPS, "train.lr": 1e-3, **latent})

# %% [markdown]
# BiDM on the latent UNet (`configs/lsun_bedrooms_ldm4_bidm.py`: BiDM's LDM recipe, TBS on
# the last output blocks, SPD on the block outputs). For long runs, `--mode encode_latents`
# caches the data's latents once and `first_stage.latents` trains from the cache.

# %%
ldm_bidm = os.path.join(WORKDIR, "ldm_bidm")
run("--config", "configs/lsun_bedrooms_ldm4_bidm.py", "--workdir", ldm_bidm, "--mode", "distill",
    **{"distill.teacher": os.path.join(ldm_teacher, "checkpoints"), "train.num_steps": LATENT_STEPS,
       "distill.lr": 1e-3, "sample.use_ema": False, **latent})
with open(os.path.join(ldm_bidm, "distill.json")) as f:
    info = json.load(f)
print({k: info[k] for k in ("method", "tbs", "first_stage") if k in info})
show({"latent FP teacher (decoded)": os.path.join(ldm_teacher, "samples", "grid_train.png"),
      "latent BiDM W1A1 (decoded)": os.path.join(ldm_bidm, "samples", "grid_distill.png")})

# %% [markdown]
# ## The paper configs
#
# | config | what |
# | --- | --- |
# | `configs/cifar10_ddim_binarydm.py` | BinaryDM W1A4 on DDIM CIFAR-10 (`quant.bits_a=8` / `32`: W1A8 / W1A32) |
# | `configs/cifar10_ddim_{binarydm_baseline,lsq}.py` | BinaryDM's Baseline (W1A4) and LSQ (W2A4) rows |
# | `configs/cifar10_ddim_qdm.py` | Q-DM W4A4 (`quant.taq=off distill.loss=none`: its LSQ baseline) |
# | `configs/lsun_bedrooms_ldm4_{teacher,bidm,binarydm}.py` | LDM-4 on LSUN-Bedrooms: FP, BiDM, BinaryDM |
# | `configs/lsun_churches_ldm8_{teacher,bidm}.py`, `configs/ffhq_ldm4_bidm.py` | LDM-8 on LSUN-Churches, LDM-4 on FFHQ |
