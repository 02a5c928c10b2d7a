"""ε-prediction training loss (methods.md §1.1, §2.7)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = ("sum", "mean")
LOSS_TYPES = ("l2", "l1")


def sample_timesteps(rng: jax.Array, batch: int, num_timesteps: int,
                     antithetic: bool = True) -> jax.Array:
    """t ~ U{0..T-1}, (B,) int32. Antithetic: draw ⌊B/2⌋+1 values and append T-1-t (ermongroup)."""
    if not antithetic:
        return jax.random.randint(rng, (batch,), 0, num_timesteps)
    t = jax.random.randint(rng, (batch // 2 + 1,), 0, num_timesteps)
    return jnp.concatenate([t, num_timesteps - 1 - t])[:batch]


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, abar: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε. x0, noise (B, H, W, C); t (B,); abar (T,)."""
    a = jnp.asarray(abar)[t].astype(x0.dtype)[:, None, None, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def eps_loss(eps_pred: jax.Array, noise: jax.Array, reduction: str = "sum",
             loss_type: str = "l2") -> jax.Array:
    """Per-batch ε loss: mean_b Σ_{CHW} e ("sum", ermongroup/BiDM CIFAR) or mean_b mean_{CHW}
    e (DDPM/LDM, "mean"), e = (ε − ε̂)² ("l2") or |ε − ε̂| ("l1", LDM-8's ``loss_type: l1``;
    LatentDiffusion ``get_loss(..., mean=False).mean([1, 2, 3])``). Computed in float32."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"diffusion.loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"diffusion.loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    d = noise.astype(jnp.float32) - eps_pred.astype(jnp.float32)
    e = jnp.square(d) if loss_type == "l2" else jnp.abs(d)
    per = e.reshape(e.shape[0], -1)
    per = per.sum(axis=1) if reduction == "sum" else per.mean(axis=1)
    return per.mean()
