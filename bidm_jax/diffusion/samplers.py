"""DDIM and DDPM samplers as ``lax.scan`` loops over ``(x_t, carry, rng)`` (methods.md §1.4).

``model_fn(x_t, t, carry) -> (eps, carry)``: t is a (B,) int32 vector; the carry is whatever
cross-timestep state the model keeps (None for the FP teacher, cached features for BiDM's TBS).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CONVENTIONS = ("ermongroup", "ldm")
SAMPLERS = ("ddim", "ddpm")
VAR_TYPES = ("fixedlarge", "fixedsmall")

ModelFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def ddim_timesteps(num_timesteps: int, steps: int, convention: str = "ermongroup") -> np.ndarray:
    """Ascending DDIM timesteps.

    ermongroup: range(0, T, T//S) → {0, 10, …, 990} for S = 100.
    ldm: the same + 1 → {1, 11, …, 991} (``make_ddim_timesteps``, uniform).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"diffusion.timestep_convention must be one of {CONVENTIONS}, "
                         f"got {convention!r}")
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sample steps must be in [1, {num_timesteps}], got {steps}")
    ts = np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int64)
    return ts + 1 if convention == "ldm" else ts


def ddim_alpha_pairs(abar: np.ndarray, ts: np.ndarray, convention: str):
    """(ᾱ_t, ᾱ_prev) for each ascending t. ermongroup: ᾱ_prev of the first step is 1;
    ldm: it is ᾱ[0] (methods.md §1.4)."""
    a = abar[ts]
    first = 1.0 if convention == "ermongroup" else abar[0]
    a_prev = np.concatenate([[first], abar[ts[:-1]]])
    return a, a_prev


def _scan_sampler(step_fn, x_T, carry, rng, ts, *extra):
    """Runs ``step_fn`` from the largest t to the smallest; returns (x_0, carry)."""
    xs = tuple(jnp.asarray(v[::-1]) for v in (ts,) + extra)

    def body(state, per_step):
        x, c, key = state
        key, sub = jax.random.split(key)
        x, c = step_fn(x, c, sub, *per_step)
        return (x, c, key), None

    (x, carry, _), _ = jax.lax.scan(body, (x_T, carry, rng), xs)
    return x, carry


def ddim_sample(model_fn: ModelFn, x_T: jax.Array, abar: np.ndarray, *, steps: int,
                eta: float = 0.0, convention: str = "ermongroup", carry=None,
                rng: jax.Array | None = None):
    """DDIM (Song et al. 2021, Eq. 12) with η; no x̂0 clipping (as both reference codes).

    x_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev − σ²) ε̂ + σ z,
    σ = η √((1−ᾱ_prev)/(1−ᾱ) (1 − ᾱ/ᾱ_prev)).
    x_T: (B, H, W, C). Returns (x_0, final carry).
    """
    ts = ddim_timesteps(len(abar), steps, convention)
    a, a_prev = ddim_alpha_pairs(np.asarray(abar, np.float64), ts, convention)
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    rng = jax.random.PRNGKey(0) if rng is None else rng

    def step(x, c, key, t, at, ap, sg):
        tb = jnp.full((x.shape[0],), t, jnp.int32)
        eps, c = model_fn(x, tb, c)
        eps = eps.astype(jnp.float32)
        x0 = (x - jnp.sqrt(1 - at) * eps) / jnp.sqrt(at)
        noise = jax.random.normal(key, x.shape, jnp.float32) if eta > 0 else 0.0
        x = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1 - ap - sg ** 2, 0.0)) * eps + sg * noise
        return x, c

    f32 = lambda v: v.astype(np.float32)
    return _scan_sampler(step, x_T.astype(jnp.float32), carry, rng, ts.astype(np.int32),
                         f32(a), f32(a_prev), f32(sigma))


def ddpm_sample(model_fn: ModelFn, x_T: jax.Array, abar: np.ndarray, *, steps: int | None = None,
                var_type: str = "fixedlarge", clip_x0: bool = True, carry=None,
                rng: jax.Array | None = None):
    """Ancestral sampling (Ho et al. 2020) on a strided grid (every step when steps = T).

    With β̃_t = 1 − ᾱ_t/ᾱ_prev: x̂0 = (x − √(1−ᾱ) ε̂)/√ᾱ (clipped to [−1, 1] by default),
    mean = (√ᾱ_prev β̃ x̂0 + √(1−β̃)(1−ᾱ_prev) x)/(1−ᾱ); variance β̃ ("fixedlarge", ermongroup's
    ``ddpm_steps``) or β̃(1−ᾱ_prev)/(1−ᾱ) ("fixedsmall"); no noise at the last step.
    """
    if var_type not in VAR_TYPES:
        raise ValueError(f"diffusion.var_type must be one of {VAR_TYPES}, got {var_type!r}")
    T = len(abar)
    ts = ddim_timesteps(T, steps or T, "ermongroup")
    a, a_prev = ddim_alpha_pairs(np.asarray(abar, np.float64), ts, "ermongroup")
    beta = 1 - a / a_prev
    var = beta.copy() if var_type == "fixedlarge" else beta * (1 - a_prev) / (1 - a)
    var[0] = 0.0  # the final step (t = ts[0]) adds no noise
    rng = jax.random.PRNGKey(0) if rng is None else rng

    def step(x, c, key, t, at, ap, bt, vt):
        tb = jnp.full((x.shape[0],), t, jnp.int32)
        eps, c = model_fn(x, tb, c)
        eps = eps.astype(jnp.float32)
        x0 = (x - jnp.sqrt(1 - at) * eps) / jnp.sqrt(at)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
        mean = (jnp.sqrt(ap) * bt * x0 + jnp.sqrt(1 - bt) * (1 - ap) * x) / (1 - at)
        x = mean + jnp.sqrt(vt) * jax.random.normal(key, x.shape, jnp.float32)
        return x, c

    f32 = lambda v: v.astype(np.float32)
    return _scan_sampler(step, x_T.astype(jnp.float32), carry, rng, ts.astype(np.int32),
                         f32(a), f32(a_prev), f32(beta), f32(var))


def to_uint8(x: jax.Array, convention: str = "ermongroup") -> jax.Array:
    """[-1, 1] float → uint8, truncated, as the reference code of ``convention`` writes its
    samples (methods.md §1.4): ermongroup clamp((x+1)/2, 0, 1)·255; ldm (LDM's
    ``scripts/sample_diffusion.py``) clamp((x+1)·127.5, 0, 255). Equal in exact arithmetic;
    the float32 rounding of a few values can differ by one level."""
    if convention == "ldm":
        return jnp.clip((x + 1.0) * 127.5, 0.0, 255.0).astype(jnp.uint8)
    return (jnp.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(jnp.uint8)
