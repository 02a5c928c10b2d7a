"""Asymmetric (affine) uniform quantization with a zero point, and the clipping-range search
that initialises it (EfficientDM, He et al. ICLR 2024; methods.md §5).

    q   = clip(round(x/Δ + z), 0, 2^b − 1)        integer level
    x_q = Δ·(q − z)                                dequantized value

Δ > 0 is the step and z the zero point, per tensor, per output channel (weights: the last
kernel axis) or per sample (a per-step activation step picked by each sample's timestep),
broadcast against x. Two forms (``form``):

* ``offset`` (this project's default): z is added *before* rounding, as above. With an
  integer z it is the released code's quantizer exactly; with a real z it stays a b-bit
  quantizer (2^b levels on a shifted grid), so a trained real zero point still exports as
  integer levels, and at b = 1 it gives the two levels {−zΔ, (1 − z)Δ} (the W1A1 rows);
* ``code``: the released code's ``round(x/Δ) + z`` then clip (quant_layer.py,
  ``UniformAffineQuantizer.forward``). With a real z (the code trains the activation zero
  points) the levels are not integers and up to 2^b + 1 values occur; no integer export.

Gradients (one ``jax.custom_vjp``, the code's autograd through ``round_ste`` and its ReLU
clipping): with r = round(x/Δ + z) (offset) or round(x/Δ) + z (code), "inside" = 0 ≤ r ≤ 2^b−1,

    ∂x_q/∂x = 1 inside, 0 outside (straight through the rounding);
    ∂x_q/∂Δ = (r − z) − x/Δ inside, q − z outside (q = 0 or 2^b − 1);
    ∂x_q/∂z = 0 inside, −Δ outside,

summed to the shapes of Δ and z. No LSQ gradient scale (the code has none).

:func:`mse_search`: the code's ``scale_method='mse'`` initialisation: for i = 0 … 79 the
clipping range [(1 − 0.01i)·min, (1 − 0.01i)·max] of x (per channel for weights), Δ = range /
(2^b − 1), z = round(−min/Δ) (not rounded at b = 1: the two levels are then exactly the
range's ends), score = mean |x − x_q|^2.4 (LAPQ's L_p norm, which the code uses under the
name "mse"); the first candidate with the lowest score wins.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bidm_jax.quant.ste import _sum_to

__all__ = ["FORMS", "SEARCH_CANDIDATES", "SEARCH_NORM", "affine_quantize", "affine_levels",
           "signed_offset", "mse_search"]

FORMS = ("offset", "code")
SEARCH_CANDIDATES = 80   # clipping ratios 1.00, 0.99, …, 0.21 (quant_layer.py)
SEARCH_NORM = 2.4        # the L_p norm of the search score (quant_layer.py, after LAPQ)
MIN_STEP = 1e-8          # the code's floor for a degenerate (constant) range


def _check(bits: int, form: str) -> int:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"affine quantization needs an int bits in 1..8, got {bits!r}")
    if form not in FORMS:
        raise ValueError(f"affine quantizer form must be one of {FORMS}, got {form!r}")
    if form == "code" and bits == 1:
        raise ValueError("the code form at 1 bit gives three levels; use form 'offset'")
    return 2 ** bits - 1


def _rounded(x, delta, zp, form):
    """(r, x/Δ): the unclipped level r and the scaled input."""
    v = x / delta
    return (jnp.round(v + zp) if form == "offset" else jnp.round(v) + zp), v


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def affine_quantize(x: jax.Array, delta: jax.Array, zp: jax.Array, bits: int,
                    form: str = "offset") -> jax.Array:
    """x_q = Δ·(clip(r, 0, 2^b − 1) − z) (module docstring; r per ``form``).

    x: any shape (float); delta, zp: broadcastable to x (a scalar, (O,) for a kernel's last
    axis, (B, 1, …) per sample); bits: static 1..8. Gradients as the module docstring says.
    """
    n = _check(bits, form)
    delta, zp = delta.astype(x.dtype), zp.astype(x.dtype)
    r, _ = _rounded(x, delta, zp, form)
    return (jnp.clip(r, 0, n) - zp) * delta


def _affine_fwd(x, delta, zp, bits, form):
    return affine_quantize(x, delta, zp, bits, form), (x, delta, zp)


def _affine_bwd(bits, form, res, g):
    x, delta, zp = res
    n = 2 ** bits - 1
    d, z = delta.astype(x.dtype), zp.astype(x.dtype)
    r, v = _rounded(x, d, z, form)
    inside = (r >= 0) & (r <= n)
    q = jnp.clip(r, 0, n)
    g_delta = g * jnp.where(inside, r - z - v, q - z)
    g_zp = g * jnp.where(inside, jnp.zeros_like(d), -d)
    return (jnp.where(inside, g, jnp.zeros_like(g)),
            _sum_to(g_delta, jnp.shape(delta)).astype(delta.dtype),
            _sum_to(g_zp, jnp.shape(zp)).astype(zp.dtype))


affine_quantize.defvjp(_affine_fwd, _affine_bwd)


def signed_offset(bits: int) -> int:
    """2^(b−1): levels q ∈ [0, 2^b − 1] are stored as q − 2^(b−1) ∈ [−2^(b−1), 2^(b−1) − 1]
    (int8 for b ≤ 8), with the zero point shifted by the same amount, (q − z) unchanged."""
    return 2 ** (bits - 1)


def affine_levels(x: jax.Array, delta: jax.Array, zp: jax.Array, bits: int):
    """(signed levels, Δ, shifted zero point) of the offset form with
    ``affine_quantize(x) == Δ·(levels − zero point)``: levels are float-valued integers in
    [−2^(b−1), 2^(b−1) − 1] (:func:`signed_offset`), what a packed layer stores or feeds its
    integer core. No gradient."""
    n = _check(bits, "offset")
    delta, zp = delta.astype(x.dtype), zp.astype(x.dtype)
    r, _ = _rounded(x, delta, zp, "offset")
    shift = signed_offset(bits)
    return jnp.clip(r, 0, n) - shift, delta, zp - shift


def _candidate(lo, hi, bits):
    """(Δ, z) of the clipping range [lo, hi] (the code's ``quantize``; z real at 1 bit)."""
    delta = jnp.maximum((hi - lo) / (2 ** bits - 1), MIN_STEP)
    zp = -lo / delta
    return delta, (zp if bits == 1 else jnp.round(zp))


@functools.partial(jax.jit, static_argnames=("bits", "per_channel"))
def mse_search(x: jax.Array, bits: int, per_channel: bool = False):
    """(Δ, z) minimising mean |x − x_q|^2.4 over the code's 80 shrinking clipping ranges.

    x: a kernel (..., O) with ``per_channel`` (one (Δ, z) per output channel: (O,), (O,)),
    else any tensor (scalars). Ties keep the earliest (widest) candidate, as the code's
    strict ``<``. The candidates run in a scan, so memory stays at a few copies of x.
    """
    x = jnp.asarray(x, jnp.float32)
    if per_channel:
        x = x.reshape(-1, x.shape[-1])
        lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
        reduce = lambda e: jnp.mean(e, axis=0)
    else:
        lo, hi = jnp.min(x), jnp.max(x)
        reduce = jnp.mean

    def score(_, i):
        s = 1.0 - 0.01 * i
        delta, zp = _candidate(lo * s, hi * s, bits)
        x_q = (jnp.clip(jnp.round(x / delta + zp), 0, 2 ** bits - 1) - zp) * delta
        return None, (reduce(jnp.abs(x - x_q) ** SEARCH_NORM), delta, zp)

    _, (scores, deltas, zps) = jax.lax.scan(score, None,
                                            jnp.arange(SEARCH_CANDIDATES, dtype=jnp.float32))
    best = jnp.argmin(scores, axis=0)           # first minimum: the code's strict "<"
    pick = lambda a: jnp.take_along_axis(a, best[None], axis=0)[0] if per_channel else a[best]
    return pick(deltas), pick(zps)
