"""Straight-through estimators: forward sign/round, backward a surrogate derivative.

Every estimator is one ``jax.custom_vjp`` so XLA fuses the forward and the backward
mask into the surrounding elementwise work (the PyTorch reference launches one kernel
per ``detach()`` trick). Forward signs follow ``torch.sign``: sign(0) = 0 (methods.md
conventions), so a zero input stays zero, exactly as the official code behaves.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = [
    "sign",
    "sign_ste",
    "sign_identity",
    "approx_sign",
    "approx_sign_grad",
    "reste_sign",
    "reste_grad",
    "reste_o_schedule",
    "round_ste",
    "grad_scale",
    "lsq",
]


def sign(x: jax.Array) -> jax.Array:
    """torch.sign semantics: -1, 0 (at exactly 0), +1. No gradient rule."""
    return jnp.sign(x)


def _zero_cotangent(a):
    return jnp.zeros_like(a)


# --- clipped STE (BNN / XNOR-Net / ReActNet weights) -------------------------------------

@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
    """sign(x) with the clipped straight-through estimator d/dx = 1[|x| <= 1].

    x: any shape, float. Used for XNOR-Net inputs (methods.md §5) and for the
    HardBinaryConv weights of ReActNet/BiDM (§2.2: STE through clamp(W, -1, 1)).
    """
    return jnp.sign(x)


def _sign_ste_fwd(x):
    return jnp.sign(x), x


def _sign_ste_bwd(x, g):
    return (jnp.where(jnp.abs(x) <= 1.0, g, jnp.zeros_like(g)),)


sign_ste.defvjp(_sign_ste_fwd, _sign_ste_bwd)


# --- identity STE (DoReFa weights) ---------------------------------------------------------

@jax.custom_vjp
def sign_identity(x: jax.Array) -> jax.Array:
    """sign(x) with the unclipped identity estimator d/dx = 1 (DoReFa-Net, methods.md §5)."""
    return jnp.sign(x)


def _sign_identity_fwd(x):
    return jnp.sign(x), None


def _sign_identity_bwd(_, g):
    return (g,)


sign_identity.defvjp(_sign_identity_fwd, _sign_identity_bwd)


# --- ApproxSign (Bi-Real Net; ReActNet RSign; BiDM activations) ----------------------------

def approx_sign_grad(x: jax.Array) -> jax.Array:
    """Bi-Real ApproxSign derivative: 2+2x on [-1,0), 2-2x on [0,1), 0 elsewhere (§2.3)."""
    return jnp.maximum(2.0 - 2.0 * jnp.abs(x), 0.0).astype(x.dtype)


@jax.custom_vjp
def approx_sign(x: jax.Array) -> jax.Array:
    """sign(x) forward (sign(0) = 0), piecewise-linear ApproxSign backward.

    methods.md §2.3 step 2 / §8 item 10: derivative 1.0 at -0.5, 2.0 at 0, 1.5 at 0.25,
    0 for |x| >= 1. Equivalent to the official sign(x) - F(x).detach() + F(x) with
    F = -1 / x^2+2x / -x^2+2x / 1, without materialising F.
    """
    return jnp.sign(x)


def _approx_sign_fwd(x):
    return jnp.sign(x), x


def _approx_sign_bwd(x, g):
    return (g * approx_sign_grad(x).astype(g.dtype),)


approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


# --- ReSTE power-rule estimator --------------------------------------------------------------

_RESTE_INTERVAL = 0.1


def reste_grad(x: jax.Array, o: jax.Array | float, t: float = 1.5) -> jax.Array:
    """ReSTE surrogate derivative (Wu et al. ICCV 2023; methods.md §5).

    (1/o)|x|^((1-o)/o) for 0.1 < |x| <= t; the secant slope 0.1^(1/o)/0.1 for |x| <= 0.1;
    0 for |x| > t. ``o`` is a scalar (traced is fine), ``t`` the clipping threshold.
    """
    o = jnp.asarray(o, dtype=x.dtype)
    ax = jnp.abs(x)
    safe = jnp.maximum(ax, _RESTE_INTERVAL)  # keeps pow finite where the branch is unused
    power = (1.0 / o) * safe ** ((1.0 - o) / o)
    secant = _RESTE_INTERVAL ** (1.0 / o) / _RESTE_INTERVAL
    return jnp.where(ax <= _RESTE_INTERVAL, secant, jnp.where(ax <= t, power, 0.0)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def reste_sign(x: jax.Array, o: jax.Array | float, t: float = 1.5) -> jax.Array:
    """sign(x) forward, ReSTE power-rule backward (see :func:`reste_grad`).

    x: any shape; o: scalar power (1 at the start of training, o_end at the end, see
    :func:`reste_o_schedule`); t: static float threshold (1.5 in ReSTE's code).
    o receives a zero cotangent: it is a schedule value, not a parameter.
    """
    del o, t
    return jnp.sign(x)


def _reste_fwd(x, o, t):
    return jnp.sign(x), (x, jnp.asarray(o))


def _reste_bwd(t, res, g):
    x, o = res
    return g * reste_grad(x, o, t).astype(g.dtype), _zero_cotangent(o)


reste_sign.defvjp(_reste_fwd, _reste_bwd)


def reste_o_schedule(progress: jax.Array | float, o_end: float = 3.0) -> jax.Array:
    """ReSTE's cosine schedule o = 1 + (1 - cos(pi/2 * progress)) * (o_end - 1).

    progress: training fraction in [0, 1] (clipped), e.g. step / total_steps. Returns a
    float32 scalar: 1 at progress 0, o_end at progress 1 (DravenALG/ReSTE main.py).
    """
    p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
    return 1.0 + (1.0 - jnp.cos(0.5 * math.pi * p)) * (o_end - 1.0)


# --- round STE and LSQ gradient scaling ----------------------------------------------------

@jax.custom_vjp
def round_ste(x: jax.Array) -> jax.Array:
    """round-half-to-even forward (as torch.round), identity backward."""
    return jnp.round(x)


def _round_fwd(x):
    return jnp.round(x), None


def _round_bwd(_, g):
    return (g,)


round_ste.defvjp(_round_fwd, _round_bwd)


@jax.custom_vjp
def grad_scale(x: jax.Array, scale: jax.Array | float) -> jax.Array:
    """Identity forward; backward multiplies the cotangent by ``scale`` (LSQ, Esser et al.).

    scale receives a zero cotangent (it is a constant such as 1/sqrt(N * Q_p)).
    """
    del scale
    return x


def _grad_scale_fwd(x, scale):
    return x, jnp.asarray(scale)


def _grad_scale_bwd(scale, g):
    return (g * scale.astype(g.dtype), jnp.zeros_like(scale))


grad_scale.defvjp(_grad_scale_fwd, _grad_scale_bwd)


# --- LSQ fake-quantization (Esser et al.; methods.md §3.3, §5) -------------------------------

def _sum_to(x: jax.Array, shape: tuple) -> jax.Array:
    """Sums a broadcast cotangent back to ``shape`` (a step per tensor or per channel)."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes, keepdims=False).reshape(shape) if axes else x.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def lsq(x: jax.Array, step: jax.Array, bits: int) -> jax.Array:
    """Signed b-bit LSQ fake-quantization x_q = s·round(clip(x/s, −Q_N, Q_P)),
    Q_N = 2^(b−1), Q_P = 2^(b−1) − 1 (round half to even, as torch.round).

    x: any shape; step s: a scalar or broadcastable to x (e.g. (O,) per output channel of a
    kernel, the last axis); bits: static int >= 2. Gradients: w.r.t. x the STE inside the
    range (1 where −Q_N <= x/s <= Q_P, else 0); w.r.t. s LSQ's round(x/s) − x/s inside,
    −Q_N below, Q_P above, summed to the step's shape, *before* the grad-scale factor
    1/sqrt(N·Q_P) (the caller applies it, :func:`bidm_jax.quant.binarizers.lsq_quantize`).
    methods.md §4.6 item 2: s = 0.25, x = [−2.5, −0.3, 0, 0.2, 1.9] -> x_q = [−2, −0.25, 0,
    0.25, 1.75], dx_q/ds = [−8, 0.2, 0, 0.2, 7].
    """
    qn, qp = _lsq_levels(bits)
    return jnp.round(jnp.clip(x / step, -qn, qp)) * step


def _lsq_levels(bits: int) -> tuple[int, int]:
    if not isinstance(bits, int) or bits < 2:
        raise ValueError(f"signed LSQ needs an int bits >= 2, got {bits!r}")
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def _lsq_fwd(x, step, bits):
    return lsq(x, step, bits), (x, step)


def _lsq_bwd(bits, res, g):
    x, step = res
    qn, qp = _lsq_levels(bits)
    v = x / step
    inside = (v >= -qn) & (v <= qp)
    q = jnp.round(jnp.clip(v, -qn, qp))
    dstep = g * jnp.where(inside, q - v, q)   # q is -Q_N / Q_P outside the range
    gx = jnp.where(inside, g, jnp.zeros_like(g))
    return gx, _sum_to(dstep, jnp.shape(step)).astype(jnp.result_type(step))


lsq.defvjp(_lsq_fwd, _lsq_bwd)
