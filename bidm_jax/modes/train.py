"""``--mode train`` (the FP teacher) and ``--mode distill`` (a low-bit student).

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher
    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm \
        --config.distill.teacher=checkpoints/ddim_cifar10_ema

Both train with the shared sharded loop (data parallel over the mesh, multi-host, EMA,
checkpoints and resume under ``{workdir}``) and sample at the end: ``samples/samples_train``
or ``samples/samples_distill`` (.npz and grid .png) and ``final.json``; the resolved config
to ``config.json`` (later modes on the workdir use it: :mod:`bidm_jax.saved_config`);
distillation also writes the resolved settings to ``distill.json``.
"""
from __future__ import annotations

import jax
from absl import logging

from bidm_jax import build, parallel
from bidm_jax.distill import trajectory
from bidm_jax.models.functional import count
from bidm_jax.training.loop import batch_source, fit


def run_train(config, workdir: str) -> dict:
    """Trains the FP model; returns the last logged metrics."""
    source = batch_source(config)  # fail on missing data before building anything
    trainable = build.teacher_trainable(config)
    logging.info("model: %d parameters, %d devices, %d processes", count(trainable.params),
                 jax.device_count(), jax.process_count())
    return fit(config, workdir, trainable, source, mode="train")


def run_distill(config, workdir: str) -> dict:
    """Distils the student of ``quant.method`` from ``distill.teacher``; returns the last
    logged metrics (loss, noise_loss, distill_loss, ...)."""
    teacher_fm, teacher_params = build.load_teacher(config)  # fail early, before data
    if config.distill.data == trajectory.DATA:  # data-free: no dataset is opened
        source = trajectory.data_free_source(config, build.input_shape(config))
    else:
        source = batch_source(config)
    # Replicated on the mesh, the frozen teacher enters the jitted step as an argument-like
    # constant (not inlined into the program).
    mesh = parallel.make_data_mesh(config.mesh.data)
    teacher_params = parallel.place(teacher_params, parallel.replicated(mesh))
    trainable, _ = build.distill_trainable(config, teacher_fm, teacher_params)
    return fit(config, workdir, trainable, source, mode="distill")
