"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of the squared MMD
with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³, averaged over random subsets.

For one pair of subsets X, Y of size m:

    MMD²_u = [Σ_{i≠j} k(x_i,x_j) + Σ_{i≠j} k(y_i,y_j)] / (m(m-1))
             - 2 Σ_{i,j} k(x_i,y_j) / m²
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST


def _mmd2_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
    m, d = x.shape
    kxx = (jnp.dot(x, x.T, precision=_HI) / d + 1.0) ** 3
    kyy = (jnp.dot(y, y.T, precision=_HI) / d + 1.0) ** 3
    kxy = (jnp.dot(x, y.T, precision=_HI) / d + 1.0) ** 3
    same = (kxx.sum() - jnp.trace(kxx) + kyy.sum() - jnp.trace(kyy)) / (m * (m - 1))
    return same - 2.0 * kxy.mean()


_mmd2_subsets = jax.jit(jax.vmap(_mmd2_unbiased))


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of MMD²_u over ``num_subsets`` random subsets (without replacement).

    features1 (N1, D), features2 (N2, D); ``subset_size`` is capped at min(N1, N2).
    """
    f1 = np.asarray(features1, np.float32)
    f2 = np.asarray(features2, np.float32)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {f1.shape}, {f2.shape}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2 or num_subsets < 1:
        raise ValueError(f"need subset size >= 2 and num_subsets >= 1, got {m}, {num_subsets}")
    rng = np.random.default_rng(seed)
    vals = []
    chunk = 10  # subsets per device call: bounds memory at 30 (m, m) kernels
    for start in range(0, num_subsets, chunk):
        n = min(chunk, num_subsets - start)
        i1 = np.stack([rng.choice(f1.shape[0], m, replace=False) for _ in range(n)])
        i2 = np.stack([rng.choice(f2.shape[0], m, replace=False) for _ in range(n)])
        vals.append(np.asarray(_mmd2_subsets(jnp.asarray(f1[i1]), jnp.asarray(f2[i2]))))
    v = np.concatenate(vals).astype(np.float64)
    return float(v.mean()), float(v.std())
