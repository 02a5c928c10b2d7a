"""Data-free distillation along the FP teacher's sampling trajectories
(``distill.data='teacher_trajectory'``; EfficientDM, He et al. ICLR 2024, methods.md §5).

No training image is read. Trajectory n starts from x_T ~ N(0, I) (key: the run's seed folded
with :data:`TRAJECTORY_FOLD`, then n) and follows the teacher's DDIM sampler
(``diffusion.sample_steps`` steps, η = ``diffusion.eta``, the sampler's timestep convention):
x_{t_0}, …, x_{t_{S−1}} with t_0 the largest timestep. The student learns to match the
teacher's output on it, one optimizer step per sampler step (the released code's
``DDIMSampler_trainer``: the teacher's ε̂ moves the trajectory, the student's is only
compared):

    step k of training: n = k // S, i = k % S,
    L = ε-loss(ε̂_student(x_{t_i}, t_i), ε̂_teacher(x_{t_i}, t_i))   (``diffusion.loss_reduction``)

The code sums the squared error over the batch too; with Adam that is the same update up to
its ε (the batch size only scales the gradient).

Efficiency: when i = 0 the step generates trajectory n in the same jitted program (a
``lax.cond`` around one ``lax.scan`` of S teacher forwards) and keeps every state and the
teacher's ε̂ at it in auxiliary state (``trajectory.x``, ``trajectory.eps``: (S, B, H, W, C)),
so a training step costs one student forward/backward plus, on average, one teacher forward.
The buffers are checkpointed with the rest of the auxiliary state: a resumed run continues
mid-trajectory bit-exactly (a trajectory is a pure function of the seed and n), and sampling
and export drop them (``build.sampling_aux``).

Calibration (before step 0 of a fresh run) generates trajectory 0 and gives the method a
:class:`TrajectoryContext`: ``forward`` calibrates on one batch pooled over the steps (sample
b at sampler step ⌊b·S/B⌋), ``step_forward(params, aux, pos)`` on the states of one step
(``pos``: position of its timestep in the ascending grid, which per-step quantizers index).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bidm_jax.diffusion import losses as dlosses
from bidm_jax.diffusion import schedules
from bidm_jax.diffusion.samplers import ddim_sample, ddim_timesteps
from bidm_jax.methods import CalibrationContext
from bidm_jax.models.functional import Aux, Functional, aux_mode

__all__ = ["DATA", "PREFIX", "TrajectoryContext", "TrajectoryBuffers", "attach_buffers",
           "timesteps", "generate", "make_loss_fn", "make_calibrate_fn", "data_free_source",
           "describe"]

DATA = "teacher_trajectory"      # the distill.data value
PREFIX = "trajectory"            # the buffers' auxiliary-state names: trajectory.x, .eps
TRAJECTORY_FOLD = 0x7a1e         # trajectory keys: fold_in(fold_in(key(seed), this), n)


@dataclasses.dataclass
class TrajectoryContext(CalibrationContext):
    """A :class:`~bidm_jax.methods.CalibrationContext` on teacher trajectories: ``forward``
    on a batch pooled over the steps; step_forward(params, aux, pos) -> (params, aux) on the
    states of the step whose timestep is the pos-th of the ascending grid (``steps`` of them).
    """

    step_forward: Callable | None = None
    steps: int = 0
    config: object = None   # the resolved config (the method's calibration flags)


class TrajectoryBuffers(nnx.Module):
    """The current trajectory: states ``x`` and the teacher's ε̂ ``eps``, (S, B, H, W, C) in
    sampling order (auxiliary state, see the module docstring)."""

    def __init__(self, steps: int, batch: int, shape: tuple):
        self.x = Aux(jnp.zeros((steps, batch) + tuple(shape), jnp.float32))
        self.eps = Aux(jnp.zeros((steps, batch) + tuple(shape), jnp.float32))


def timesteps(dcfg) -> np.ndarray:
    """The sampler's timesteps, ascending ((S,) int32)."""
    return ddim_timesteps(dcfg.num_timesteps, dcfg.sample_steps,
                          dcfg.timestep_convention).astype(np.int32)


def attach_buffers(module: nnx.Module, config, input_shape: tuple) -> None:
    """Adds ``module.trajectory`` for the run's global batch (``train.batch_size``)."""
    module.trajectory = TrajectoryBuffers(len(timesteps(config.diffusion)),
                                          int(config.train.batch_size), input_shape)


def generate(teacher: Callable, x_T: jax.Array, abar: np.ndarray, dcfg, key: jax.Array):
    """(states, ε̂): the teacher's DDIM trajectory from x_T (B, H, W, C), both (S, B, H, W, C)
    in sampling order (index 0 at the largest t). teacher(x, t) -> ε̂. The sampler is the
    project's (:func:`~bidm_jax.diffusion.samplers.ddim_sample`); its carry records them."""
    steps = len(timesteps(dcfg))
    empty = jnp.zeros((steps,) + x_T.shape, jnp.float32)

    def record(x, t, carry):
        xs, es, i = carry
        eps = jax.lax.stop_gradient(teacher(x, t)).astype(jnp.float32)
        return eps, (xs.at[i].set(x), es.at[i].set(eps), i + 1)

    _, (xs, es, _) = ddim_sample(record, x_T, abar, steps=int(dcfg.sample_steps),
                                 eta=float(dcfg.eta), convention=dcfg.timestep_convention,
                                 carry=(empty, empty, jnp.zeros((), jnp.int32)), rng=key)
    return xs, es


