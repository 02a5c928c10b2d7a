"""The distillation objective of ``--mode distill`` (methods.md §2.5–2.7).

    L = ε-loss(student(x_t, t), ε) + λ · D(student features, teacher features)

D is SPD (BiDM), plain L2, LRM (BinaryDM, λ = ``distill.lrm_lambda``, projections fixed by the
calibration step) or absent; Q-DM's NeM (``distill.loss='nem'``, :mod:`bidm_jax.distill.nem`)
matches the teacher's output instead of features; features are the student's tap outputs *after* TBS mixing and
the frozen FP teacher's at the same (x_t, t) (the tap names are the model family's
``spd_features``, or its ``timestep_outputs`` for LRM). A method may add a regulariser
(:meth:`~bidm_jax.methods.Method.extra_loss`: BinaryDM's L_EBB). With TBS on, the cache
comes from a stop-gradient student pass at (x_{t+1}, t+1) (t+1 clipped to T−1) with the same x0 and ε, dropout on, no mixing (BiDM
ddpm_ours.py ``p_losses``). The method's step hook sets its auxiliary state before the
forward (ReSTE's o); the main pass may advance running statistics, returned as the new
auxiliary state.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax.diffusion import losses as dlosses
from bidm_jax.diffusion import schedules
from bidm_jax.distill import lrm, nem
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.distill import trajectory
from bidm_jax.distill.losses import total_loss
from bidm_jax.methods import CalibrationContext
from bidm_jax.models.functional import Functional, aux_mode


def _noised(config, x0, key):
    """(x_t, t, ε) at uniform timesteps (antithetic per ``diffusion.antithetic``)."""
    dcfg = config.diffusion
    abar = np.asarray(schedules.from_config(dcfg), np.float32)
    k_t, k_n = jax.random.split(key)
    t = dlosses.sample_timesteps(k_t, x0.shape[0], dcfg.num_timesteps, dcfg.antithetic)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    return dlosses.q_sample(x0, t, noise, abar), t, noise


def make_loss_fn(config, method, student_fm: Functional, teacher_fm: Functional,
                 teacher_params: dict, *, topology: tbs_lib.Topology | None,
                 feature_names: list[str]) -> Callable:
    """``loss_fn(params, aux, x0, key, step) -> (loss, (metrics, aux))`` for the training loop.

    config: resolved (``configlib.resolve_config``). x0: (B, H, W, C) in [−1, 1].
    method: the registered method (its ``step_aux`` hook). teacher_params: the frozen FP
    teacher (closed over; never differentiated). metrics: noise_loss, distill_loss
    (unweighted) and, with TBS, tbs_coef_mean.
    """
    if config.distill.data == trajectory.DATA:  # data-free (EfficientDM)
        return trajectory.make_loss_fn(config, method, student_fm, teacher_fm, teacher_params)
    dcfg, dist = config.diffusion, config.distill
    abar = np.asarray(schedules.from_config(dcfg), np.float32)
    T = dcfg.num_timesteps
    use_dropout = config.model.dropout > 0
    needs_teacher = dist.loss != "none"
    lrm_names = lrm.projection_names(len(feature_names)) if dist.loss == "lrm" else []

    def loss_fn(params, aux, x0, key, step):
        k_t, k_n, k_d, k_c = jax.random.split(key, 4)
        t = dlosses.sample_timesteps(k_t, x0.shape[0], T, dcfg.antithetic)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = dlosses.q_sample(x0, t, noise, abar)
        aux = method.step_aux(aux, step, config)
        module = student_fm.module(params, aux)
        feats_s: dict = {}
        metrics = {}
        if topology is not None:
            t1 = jnp.minimum(t + 1, T - 1)  # the adjacent DDPM step, same x0 and ε
            x_t1 = dlosses.q_sample(x0, t1, noise, abar)
            _, cache = tbs_lib.tbs_apply(module, topology, x_t1, t1, None,
                                         dropout_rng=k_c if use_dropout else None)
            cache = jax.lax.stop_gradient(cache)
            with aux_mode("train"):
                eps, _ = tbs_lib.tbs_apply(module, topology, x_t, t, cache,
                                           dropout_rng=k_d if use_dropout else None,
                                           features=feats_s)
            metrics["tbs_coef_mean"] = jnp.mean(params[tbs_lib.TABLE_NAME])
        else:
            with aux_mode("train"):
                eps, _ = module(x_t, t, None, dropout_rng=k_d if use_dropout else None,
                                features=feats_s)
        # The auxiliary state the step returns: the main pass's (NeM's unrolled passes below
        # must not advance running statistics a second time).
        new_aux = student_fm.aux_of(module)
        if dist.loss == "nem":
            eps_fp, _ = teacher_fm(teacher_params, x_t, t, None)

            def student(x, tt):
                with aux_mode("train"):
                    return module(x, tt, None, dropout_rng=jax.random.fold_in(k_d, tt[0])
                                  if use_dropout else None)[0]

            loss, parts = nem.objective(eps, eps_fp, noise, x_t, t, abar, dist, student,
                                        lambda x, tt: teacher_fm(teacher_params, x, tt, None)[0],
                                        reduction=dcfg.loss_reduction)
        else:
            s_feats, t_feats = [], []
            if needs_teacher:
                feats_t: dict = {}
                teacher_fm(teacher_params, x_t, t, None, features=feats_t)
                s_feats = [feats_s[n] for n in feature_names]
                t_feats = [jax.lax.stop_gradient(feats_t[n]) for n in feature_names]
            weight = dist.lrm_lambda if dist.loss == "lrm" else dist.spd_lambda
            loss, parts = total_loss(eps, noise, s_feats, t_feats, distill=dist.loss,
                                     weight=float(weight), patches=int(dist.spd_patches),
                                     spd_form=dist.spd_form, reduction=dcfg.loss_reduction,
                                     loss_type=dcfg.loss_type,
                                     lrm_projections=[new_aux[n] for n in lrm_names],
                                     lrm_mode=dist.lrm_mode)
        metrics.update(noise_loss=parts["noise"], distill_loss=parts["distill"])
        extra, extra_metrics = method.extra_loss(params, aux, step, config)
        if extra is not None:
            loss = loss + extra
            metrics.update(extra_metrics)
        return loss, (metrics, jax.lax.stop_gradient(new_aux))

    return loss_fn


def make_calibrate_fn(config, method, student_fm: Functional, teacher_fm: Functional | None,
                      teacher_params: dict | None, feature_names: list[str] = ()) -> Callable:
    """``calibrate_fn(params, aux, x0, key) -> (params, aux)``: the method's calibration on
    one real batch x0 (B, H, W, C), noised at uniform timesteps, through a
    :class:`~bidm_jax.methods.CalibrationContext`; then, for LRM, the projections of the
    teacher's ``feature_names`` on the same batch."""
    if config.distill.data == trajectory.DATA:  # data-free: on the teacher's trajectory
        return trajectory.make_calibrate_fn(config, method, student_fm, teacher_fm,
                                            teacher_params)
    dist = config.distill

    def calibrate_fn(params, aux, x0, key):
        x_t, t, _ = _noised(config, x0, key)

        def forward(p, a):
            module = student_fm.module(p, a)
            with aux_mode("calibrate"):
                module(x_t, t, None)
            return student_fm.params_of(module), student_fm.aux_of(module)

        def teacher_features():
            feats: dict = {}
            teacher_fm(teacher_params, x_t, t, None, features=feats)
            return feats

        ctx = CalibrationContext(forward=forward,
                                 teacher_features=teacher_features if teacher_fm else None)
        params, aux = method.calibrate(ctx, params, aux)
        if dist.loss == "lrm":  # E from the first batch's teacher features (Table 16)
            feats = teacher_features()
            aux = {**aux, **{n: lrm.projection(feats[f], dist.lrm_mode, int(dist.lrm_k))
                             for n, f in zip(lrm.projection_names(len(feature_names)),
                                             feature_names)}}
        return params, aux

    return calibrate_fn


def make_sample_fns(student_fm: Functional, topology: tbs_lib.Topology | None, shapes: dict):
    """(sample_model_fn, carry_init) for the loop / ``make_sampler``: values are the
    student's parameters and auxiliary state. Without TBS: the plain model and no carry."""
    if topology is None:
        return (lambda values, x, t, carry: student_fm(values, x, t, carry)), None

    def model_fn(values, x, t, carry):
        return tbs_lib.tbs_apply(student_fm.module(values), topology, x, t, carry)

    return model_fn, (lambda x_T: tbs_lib.init_carry(shapes, x_T.shape[0]))
