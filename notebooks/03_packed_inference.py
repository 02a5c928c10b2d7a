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
# # Packed 1-bit inference: export, bytes, images, speed
#
# A trained W1A1 student stores its binary weights as float32 kernels, and its forward pass
# takes their signs. `--mode export` keeps only what inference needs: each binary layer's
# sign bits, 32 to an int32 word, and its per-channel scale; the layers that stay FP (first
# and last convs, time embedding, norms, 1×1 shortcuts, the TBS table) are kept as float32.
# This notebook
#
# 1. makes a small BiDM student (or takes the workdir of one you have, e.g. from
#    `02_bidm_cifar10`),
# 2. exports it and compares the bytes on disk with the FP teacher's,
# 3. samples the FP teacher, the fake-quant student and the packed student from the same
#    noise,
# 4. times the three on the runtime at hand (CPU, GPU or TPU),
# 5. checks, layer by layer, that the packed student computes what the fake-quant one does.
#
# Details of the file format and of the integer execution: `docs/export.md`.

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
# * `STUDENT`: the workdir of a distilled W1A1 student (its saved config and checkpoints are
#   used, and its teacher is read from `distill.teacher`); empty: train a small teacher on the
#   digits with `configs/quickstart.py` and distil a BiDM student here;
# * `SIZE`: `--config` overrides of that small run (the automated test shrinks it further);
# * `NUM_IMAGES`, `SPEED_BATCH`, `SPEED_REPEATS`: images shown, batch and repeats of the timing.

# %% tags=["parameters"]
WORKDIR = "runs/nb03_packed"
STUDENT = ""
SIZE = {}
NUM_IMAGES = 16
SPEED_BATCH = 64
SPEED_REPEATS = 5

# %% [markdown]
# ## Set-up

# %%
import copy
import json
import os
import shutil
import statistics
import time

if not os.path.isdir("configs") and os.path.isdir(os.path.join("..", "configs")):
    os.chdir("..")  # opened from notebooks/: run from the repository root

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from bidm_jax import build, export, saved_config
from bidm_jax.configlib import resolve_config
from bidm_jax.diffusion.sampling import initial_noise, make_sampler
from bidm_jax.kernels.packing import unpack_signs_host
from bidm_jax.main import cli
from bidm_jax.training import checkpoint


def run(*args, **config):
    """`python -m bidm_jax.main ARGS --config.K=V ...` in this process."""
    fmt = lambda v: repr(v).replace(" ", "") if isinstance(v, tuple) else str(v)
    argv = ["bidm_jax.main", *map(str, args)] + [f"--config.{k}={fmt(v)}" for k, v in config.items()]
    code = cli(argv)
    if code:
        raise RuntimeError(f"exit code {code}: {' '.join(argv)}")


