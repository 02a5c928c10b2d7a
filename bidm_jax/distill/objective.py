"""The distillation objective of ``--mode distill`` (methods.md §2.5–2.7).

    L = ε-loss(student(x_t, t), ε) + λ · D(student features, teacher features)

D is SPD (BiDM), plain L2, or absent; features are the student's tap outputs *after* TBS
mixing and the frozen FP teacher's at the same (x_t, t). With TBS on, the cache comes from a
stop-gradient student pass at (x_{t+1}, t+1) (t+1 clipped to T−1) with the same x0 and ε,
dropout on, no mixing (BiDM ddpm_ours.py ``p_losses``).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bidm_jax.diffusion import losses as dlosses
from bidm_jax.diffusion import schedules
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.distill.losses import total_loss
from bidm_jax.models.functional import Functional
from bidm_jax.quant import reste_o_schedule, with_reste_o


def spd_feature_names(model) -> list[str]:
    """The features BiDM's CIFAR code hooks for SPD (methods.md §2.5 CIFAR list), for any
    level count L: ``down.{i}.downsample`` (i < L−1), the conv2 of the last down block,
    ``mid.block_2.conv2`` and ``up.{i}.upsample`` (i = L−1 … 1). DDIM CIFAR-10: the 8 outputs
    down.{0,1,2}.downsample.conv, down.3.block.1.conv2, mid.block_2.conv2, up.{3,2,1}.upsample."""
    last = model.num_levels - 1
    names = [f"down.{i}.downsample" for i in range(last)]
    names.append(f"down.{last}.block.{model.num_res_blocks - 1}.conv2")
    names.append("mid.block_2.conv2")
    names += [f"up.{i}.upsample" for i in range(last, 0, -1)]
    return names


def student_module(fm: Functional, params: dict, reste_o=None) -> nnx.Module:
    """``fm.module(params)``, with ReSTE's o set to ``reste_o`` (a traced scalar) when given:
    o lives outside the Params (``ReSTEPower``), so it is replaced in the constant state."""
    if reste_o is None:
        return fm.module(params)
    state = nnx.from_flat_state([(k, nnx.Param(params[n])) for k, n in zip(fm.paths, fm.names)])
    return nnx.merge(fm.graphdef, state, with_reste_o(fm.rest, reste_o))


def has_reste(fm: Functional) -> bool:
    from bidm_jax.quant.layers import ReSTEPower
    leaves = jax.tree_util.tree_leaves(fm.rest, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return any(isinstance(v, ReSTEPower) for v in leaves)


def make_loss_fn(config, student_fm: Functional, teacher_fm: Functional, teacher_params: dict,
                 *, topology: tbs_lib.Topology | None, feature_names: list[str]) -> Callable:
    """``loss_fn(params, x0, key, step) -> (loss, metrics)`` for :class:`bidm_jax.train.Loop`.

    config: resolved (``resolve_distill_config``). x0: (B, H, W, C) in [−1, 1].
    teacher_params: the frozen FP teacher (closed over; never differentiated).
    metrics: noise_loss, distill_loss (unweighted) and, with TBS, tbs_coef_mean.
    """
    dcfg, dist = config.diffusion, config.distill
    abar = np.asarray(schedules.from_config(dcfg), np.float32)
    T = dcfg.num_timesteps
    use_dropout = config.model.dropout > 0
    needs_teacher = dist.loss != "none"
    reste = has_reste(student_fm)
    total_steps = max(int(config.train.num_steps), 1)

    def loss_fn(params, x0, key, step):
        k_t, k_n, k_d, k_c = jax.random.split(key, 4)
        t = dlosses.sample_timesteps(k_t, x0.shape[0], T, dcfg.antithetic)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        x_t = dlosses.q_sample(x0, t, noise, abar)
        o = reste_o_schedule(step / total_steps, config.quant.reste_o_end) if reste else None
        module = student_module(student_fm, params, o)
        feats_s: dict = {}
        metrics = {}
        if topology is not None:
            t1 = jnp.minimum(t + 1, T - 1)  # the adjacent DDPM step, same x0 and ε
            x_t1 = dlosses.q_sample(x0, t1, noise, abar)
            _, cache = tbs_lib.tbs_apply(module, topology, x_t1, t1, None,
                                         dropout_rng=k_c if use_dropout else None)
            cache = jax.lax.stop_gradient(cache)
            eps, _ = tbs_lib.tbs_apply(module, topology, x_t, t, cache,
                                       dropout_rng=k_d if use_dropout else None, features=feats_s)
            metrics["tbs_coef_mean"] = jnp.mean(params[tbs_lib.TABLE_NAME])
        else:
            eps, _ = module(x_t, t, None, dropout_rng=k_d if use_dropout else None,
                            features=feats_s)
        s_feats, t_feats = [], []
        if needs_teacher:
            feats_t: dict = {}
            teacher_fm(teacher_params, x_t, t, None, features=feats_t)
            s_feats = [feats_s[n] for n in feature_names]
            t_feats = [jax.lax.stop_gradient(feats_t[n]) for n in feature_names]
        loss, parts = total_loss(eps, noise, s_feats, t_feats, distill=dist.loss,
                                 weight=float(dist.spd_lambda), patches=int(dist.spd_patches),
                                 spd_form=dist.spd_form, reduction=dcfg.loss_reduction)
        metrics.update(noise_loss=parts["noise"], distill_loss=parts["distill"])
        return loss, metrics

    return loss_fn


def make_sample_fns(student_fm: Functional, topology: tbs_lib.Topology | None, shapes: dict):
    """(sample_model_fn, carry_init) for :class:`bidm_jax.train.Loop` / ``make_sampler``.
    Without TBS: the plain model and no carry."""
    if topology is None:
        return (lambda params, x, t, carry: student_fm(params, x, t, carry)), None

    def model_fn(params, x, t, carry):
        return tbs_lib.tbs_apply(student_fm.module(params), topology, x, t, carry)

    return model_fn, (lambda x_T: tbs_lib.init_carry(shapes, x_T.shape[0]))
