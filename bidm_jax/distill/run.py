"""``--mode distill``: trains a binary (or FP) student from a frozen FP teacher.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm \
        --config.distill.teacher=checkpoints/ddim_cifar10_ema

Steps: resolve the ``distill`` section (``faithful_to``, per-method TBS/loss defaults,
``bidm_jax.distill.config``); restore the teacher; build the student from the teacher's
parameters through ``quant.build_student`` (method = ``quant.method``); attach the TBS table
when ``distill.tbs``; train with the shared sharded loop (``bidm_jax.train.Loop``: data
parallel over the mesh, multi-host, EMA, checkpoints and resume under ``{workdir}``); sample
with the TBS carry and write ``samples/samples_distill.npz`` and ``samples/grid_distill.png``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from bidm_jax import checkpoint, parallel
from bidm_jax.data.pipeline import BatchSource, load_images
from bidm_jax.distill import objective
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.distill.config import resolve_distill_config
from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional, check_shapes
from bidm_jax.quant import build_student
from bidm_jax.train import Loop, place


@dataclasses.dataclass
class DistillSetup:
    """Everything a distillation run needs (also used by tests and benchmarks)."""

    config: object                       # resolved config
    teacher_fm: Functional
    teacher_params: dict
    student_fm: Functional
    topology: tbs_lib.Topology | None    # None: no TBS
    feature_names: list[str]
    carry_shapes: dict                   # source -> per-sample ShapeDtypeStruct ({} without TBS)
    loss_fn: Callable
    sample_model_fn: Callable
    carry_init: Callable | None


def teacher_functional(config) -> Functional:
    """The FP UNet's graph and parameter names (abstract: no weights are initialised)."""
    return Functional(nnx.eval_shape(lambda: build_unet(config.model, rngs=nnx.Rngs(0))))


def load_teacher(config) -> tuple[Functional, dict]:
    """Restores ``distill.teacher`` (EMA weights unless ``distill.teacher_use_ema=False``).
    Raises a ValueError/FileNotFoundError saying how to get a teacher when it is missing."""
    path = config.distill.teacher
    how = ("train one with `--mode train` (e.g. --config configs/cifar10_ddim_teacher.py) or "
           "convert the official checkpoint with `python -m bidm_jax.convert.ddim_cifar10 "
           "--ckpt model-790000.ckpt --out <dir>`, then pass --config.distill.teacher=<dir>")
    if not path:
        raise ValueError(f"distill.teacher is empty: the FP teacher checkpoint is required; {how}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no FP teacher checkpoint at distill.teacher={path!r}; {how}")
    fm = teacher_functional(config)
    params = checkpoint.load_params(path, use_ema=config.distill.teacher_use_ema)
    check_shapes(fm.shapes(), params, f"teacher checkpoint {path}")
    return fm, {k: np.asarray(v) for k, v in params.items()}


def build_distill(config, teacher_fm: Functional, teacher_params: dict) -> DistillSetup:
    """Student, TBS topology and loss for ``config`` (resolved here if it is not yet).

    teacher_params: flat FP params (numpy or replicated jax arrays), e.g. from
    :func:`load_teacher`. The student is ``build_student(teacher, model, quant)`` plus, with
    ``distill.tbs``, the coefficient table ``tbs.coefficients`` (init ``distill.tbs_init``).
    """
    if config.distill.tbs is None or config.distill.loss == "auto":
        config = resolve_distill_config(config)
    mcfg = config.model
    shape = (mcfg.resolution, mcfg.resolution, mcfg.in_channels)
    teacher_state = nnx.state(teacher_fm.module(teacher_params), nnx.Param)
    student = build_student(teacher_state, mcfg, config.quant, rngs=nnx.Rngs(config.seed),
                            input_shape=(1,) + shape)
    topology, shapes = attach_student_tbs(student, config)
    names = objective.spd_feature_names(student)
    student_fm = Functional(student)
    loss_fn = objective.make_loss_fn(config, student_fm, teacher_fm, teacher_params,
                                     topology=topology, feature_names=names)
    model_fn, carry_init = objective.make_sample_fns(student_fm, topology, shapes)
    return DistillSetup(config, teacher_fm, teacher_params, student_fm, topology, names, shapes,
                        loss_fn, model_fn, carry_init)


def attach_student_tbs(student: nnx.Module, config) -> tuple[tbs_lib.Topology | None, dict]:
    """With ``distill.tbs`` (resolved config): attaches the TBS table to ``student`` in place
    and returns (topology, per-sample carry shapes); else (None, {})."""
    dist, mcfg = config.distill, config.model
    if not dist.tbs:
        return None, {}
    topology = tbs_lib.make_topology(student, dist.tbs_topology, dist.tbs_last_n)
    tbs_lib.attach_tbs(student, topology, dist.tbs_init, config.diffusion.num_timesteps)
    shape = (mcfg.resolution, mcfg.resolution, mcfg.in_channels)
    return topology, tbs_lib.feature_shapes(student, topology, shape)


def describe(setup: DistillSetup) -> dict:
    """The resolved settings a run used (written to ``{workdir}/distill.json``)."""
    c = setup.config
    return {"method": c.quant.method, "faithful_to": c.distill.faithful_to,
            "lr": c.train.lr, "loss": c.distill.loss, "spd_lambda": c.distill.spd_lambda,
            "tbs": bool(c.distill.tbs), "tbs_topology": c.distill.tbs_topology if c.distill.tbs
            else None, "tbs_init": c.distill.tbs_init if c.distill.tbs else None,
            "tbs_mix": [list(m) for m in setup.topology.mix] if setup.topology else [],
            "tbs_carry_floats_per_sample": tbs_lib.carry_floats(setup.carry_shapes),
            "distill_features": setup.feature_names if c.distill.loss != "none" else [],
            "student_params": int(sum(np.size(v) for v in setup.student_fm.params.values()))}


def run_distill(config, workdir: str) -> dict:
    """Trains the student; writes checkpoints, logs, ``distill.json`` and a sample grid.
    Returns the last logged metrics (loss, noise_loss, distill_loss, ...)."""
    config = resolve_distill_config(config)
    teacher_fm, teacher_params = load_teacher(config)  # fail early, before data and compile
    images = load_images(config.data)
    source = BatchSource(images, config.train.batch_size, config.seed, config.data.random_flip,
                         jax.process_index(), jax.process_count())
    mesh = parallel.make_data_mesh(config.mesh.data)
    # Replicated on the mesh, the frozen teacher enters the jitted step as an argument-like
    # constant (not inlined into the program).
    teacher_params = place(teacher_params, parallel.replicated(mesh))
    setup = build_distill(config, teacher_fm, teacher_params)
    info = describe(setup)
    logging.info("distill: %s", json.dumps(info))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "distill.json"), "w") as f:
            json.dump(info, f, indent=1)
    loop = Loop(config, workdir, setup.student_fm, setup.student_fm.params, setup.loss_fn,
                sample_model_fn=setup.sample_model_fn, carry_init=setup.carry_init)
    return loop.train_and_sample(source, "_distill")
