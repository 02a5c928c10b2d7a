"""Distillation and training losses for BiDM (methods.md §2.6-2.7).

Features are NHWC here; the spec's SPD facts are stated in NCHW. A row-Gram "per (batch,
channel) over the h axis" is A[b, c] = P·Pᵀ with P = F[b, c, rows, cols] of shape (h_p, w_p),
which in NHWC is ``einsum('bhwc,bkwc->bchk')`` over a patch: the same numbers.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from bidm_jax.distill import lrm

__all__ = ["spd_loss", "spd_patch_terms", "l2_feature_loss", "lrm_loss", "noise_loss",
           "total_loss", "SPD_FORMS", "DISTILL_KINDS"]

SPD_FORMS = ("code", "paper")
DISTILL_KINDS = ("spd", "l2", "lrm", "none")


def _safe_norm(x: jax.Array, axis=None, keepdims=False) -> jax.Array:
    """Frobenius norm whose gradient at 0 is 0 (as torch.norm), not NaN."""
    ss = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    pos = ss > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def _safe_div(a, n):
    return a / jnp.where(n > 0, n, 1.0)


def _starts(size: int, patches: int) -> list[int]:
    # Official code: starts from linspace over the width, floored: {0, W/4, W/2, 3W/4}.
    return [int(size * i // patches) for i in range(patches)]


def _gram_term(ps: jax.Array, pt: jax.Array, form: str) -> jax.Array:
    """SPD term of one patch: ps/pt (B, h_p, w_p, C) -> scalar."""
    a_s = jnp.einsum("bhwc,bkwc->bchk", ps, ps)
    a_t = jnp.einsum("bhwc,bkwc->bchk", pt, pt)
    if form == "code":  # one norm over the whole (b, c, h_p, h_p) tensor
        d = _safe_div(a_s, _safe_norm(a_s)) - _safe_div(a_t, _safe_norm(a_t))
        return _safe_norm(d)
    axes = (1, 2, 3)  # paper: each sample's Gram normalised on its own
    d = (_safe_div(a_s, _safe_norm(a_s, axes, True)) - _safe_div(a_t, _safe_norm(a_t, axes, True)))
    return jnp.mean(_safe_norm(d, axes))


def spd_patch_terms(student: jax.Array, teacher: jax.Array, patches: int = 4,
                    form: str = "code") -> jax.Array:
    """Per-patch SPD terms of one feature pair (methods.md §2.6).

    student, teacher: (B, H, W, C). Patch (i, j) covers rows [r_i, r_i + H//p) and columns
    [c_j, c_j + W//p) with r_i = floor(i·H/p), c_j = floor(j·W/p) (the official code's
    linspace starts). Per patch A = P·Pᵀ per (batch, channel) (rows × rows);
    code form: term = ||A_s/||A_s||_F - A_t/||A_t||_F||_F with norms over the whole
    (B, C, h_p, h_p) tensor; paper form: norms per sample, term averaged over the batch.
    Empty patches (H or W < p) give 0. Returns (p, p) float32 (float64 under x64 inputs).
    """
    if form not in SPD_FORMS:
        raise ValueError(f"SPD form {form!r} is not valid; choose one of {list(SPD_FORMS)}")
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(f"SPD needs two NHWC features of equal shape, got {student.shape} "
                         f"and {teacher.shape}")
    if not isinstance(patches, int) or patches < 1:
        raise ValueError(f"patches must be a positive int, got {patches!r}")
    dtype = jnp.promote_types(student.dtype, jnp.float32)
    s, t = student.astype(dtype), lax.stop_gradient(teacher).astype(dtype)
    _, h, w, _ = s.shape
    hp, wp = h // patches, w // patches
    if hp == 0 or wp == 0:
        return jnp.zeros((patches, patches), dtype)
    if h % patches == 0 and w % patches == 0:  # patches tile the map: one batched einsum
        def split(x):
            b, _, _, c = x.shape
            return x.reshape(b, patches, hp, patches, wp, c)
        ss, tt = split(s), split(t)
        a_s = jnp.einsum("bpiqwc,bpkqwc->pqbcik", ss, ss)
        a_t = jnp.einsum("bpiqwc,bpkqwc->pqbcik", tt, tt)
        axes = (2, 3, 4, 5) if form == "code" else (3, 4, 5)
        d = (_safe_div(a_s, _safe_norm(a_s, axes, True))
             - _safe_div(a_t, _safe_norm(a_t, axes, True)))
        terms = _safe_norm(d, axes)
        return terms if form == "code" else jnp.mean(terms, axis=-1)
    rows, cols = _starts(h, patches), _starts(w, patches)
    return jnp.stack([jnp.stack([
        _gram_term(s[:, r:r + hp, c:c + wp], t[:, r:r + hp, c:c + wp], form) for c in cols])
        for r in rows])


def spd_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
             patches: int = 4, form: str = "code") -> jax.Array:
    """Space Patched Distillation, before the lambda weight (BiDM §3.3 Eq. 13-16; §2.6).

    student_feats / teacher_feats: equal-length lists of NHWC features (teacher is
    stop-gradiented). Returns the mean over features and p² patches of the per-patch term
    (code: Σ terms / (p²·#features)). The paper's λ/(2d+1)·Σ_m L^m equals λ times this mean
    when 2d+1 is the number of distilled features. §8 item 12: 1.043416 on its example.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"SPD needs equal, non-empty feature lists, got {len(student_feats)} "
                         f"student and {len(teacher_feats)} teacher features")
    terms = [jnp.mean(spd_patch_terms(s, t, patches, form))
             for s, t in zip(student_feats, teacher_feats)]
    return jnp.mean(jnp.stack(terms))


def l2_feature_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array]
                    ) -> jax.Array:
    """Plain feature distillation (BiDM Table 7 "L2"): mean over features of MSE(s, sg(t))."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"L2 distillation needs equal, non-empty feature lists, got "
                         f"{len(student_feats)} and {len(teacher_feats)}")
    out = []
    for s, t in zip(student_feats, teacher_feats):
        if s.shape != t.shape:
            raise ValueError(f"feature shapes differ: student {s.shape} vs teacher {t.shape}")
        d = s.astype(jnp.float32) - lax.stop_gradient(t).astype(jnp.float32)
        out.append(jnp.mean(jnp.square(d)))
    return jnp.mean(jnp.stack(out))


def lrm_loss(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
             mode: str = "code", k: int = 4) -> jax.Array:
    """Low-rank Representation Mimicking (BinaryDM Eq. 11–15; :mod:`bidm_jax.distill.lrm`),
    before λ: lists of NHWC features, each projection computed from its teacher feature as on
    the first batch, returning the mean over features of the projected MSE. §8 item 13: code
    mode, the SPD example features at 8×8 -> 2.237200."""
    projs = [lrm.projection(t, mode, k) for t in teacher_feats]
    return lrm.mean_term(student_feats, teacher_feats, projs, mode)


def noise_loss(eps_pred: jax.Array, eps: jax.Array, *, reduction: str = "sum",
               loss_type: str = "l2") -> jax.Array:
    """Denoising loss (§2.7): per-sample sum (CIFAR code) or mean (LDM) over C,H,W of the
    squared (l2) or absolute (l1, LDM-8) error, then mean over the batch. Inputs (B, ...)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction {reduction!r} is not valid; choose one of ['sum', 'mean']")
    if loss_type not in ("l2", "l1"):
        raise ValueError(f"loss_type {loss_type!r} is not valid; choose one of ['l2', 'l1']")
    if eps_pred.shape != eps.shape:
        raise ValueError(f"eps_pred {eps_pred.shape} and eps {eps.shape} differ in shape")
    d = eps_pred.astype(jnp.float32) - eps.astype(jnp.float32)
    e = jnp.square(d) if loss_type == "l2" else jnp.abs(d)
    axes = tuple(range(1, e.ndim))
    per = jnp.sum(e, axes) if reduction == "sum" else jnp.mean(e, axes)
    return jnp.mean(per)


