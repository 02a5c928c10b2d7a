"""``--mode train`` (the FP teacher) and ``--mode distill`` (a low-bit student).

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher
    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm \
        --config.distill.teacher=checkpoints/ddim_cifar10_ema

Both train with the shared sharded loop (data parallel over the mesh, multi-host, EMA,
checkpoints and resume under ``{workdir}``) and sample at the end: ``samples/samples_train``
or ``samples/samples_distill`` (.npz and grid .png) and ``final.json``; the resolved config
to ``config.json`` (later modes on the workdir use it: :mod:`bidm_jax.saved_config`);
distillation also writes the resolved settings to ``distill.json``. A latent model
(``first_stage.kind``; docs/ldm.md) trains on its first stage's latents, encoded in the step
or read from ``first_stage.latents``, and its samples are decoded to images.
"""
from __future__ import annotations

import dataclasses

import jax
from absl import logging

from bidm_jax import build, first_stage, latent, parallel
from bidm_jax.distill import trajectory
from bidm_jax.models.functional import count
from bidm_jax.training.loop import fit


def _first_stage(config, mode: str):
    """The frozen autoencoder of a latent model (None in pixel space); fails early."""
    first_stage.require(config, mode)
    return first_stage.load(config) if first_stage.enabled(config) else None


def run_train(config, workdir: str) -> dict:
    """Trains the FP model (on a first stage's latents when ``first_stage.kind`` is set);
    returns the last logged metrics."""
    fs = _first_stage(config, "train")
    source = latent.batch_source(config, fs)  # fail on missing data before building anything
    trainable = latent.attach(build.teacher_trainable(config), config, fs)
    logging.info("model: %d parameters, %d devices, %d processes", count(trainable.params),
                 jax.device_count(), jax.process_count())
    return fit(config, workdir, trainable, source, mode="train")


def run_distill(config, workdir: str) -> dict:
    """Distils the student of ``quant.method`` from ``distill.teacher``; returns the last
    logged metrics (loss, noise_loss, distill_loss, ...)."""
    fs = _first_stage(config, "distill")
    teacher_fm, teacher_params = build.load_teacher(config)  # fail early, before data
    if config.distill.data == trajectory.DATA:  # data-free: no dataset is opened
        source = trajectory.data_free_source(config, build.input_shape(config))
    else:
        source = latent.batch_source(config, fs)
    # Replicated on the mesh, the frozen teacher enters the jitted step as an argument-like
    # constant (not inlined into the program).
    mesh = parallel.make_data_mesh(config.mesh.data)
    teacher_params = parallel.place(teacher_params, parallel.replicated(mesh))
    trainable, _ = build.distill_trainable(config, teacher_fm, teacher_params)
    if config.distill.data != trajectory.DATA:  # data-free batches are latents already
        trainable = latent.attach(trainable, config, fs)
    elif fs is not None:  # ... but its samples still decode
        trainable = dataclasses.replace(trainable, decode=fs.decode,
                                        decode_values=dict(fs.values))
    return fit(config, workdir, trainable, source, mode="distill")
