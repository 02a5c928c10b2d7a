"""Q-DM's Noise-estimating Mimicking (NeM), methods.md §4.2 item 7, §4.4.

What is verified: NeM makes the quantized model mimic the FP model's noise estimation, to
counter the quantization error that accumulates over the denoising steps. The form below is
this project's reading (docs/qdm.md), each choice a ``distill`` flag:

    L = [keep_simple] · mean‖ε − ε̂_Q(x_t, t)‖² + λ · mean‖T(ε̂_FP(x_t, t)) − T(ε̂_Q(x_t, t))‖²

with the frozen FP teacher on the same x_t and t, λ = ``nem_lambda`` (1), the DDPM reduction
(mean over C, H, W, then over the batch; ``diffusion.loss_reduction``) and the matched
quantity T = ``nem_target``:

* ``eps``: ε̂ itself;
* ``x0``: x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t (weights late timesteps up by 1/ᾱ_t);
* ``mean``: the DDPM posterior mean μ̃_t(x_t, x̂0) = (√ᾱ_{t−1}·β_t·x̂0 + √α_t·(1−ᾱ_{t−1})·x_t)
  /(1−ᾱ_t), what one ancestral step moves to.

``nem_unroll = K > 0`` (the "accumulated error" form): from the shared x_t both models run K
deterministic DDIM steps (η = 0) of stride ``nem_stride`` (default T / diffusion.sample_steps,
the evaluation sampler's spacing), each on its own trajectory, and the states are matched at
the end: λ·mean‖x^FP_{t−Ks} − x^Q_{t−Ks}‖². Gradients flow through all K student steps; a
sample whose trajectory reaches t < 0 stops at its x̂0.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax.distill.losses import noise_loss

__all__ = ["TARGETS", "target_of", "ddim_step", "unroll", "nem_term", "objective"]

TARGETS = ("eps", "x0", "mean")


def _gather(values: np.ndarray, t: jax.Array, like: jax.Array) -> jax.Array:
    return jnp.asarray(values, jnp.float32)[t].astype(like.dtype)[:, None, None, None]


def _abar_prev(abar: np.ndarray) -> np.ndarray:
    return np.concatenate([[1.0], np.asarray(abar, np.float64)[:-1]])


def target_of(eps: jax.Array, x_t: jax.Array, t: jax.Array, abar: np.ndarray,
              target: str) -> jax.Array:
    """The matched quantity T(ε̂) for ε̂, x_t (B, H, W, C) at timesteps t (B,) (see the module
    docstring); abar (T,) is ᾱ."""
    if target not in TARGETS:
        raise ValueError(f"distill.nem_target={target!r} is invalid; valid: {', '.join(TARGETS)}")
    if target == "eps":
        return eps
    a = _gather(abar, t, x_t)
    x0 = (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    if target == "x0":
        return x0
    abar64 = np.asarray(abar, np.float64)
    prev = _abar_prev(abar64)
    beta = 1.0 - abar64 / prev
    c0 = np.sqrt(prev) * beta / (1.0 - abar64)
    ct = np.sqrt(1.0 - beta) * (1.0 - prev) / (1.0 - abar64)
    return _gather(c0, t, x_t) * x0 + _gather(ct, t, x_t) * x_t


def ddim_step(x: jax.Array, eps: jax.Array, t: jax.Array, stride: int,
              abar: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """One η = 0 DDIM step from t to t − stride for every sample: (x_next, t_next).

    x_next = √ᾱ_{t'}·x̂0 + √(1−ᾱ_{t'})·ε̂ with ᾱ_{t'} = 1 once t' < 0 (x_next = x̂0); samples
    already below 0 (t < 0) stay where they are."""
    done = (t < 0)[:, None, None, None]
    tc = jnp.maximum(t, 0)
    a = _gather(abar, tc, x)
    x0 = (x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)
    t_next = t - stride
    a_next = jnp.where((t_next < 0)[:, None, None, None], jnp.ones_like(a),
                       _gather(abar, jnp.maximum(t_next, 0), x))
    x_next = jnp.sqrt(a_next) * x0 + jnp.sqrt(1.0 - a_next) * eps
    return jnp.where(done, x, x_next), jnp.where(t < 0, t, t_next)


def unroll(model: Callable, x_t: jax.Array, t: jax.Array, eps0: jax.Array, steps: int,
           stride: int, abar: np.ndarray) -> jax.Array:
    """The state after ``steps`` DDIM steps from (x_t, t), the first with the given ε̂ eps0
    (the main pass's), the rest with ``model(x, t) -> ε̂``. (B, H, W, C)."""
    x, tt = ddim_step(x_t, eps0, t, stride, abar)
    for _ in range(steps - 1):
        x, tt = ddim_step(x, model(x, jnp.maximum(tt, 0)), tt, stride, abar)
    return x


def nem_term(eps_q: jax.Array, eps_fp: jax.Array, x_t: jax.Array, t: jax.Array,
             abar: np.ndarray, *, target: str = "eps", reduction: str = "mean") -> jax.Array:
    """mean‖T(ε̂_FP) − T(ε̂_Q)‖² (before λ) at (x_t, t); the teacher side is stopped."""
    fp = jax.lax.stop_gradient(target_of(eps_fp, x_t, t, abar, target))
    return noise_loss(target_of(eps_q, x_t, t, abar, target), fp, reduction=reduction)


def objective(eps_q, eps_fp, eps, x_t, t, abar, dist, student: Callable, teacher: Callable, *,
              reduction: str = "mean") -> tuple[jax.Array, dict]:
    """NeM's training loss from the main student pass ε̂_Q and the teacher's ε̂_FP at (x_t, t)
    with the true noise ε: (loss, {'noise', 'distill'}) with the NeM term unweighted.
    ``dist`` is the resolved ``distill`` section; student/teacher(x, t) -> ε̂ for the
    unrolled form (the student's passes are differentiated, the teacher's are not)."""
    ln = noise_loss(eps_q, eps, reduction=reduction)
    k = int(dist.nem_unroll)
    if k == 0:
        ld = nem_term(eps_q, eps_fp, x_t, t, abar, target=dist.nem_target, reduction=reduction)
    else:
        stride = int(dist.nem_stride)
        x_q = unroll(student, x_t, t, eps_q, k, stride, abar)
        x_fp = jax.lax.stop_gradient(
            unroll(teacher, x_t, t, jax.lax.stop_gradient(eps_fp), k, stride, abar))
        ld = noise_loss(x_q, x_fp, reduction=reduction)
    simple = ln if dist.keep_simple else jnp.zeros((), jnp.float32)
    return simple + float(dist.nem_lambda) * ld, {"noise": ln, "distill": ld}