def total_loss(eps_pred, eps, student_feats=(), teacher_feats=(), *, distill: str = "spd",
               weight: float = 1e-2, patches: int = 4, spd_form: str = "code",
               reduction: str = "sum", loss_type: str = "l2", lrm_projections=(),
               lrm_mode: str = "code") -> tuple[jax.Array, dict]:
    """Distillation objective (§2.7, §3.4): L = noise_loss + weight · distillation.

    distill: 'spd' (code default, weight 1e-2; paper CIFAR 3e-2), 'l2', 'lrm' (BinaryDM,
    weight 1e-4, with the fixed ``lrm_projections`` of the features) or 'none'.
    Returns (loss, {'noise': ..., 'distill': ...}) with the distillation term unweighted.
    """
    if distill not in DISTILL_KINDS:
        raise ValueError(f"distill {distill!r} is not valid; choose one of {list(DISTILL_KINDS)}")
    ln = noise_loss(eps_pred, eps, reduction=reduction, loss_type=loss_type)
    if distill == "spd":
        ld = spd_loss(student_feats, teacher_feats, patches, spd_form)
    elif distill == "l2":
        ld = l2_feature_loss(student_feats, teacher_feats)
    elif distill == "lrm":
        ld = lrm.mean_term(student_feats, teacher_feats, lrm_projections, lrm_mode)
    else:
        ld = jnp.zeros((), jnp.float32)
    return ln + weight * ld, {"noise": ln, "distill": ld}
