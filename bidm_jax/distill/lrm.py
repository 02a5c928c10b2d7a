"""Low-rank Representation Mimicking (LRM), BinaryDM §3.3 Eq. 11–15 (methods.md §3.4).

The binary student mimics the FP teacher's TimestepEmbed block outputs in a low-rank
subspace fixed from the teacher's features on the first training batch:

* ``paper`` mode: per feature ε̂ (B, H, W, C), the principal directions of the channel
  covariance (hw)⁻²·ε̂ᵀε̂ (uncentred, Eq. 11, over the batch's pixels); the top ⌈C/K⌉
  eigenvectors E (C, q) project both models' features, R = ε̂·E (Eq. 12–13), and the term is
  MSE(R_fp, R_bi) (Eq. 14);
* ``code`` mode (the released code, ddpm_ours.py): the teacher feature in NCHW flattened to a
  (B·C·H, W) matrix, its top-q right-singular vectors V (W, q) of the *centred* matrix
  (q = W//K, at least 2, at most W; an exact SVD in place of the code's randomized
  ``pca_lowrank``: the MSE depends only on span(V)), projected along the **width axis** of the
  *uncentred* features.

The projections are auxiliary state (``lrm.proj.{i}``, one per feature in the order of the
family's ``timestep_outputs``): set by the calibration step, fixed for the rest of training
(Table 16: updating is worse), checkpointed and restored on resume.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.functional import Aux, tap_shapes

__all__ = ["MODES", "LRMProjection", "LRMProjections", "rank", "projection", "term",
           "attach_lrm", "PREFIX"]

MODES = ("paper", "code")
PREFIX = "lrm.proj"


class LRMProjection(Aux):
    """A fixed LRM projection (auxiliary state, never trained)."""


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"LRM mode {mode!r} is invalid; valid choices: {', '.join(MODES)}")


def rank(shape: tuple, mode: str, k: int) -> tuple[int, int]:
    """(projected axis length n, kept rank q) for a feature of NHWC ``shape`` (batch optional
    in front): paper n = C, q = ⌈C/K⌉; code n = W, q = min(max(W//K, 2), W)."""
    _check_mode(mode)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"LRM K must be an int >= 1, got {k!r}")
    if mode == "paper":
        n = shape[-1]
        return n, math.ceil(n / k)
    n = shape[-2]
    return n, min(max(n // k, 2), n)


def _top_vectors(gram: jax.Array, q: int) -> jax.Array:
    """The q eigenvectors of the symmetric ``gram`` (n, n) with the largest eigenvalues,
    as columns (n, q)."""
    _, vecs = jnp.linalg.eigh(gram)         # ascending eigenvalues
    return vecs[:, ::-1][:, :q]


def projection(teacher: jax.Array, mode: str = "code", k: int = 4) -> jax.Array:
    """The LRM projection of one teacher feature (B, H, W, C): (C, ⌈C/K⌉) in paper mode,
    (W, q) in code mode (module docstring). Stop-gradiented, float32."""
    x = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    n, q = rank(x.shape, mode, k)
    if mode == "paper":
        m = x.reshape(-1, n)
        return _top_vectors(m.T @ m / (x.shape[1] * x.shape[2]) ** 2, q)
    m = jnp.moveaxis(x, 2, 3).reshape(-1, n)  # NHWC -> (B·H·C, W): the code's NCHW rows
    m = m - jnp.mean(m, axis=0, keepdims=True)
    return _top_vectors(m.T @ m, q)


def _project(x: jax.Array, proj: jax.Array, mode: str) -> jax.Array:
    if mode == "paper":
        return jnp.einsum("bhwc,cq->bhwq", x, proj)
    return jnp.einsum("bhwc,wq->bhqc", x, proj)


def term(student: jax.Array, teacher: jax.Array, proj: jax.Array, mode: str = "code"
         ) -> jax.Array:
    """MSE between the projected student and (stop-gradiented) teacher features (Eq. 14):
    student/teacher (B, H, W, C), proj from :func:`projection`."""
    _check_mode(mode)
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(f"LRM needs two NHWC features of equal shape, got {student.shape} "
                         f"and {teacher.shape}")
    p = jax.lax.stop_gradient(proj).astype(jnp.float32)
    s = _project(student.astype(jnp.float32), p, mode)
    t = _project(jax.lax.stop_gradient(teacher).astype(jnp.float32), p, mode)
    return jnp.mean(jnp.square(s - t))


def mean_term(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
              projs: Sequence[jax.Array], mode: str) -> jax.Array:
    """(1/M)·Σ_i L_LRM,i over the M features (Eq. 15, before λ)."""
    if not (len(student_feats) == len(teacher_feats) == len(projs)) or not student_feats:
        raise ValueError(f"LRM needs equal, non-empty lists, got {len(student_feats)} student "
                         f"and {len(teacher_feats)} teacher features, {len(projs)} projections")
    return jnp.mean(jnp.stack([term(s, t, p, mode)
                               for s, t, p in zip(student_feats, teacher_feats, projs)]))


class LRMProjections(nnx.Module):
    """The projections of the distilled features, as auxiliary state ``proj.{i}``."""

    def __init__(self, shapes: Sequence[tuple], mode: str, k: int):
        projs = []
        for shape in shapes:
            n, q = rank(tuple(shape), mode, k)
            projs.append(LRMProjection(jnp.eye(n, q, dtype=jnp.float32)))
        self.proj = nnx.List(projs)


def attach_lrm(module: nnx.Module, names: Sequence[str], mode: str, k: int,
               input_shape: tuple) -> None:
    """Adds ``module.lrm`` (:class:`LRMProjections`) for the taps ``names``, in place; the
    placeholder values (identity columns) are replaced by the calibration step."""
    feats = tap_shapes(module, input_shape)
    missing = [n for n in names if n not in feats]
    if missing:
        raise ValueError(f"LRM features {missing} are not taps of this model")
    module.lrm = LRMProjections([feats[n].shape for n in names], mode, k)


def projection_names(count: int) -> list[str]:
    """The auxiliary-state names of ``count`` projections, in feature order."""
    return [f"{PREFIX}.{i}" for i in range(count)]