def _trajectory(config, teacher_fm: Functional, teacher_params: dict, shape: tuple, n):
    """Trajectory ``n`` (traced int) of the run: x_T and η-noise keys from (seed, n)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), TRAJECTORY_FOLD),
                             n)
    k_x, k_eta = jax.random.split(key)
    abar = np.asarray(schedules.from_config(config.diffusion), np.float32)
    x_T = jax.random.normal(k_x, shape, jnp.float32)
    return generate(lambda x, t: teacher_fm(teacher_params, x, t, None)[0], x_T, abar,
                    config.diffusion, k_eta)


def _check(config) -> None:
    d = config.distill
    if d.loss not in ("none", "auto") or d.tbs:
        raise ValueError(f"distill.data={DATA!r} trains on the teacher's outputs only: it needs "
                         f"distill.loss='none' and distill.tbs=False (got loss={d.loss!r}, "
                         f"tbs={d.tbs!r})")


def make_loss_fn(config, method, student_fm: Functional, teacher_fm: Functional,
                 teacher_params: dict) -> Callable:
    """``loss_fn(params, aux, x0, key, step) -> (loss, (metrics, aux))`` on teacher
    trajectories (module docstring); x0 only gives the batch shape (its values are unused).
    metrics: noise_loss (the ε-loss against the teacher's ε̂), distill_loss (0: no feature
    term), trajectory_t (the step's timestep). A call whose batch differs from the buffers'
    (outside the training loop) generates its trajectory and returns the buffers unchanged."""
    _check(config)
    dcfg = config.diffusion
    desc = jnp.asarray(timesteps(dcfg)[::-1].copy())    # sampling order
    steps = int(desc.shape[0])
    names = (f"{PREFIX}.x", f"{PREFIX}.eps")

    def loss_fn(params, aux, x0, key, step):
        aux = method.step_aux(aux, step, config)
        i, n = step % steps, step // steps
        make = lambda: _trajectory(config, teacher_fm, teacher_params, x0.shape, n)
        if names[0] in aux and aux[names[0]].shape[1:] == x0.shape:
            xs, es = jax.lax.cond(i == 0, make, lambda: (aux[names[0]], aux[names[1]]))
            aux = {**aux, names[0]: xs, names[1]: es}
        else:
            xs, es = make()
        t = jnp.full((x0.shape[0],), desc[i], jnp.int32)
        module = student_fm.module(params, aux)
        with aux_mode("train"):
            eps, _ = module(xs[i], t, None)
        loss = dlosses.eps_loss(eps, es[i], dcfg.loss_reduction)
        metrics = {"noise_loss": loss, "distill_loss": jnp.zeros((), jnp.float32),
                   "trajectory_t": desc[i].astype(jnp.float32)}
        extra, extra_metrics = method.extra_loss(params, aux, step, config)
        if extra is not None:
            loss = loss + extra
            metrics.update(extra_metrics)
        return loss, (metrics, jax.lax.stop_gradient(student_fm.aux_of(module)))

    return loss_fn


def make_calibrate_fn(config, method, student_fm: Functional, teacher_fm: Functional,
                      teacher_params: dict) -> Callable:
    """``calibrate_fn(params, aux, x0, key) -> (params, aux)``: the method's calibration on
    trajectory 0 (:class:`TrajectoryContext`); the buffers are left holding it."""
    _check(config)
    asc = timesteps(config.diffusion)
    steps = len(asc)

    def calibrate_fn(params, aux, x0, key):
        xs, es = _trajectory(config, teacher_fm, teacher_params, x0.shape, 0)
        b = x0.shape[0]
        pick = (np.arange(b) * steps) // b                   # sampler step of sample b
        pooled = xs[pick, np.arange(b)]
        t_pooled = jnp.asarray(asc[::-1][pick])

        def run(p, a, x, t):
            module = student_fm.module(p, a)
            with aux_mode("calibrate"):
                module(x, t, None)
            return student_fm.params_of(module), student_fm.aux_of(module)

        def step_forward(p, a, pos):
            i = steps - 1 - pos                              # sampling order of position pos
            return run(p, a, xs[i], jnp.full((b,), jnp.asarray(asc)[pos], jnp.int32))

        ctx = TrajectoryContext(forward=lambda p, a: run(p, a, pooled, t_pooled),
                                step_forward=step_forward, steps=steps, config=config)
        params, aux = method.calibrate(ctx, params, aux)
        if f"{PREFIX}.x" in aux and aux[f"{PREFIX}.x"].shape == xs.shape:
            aux = {**aux, f"{PREFIX}.x": xs, f"{PREFIX}.eps": es}
        return params, aux

    return calibrate_fn


class _ZeroSource:
    """The loop's batch input of a data-free run: zeros of the training batch's shape (the
    objective reads only the shape)."""

    def __init__(self, local: int, shape: tuple):
        self.shape = (local,) + tuple(shape)

    def local_batch(self, step: int) -> np.ndarray:
        return np.zeros(self.shape, np.float32)


def data_free_source(config, input_shape: tuple) -> _ZeroSource:
    """This process's (zero) batches for ``distill.data='teacher_trajectory'``: no dataset
    is opened."""
    b, procs = int(config.train.batch_size), jax.process_count()
    if b % procs:
        raise ValueError(f"batch size {b} is not divisible by the {procs} processes")
    return _ZeroSource(b // procs, input_shape)


def describe(config) -> dict:
    """The schedule for ``distill.json``."""
    steps = len(timesteps(config.diffusion))
    return {"data": DATA, "trajectory_steps": steps, "trajectory_eta": config.diffusion.eta,
            "trajectories": -(-int(config.train.num_steps) // steps)}