print("jax", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## 1. A student
#
# Without `STUDENT`: the quickstart's teacher (`--mode train`), then a BiDM student
# (`--mode distill --config.quant.method=bidm`). The short distillation samples its raw
# weights (`sample.use_ema=False`): an EMA would still be close to the untrained student.

# %%
if not STUDENT:
    teacher_dir, STUDENT = os.path.join(WORKDIR, "teacher"), os.path.join(WORKDIR, "student")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    run("--config", "configs/quickstart.py", "--workdir", teacher_dir, "--mode", "train", **SIZE)
    run("--config", "configs/quickstart.py", "--workdir", STUDENT, "--mode", "distill",
        **{"quant.method": "bidm", "distill.teacher": os.path.join(teacher_dir, "checkpoints"),
           "sample.use_ema": False, **SIZE})
config = resolve_config(saved_config.load(STUDENT)[0], "sample")
print("student:", config.quant.method, "| teacher:", config.distill.teacher)

# %% [markdown]
# ## 2. Export and bytes on disk
#
# `--mode export` writes `export/packed.npz` and `export/export.json`; the report compares
# the packed file with an npz of the FP32 teacher's parameters written the same way.

# %%
run("--workdir", STUDENT, "--mode", "export")
packed_path = os.path.join(STUDENT, "export", "packed.npz")
with open(os.path.join(STUDENT, "export", "export.json")) as f:
    report = json.load(f)
for key in ("packed_file_bytes", "teacher_fp32_npz_bytes", "student_fp32_npz_bytes",
            "ratio_teacher_fp32_npz_over_packed", "packed_tensors", "packed_weights",
            "packed_bytes", "fp_params", "fp_bytes"):
    print(f"{key:36s} {report[key]:,}" if isinstance(report[key], int) else f"{key:36s} {report[key]:.2f}")
print(f"{'on disk':36s} {os.path.getsize(packed_path):,}")

# %% [markdown]
# At this small size the FP layers (first and last convs, norms, shortcuts) weigh more than
# the binary kernels, so the ratio is modest; the full-width CIFAR-10 student's file is
# 8.66× smaller than its teacher's (`docs/export.md`).
#
# ## 3. FP teacher, fake-quant student, packed student
#
# The three models are built from the student's config: the teacher with `quant.method=fp`
# and the teacher's checkpoint, the fake-quant student (FP kernels, `sign` in the forward
# pass) from its checkpoint, and the packed student from the file, its binary convolutions
# running as int8 × int8 products of the unpacked bits (`export.kernel=xla`). All three
# sample from the same noise with the same sampler.

# %%
teacher_config = copy.deepcopy(config)
teacher_config.quant.method, teacher_config.mode = "fp", "train"
_, teacher_fn, _ = build.sampling_model(teacher_config)
teacher_values = checkpoint.load_params(config.distill.teacher, use_ema=config.distill.teacher_use_ema)

fm, student_fn, student_carry = build.sampling_model(config)
params, aux = checkpoint.load_params(os.path.join(STUDENT, "checkpoints"),
                                     use_ema=report["ema"], with_aux=True)  # the exported weights
student_values = {**params, **build.sampling_aux(aux)}

config.export.kernel = "xla"
pfm, packed_fn, packed_carry, packed_values = export.packed_sampling_model(config, packed_path)

variants = {"FP teacher": (teacher_fn, None, teacher_values),
            "fake-quant W1A1": (student_fn, student_carry, student_values),
            "packed W1A1": (packed_fn, packed_carry, packed_values)}
samplers = {name: jax.jit(make_sampler(fn, config, carry)) for name, (fn, carry, _) in variants.items()}
shape = build.input_shape(config)
x_T = jnp.asarray(initial_noise(config.sample.seed, 0, NUM_IMAGES, shape))
images = {name: np.asarray(samplers[name](variants[name][2], x_T, jax.random.key(0)))
          for name in variants}

fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
for ax, (name, imgs) in zip(axes, images.items()):
    n = int(np.ceil(np.sqrt(len(imgs))))
    grid = np.ones((n * imgs.shape[1], n * imgs.shape[2], 3), np.uint8) * 255
    for i, im in enumerate(imgs):
        r, c = divmod(i, n)
        grid[r * im.shape[0]:(r + 1) * im.shape[0], c * im.shape[1]:(c + 1) * im.shape[1]] = im
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(name)
    ax.axis("off")
plt.show()
diff = np.abs(images["packed W1A1"].astype(int) - images["fake-quant W1A1"].astype(int))
print(f"packed vs fake-quant: max pixel difference {diff.max()}, pixels that differ {np.mean(diff > 0):.2%}")

# %% [markdown]
# ## 4. Speed on this runtime
#
# Each sampler is compiled once (above) and then timed `SPEED_REPEATS` times on a batch of
# `SPEED_BATCH` (median). At small sizes and on a CPU the figures say little: sampling is
# memory bound, and the binary layers do more elementwise work (τ shift, sign, the K map,
# the shortcut) than the FP convs they replace. `benchmarks/packed_sampling.py` times the
# full-width UNet on a GPU (`benchmarks/packed_sampling.md`).

# %%
x_speed = jnp.asarray(initial_noise(config.sample.seed, 0, SPEED_BATCH, shape))
print(f"{config.diffusion.sample_steps}-step {config.diffusion.sampler} sampling, batch {SPEED_BATCH}, "
      f"{jax.devices()[0].platform}")
for name, (_, _, values) in variants.items():
    samplers[name](values, x_speed, jax.random.key(0)).block_until_ready()  # compile for this batch
    times = []
    for _ in range(SPEED_REPEATS):
        t0 = time.perf_counter()
        samplers[name](values, x_speed, jax.random.key(0)).block_until_ready()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    print(f"{name:18s} {seconds * 1e3:9.1f} ms   {SPEED_BATCH / seconds:9.1f} images/s")

# %% [markdown]
# ## 5. Per-layer sign agreement
#
# Two checks that the file holds the student:
#
# * **weights**: the bits of every packed layer, unpacked, against `sign(W)` of the
#   checkpoint's kernel (1.0 unless a weight is exactly 0, which packs as +1);
# * **features**: one forward pass of both students at one timestep, and for every tapped
#   block output the fraction of values with the same sign (away from float noise around 0,
#   |h| > 1e-4). The integer products are exact, so differences come only from the float
#   summation order around the binary cores.

# %%
_, _, meta = export.read_packed(packed_path)
stored = np.load(packed_path)
print(f"{'layer':40s} {'weights':>8s}")
for base, info in sorted(meta["packed_layers"].items()):
    kernel = np.asarray(params[f"{base}.kernel"])
    words = stored[f"{base}.kernel_bits"][0]
    signs = unpack_signs_host(words, int(info["k"])).reshape(kernel.shape)
    print(f"{base:40s} {np.mean(signs == np.where(kernel == 0, 1, np.sign(kernel))):8.4f}")

x = x_T[:4]
t = jnp.full((x.shape[0],), config.diffusion.num_timesteps // 2, jnp.int32)


def features(f, values, carry_init):
    feats = {}
    carry = carry_init(x) if carry_init is not None else None
    eps, _ = f.module(values)(x, t, carry, features=feats)
    return eps, feats


with jax.default_matmul_precision("highest"):
    (e0, f0), (e1, f1) = jax.jit(lambda a, b: (features(fm, a, student_carry),
                                              features(pfm, b, packed_carry)))(student_values, packed_values)
print(f"\n{'feature':40s} {'signs':>8s}")
for name in f0:
    a, b = np.asarray(f0[name]), np.asarray(f1[name])
    far = np.abs(a) > 1e-4
    print(f"{name:40s} {np.mean(np.sign(a[far]) == np.sign(b[far])):8.4f}")
print(f"\nmax |eps_packed - eps_fakequant| = {np.max(np.abs(np.asarray(e1) - np.asarray(e0))):.2e}")
