"""Weight and activation binarizers (pure functions) for W1A1 and low-bit methods.

Layout conventions: Flax kernels are (kh, kw, I, O) for convs and (I, O) for dense
layers; "per output channel" reduces over every axis but the last. Activations are
NHWC (or (B, F) for dense inputs), so "per channel" is the last axis as well.
Formulas cite methods.md (§2.2 BiDM/ReActNet weights, §2.3 BiDM activations, §5 baselines).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from bidm_jax.quant import ste

__all__ = [
    "per_channel_abs_mean",
    "weight_channel_detached",
    "weight_xnor_exact",
    "weight_learnable_scale",
    "weight_dorefa",
    "weight_reste",
    "weight_sign",
    "act_sign_ste",
    "act_approx_sign",
    "act_rsign",
    "act_rsign_linear_code",
    "act_dorefa",
    "act_reste",
    "lsq_quantize",
    "lsq_integer",
    "lsq_init_scale",
    "lsq_channel_init",
    "ebb_weight",
    "lsq_levels",
    "input_abs_mean",
    "conv2d_nhwc",
    "box_filter_scale",
    "xnorpp_gamma",
]


# --- weights ---------------------------------------------------------------------------------

def per_channel_abs_mean(w: jax.Array) -> jax.Array:
    """alpha_o = mean |W| over all axes but the last: (..., O) -> (O,). (XNOR-Net ||W||_1/n)."""
    return jnp.mean(jnp.abs(w), axis=tuple(range(w.ndim - 1)))


@jax.custom_vjp
def weight_channel_detached(w: jax.Array) -> jax.Array:
    """ReActNet HardBinaryConv / BiDM code weights (methods.md §2.2).

    Forward W_b = alpha ⊙ sign(W), alpha = mean|W| per output channel, recomputed each call
    and detached. Backward dL/dW = dL/dW_b · 1[|W| <= 1] (STE through clamp(W, -1, 1)).
    w: (kh, kw, I, O) or (I, O). §8 item 8: [0.5,-0.2,0.1,-0.4] -> [0.3,-0.3,0.3,-0.3].
    """
    return per_channel_abs_mean(w) * jnp.sign(w)


def _wcd_fwd(w):
    return weight_channel_detached(w), w


def _wcd_bwd(w, g):
    return (jnp.where(jnp.abs(w) <= 1.0, g, jnp.zeros_like(g)),)


weight_channel_detached.defvjp(_wcd_fwd, _wcd_bwd)


@jax.custom_vjp
def weight_xnor_exact(w: jax.Array) -> jax.Array:
    """XNOR-Net weights with the paper's gradient (Rastegari et al. 2016; methods.md §5).

    Forward alpha ⊙ sign(W) (alpha per output channel). Backward
    dL/dW = dL/dW~ · (1/n + alpha · 1[|W| <= 1]), n = weights per output channel.
    """
    return per_channel_abs_mean(w) * jnp.sign(w)


def _wxe_fwd(w):
    return weight_xnor_exact(w), w


def _wxe_bwd(w, g):
    n = math.prod(w.shape[:-1])
    alpha = per_channel_abs_mean(w)
    mask = (jnp.abs(w) <= 1.0).astype(g.dtype)
    return (g * (1.0 / n + alpha.astype(g.dtype) * mask),)


weight_xnor_exact.defvjp(_wxe_fwd, _wxe_bwd)


def weight_learnable_scale(w: jax.Array, sigma: jax.Array) -> jax.Array:
    """BiDM paper Eq. 6: W_b = sigma ⊙ sign(W), sigma (O,) learnable (init mean|W|).

    Clipped STE for sign; sigma gets dL/dsigma_o = sum dL/dW_b · sign(W) over the channel.
    """
    return sigma * ste.sign_ste(w)


def weight_dorefa(w: jax.Array) -> jax.Array:
    """DoReFa-Net 1-bit weights (methods.md §5): E·sign(W/E), E = mean|W| per layer.

    As in the DoReFa reference implementation E is stop-gradiented and sign has the identity
    estimator, so dL/dW = dL/dW_b (the 1/E inside and the E outside cancel).
    """
    e = lax.stop_gradient(jnp.mean(jnp.abs(w)))
    return e * ste.sign_identity(w / e)


def weight_reste(w: jax.Array, o: jax.Array | float, t: float = 1.5) -> jax.Array:
    """ReSTE weights: mean|W| over the whole layer (NOT detached) times sign(W) with the
    power-rule estimator (DravenALG/ReSTE BinarizeConv2d; methods.md §5)."""
    return jnp.mean(jnp.abs(w)) * ste.reste_sign(w, o, t)


def weight_sign(w: jax.Array) -> jax.Array:
    """Unscaled sign(W) with clipped STE (XNOR-Net++: the scale lives in Gamma)."""
    return ste.sign_ste(w)


# --- activations -----------------------------------------------------------------------------

def act_sign_ste(x: jax.Array) -> jax.Array:
    """sign(x), clipped STE 1[|x| <= 1] (XNOR-Net / XNOR-Net++ inputs)."""
    return ste.sign_ste(x)


def act_approx_sign(x: jax.Array) -> jax.Array:
    """sign(x), ApproxSign backward (Bi-Real; BBCU after its move0 shift)."""
    return ste.approx_sign(x)


def act_rsign(x: jax.Array, tau: jax.Array) -> jax.Array:
    """RSign / BiDM channel shift: sign(x + tau), ApproxSign backward (§2.3 steps 1-2).

    x: (..., C); tau: (C,) learnable, init 0. Gradient reaches x and tau.
    """
    return ste.approx_sign(x + tau)


def act_rsign_linear_code(x: jax.Array, tau: jax.Array) -> jax.Array:
    """BiDM code's BNNLinear quirk (§2.3): forward sign(x) ignores tau; backward is the
    ApproxSign derivative at x + tau, so tau only shapes gradients."""
    shifted = ste.approx_sign(x + tau)
    # shifted - stop_gradient(shifted) is exactly 0 forward and carries the gradient.
    return jnp.sign(x) + (shifted - lax.stop_gradient(shifted))


def act_dorefa(x: jax.Array, bits: int = 1) -> jax.Array:
    """DoReFa k-bit activation round((2^k-1)·clip(x,0,1))/(2^k-1), STE; k=1 gives {0,1}."""
    n = float(2 ** bits - 1)
    return ste.round_ste(n * jnp.clip(x, 0.0, 1.0)) / n


def act_reste(x: jax.Array, o: jax.Array | float, t: float = 1.5) -> jax.Array:
    """sign(x) with ReSTE's power-rule estimator (applied to activations as to weights)."""
    return ste.reste_sign(x, o, t)


# --- LSQ (Esser et al.; methods.md §4.4, §5) -----------------------------------------------

def lsq_levels(bits: int, signed: bool = True) -> tuple[int, int]:
    """(Q_N, Q_P): signed b bits -> (2^(b-1), 2^(b-1)-1); unsigned -> (0, 2^b - 1)."""
    if bits < 1:
        raise ValueError(f"LSQ needs bits >= 1, got {bits}")
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def lsq_quantize(x: jax.Array, s: jax.Array, bits: int, *, signed: bool = True,
                 num_elements: int | None = None) -> jax.Array:
    """x_q = s·round(clip(x/s, -Q_N, Q_P)) with the LSQ step-size gradient.

    dx_q/ds = round(x/s) - x/s inside the range, -Q_N below, Q_P above, multiplied by
    g = 1/sqrt(N·Q_P) (N = ``num_elements``, default x.size). dx_q/dx = 1 inside, 0
    outside. s: scalar or broadcastable to x (e.g. (O,) per output channel). Signed b >= 2
    runs :func:`bidm_jax.quant.ste.lsq`; unsigned (and signed 1-bit) the same rule inline.
    """
    qn, qp = lsq_levels(bits, signed)
    n = x.size if num_elements is None else num_elements
    g = 1.0 / math.sqrt(n * max(qp, 1))
    s = ste.grad_scale(s, g)
    if signed and bits >= 2:
        return ste.lsq(x, s, bits)
    v = jnp.clip(x / s, -qn, qp)
    return ste.round_ste(v) * s


def lsq_integer(x: jax.Array, s: jax.Array, bits: int) -> jax.Array:
    """The signed integer levels round(clip(x/s, -Q_N, Q_P)) of :func:`lsq_quantize`'s
    forward (x_q = levels·s), in x's dtype: what a packed layer feeds its integer core."""
    qn, qp = lsq_levels(bits, True)
    return jnp.round(jnp.clip(x / s, -qn, qp))


# Floor of an initial LSQ step: an all-zero tensor (a zero-initialised conv such as the LDM
# UNet's out.2 before training, or a zero activation) would give s = 0 and 0/0 = NaN.
MIN_LSQ_STEP = 1e-8


def lsq_init_scale(x: jax.Array, bits: int, signed: bool = True) -> jax.Array:
    """LSQ init s = 2·mean|x|/sqrt(Q_P) (methods.md §5; §4.6 item 2 gives 0.740810), at
    least ``MIN_LSQ_STEP``."""
    _, qp = lsq_levels(bits, signed)
    return jnp.maximum(2.0 * jnp.mean(jnp.abs(x)) / math.sqrt(qp), MIN_LSQ_STEP)


def lsq_channel_init(w: jax.Array, bits: int) -> jax.Array:
    """Per-output-channel LSQ weight step 2·mean|W|/sqrt(Q_P): (..., O) -> (O,), at least
    ``MIN_LSQ_STEP``."""
    _, qp = lsq_levels(bits, True)
    return jnp.maximum(2.0 * per_channel_abs_mean(w) / math.sqrt(qp), MIN_LSQ_STEP)


# --- EBB: BinaryDM's evolvable-basis binarizer (BinaryDM Eq. 5-8; methods.md §3.2) ----------

@jax.custom_vjp
def ebb_weight(w: jax.Array, sigma1: jax.Array, sigma2: jax.Array) -> jax.Array:
    """Two-basis weight w_bi = σ_I·sign(w) + σ_II·sign(w − σ_I·sign w) (Eq. 5).

    w: (kh, kw, I, O) or (I, O); sigma1, sigma2: (O,) learnable per output channel (init
    mean|w| and mean|w − σ_I sign w|, :func:`per_channel_abs_mean`), broadcast over the last
    axis. With r = w − σ_I·sign(w), the clipped-STE masks m_w = 1[|w| <= 1] (the released
    code's BinaryQuantize) and m_r = 1[|r| < 1] (Eq. 7):

    * dw_bi/dσ_I = sign(w)·(1 − σ_II·m_r)                                    (Eq. 7)
    * dw_bi/dσ_II = sign(r)                                                  (Eq. 8)
    * dw_bi/dw = σ_I·m_w + σ_II·m_r·(1 − σ_I·m_w)     (the chain rule through r)

    σ_II = 0 is the single basis σ_I·sign(w) with its gradients (the paper's stage 2).
    §8 item 9: w = [0.5, −0.2, 0.1, −0.4] -> σ_I 0.3, σ_II 0.15, w_bi [0.45, −0.15, 0.15,
    −0.45]. Forward signs follow torch.sign (sign(0) = 0).
    """
    b1 = jnp.sign(w)
    return sigma1 * b1 + sigma2 * jnp.sign(w - sigma1 * b1)


def _ebb_fwd(w, sigma1, sigma2):
    return ebb_weight(w, sigma1, sigma2), (w, sigma1, sigma2)


def _ebb_bwd(res, g):
    w, s1, s2 = res
    b1 = jnp.sign(w)
    r = w - s1 * b1
    m_w = (jnp.abs(w) <= 1.0).astype(g.dtype)
    m_r = (jnp.abs(r) < 1.0).astype(g.dtype)
    axes = tuple(range(w.ndim - 1))
    d1 = jnp.sum(g * b1 * (1.0 - s2 * m_r), axis=axes)
    d2 = jnp.sum(g * jnp.sign(r), axis=axes)
    dw = g * (s1 * m_w + s2 * m_r * (1.0 - s1 * m_w))
    return dw, d1.reshape(jnp.shape(s1)), d2.reshape(jnp.shape(s2))


ebb_weight.defvjp(_ebb_fwd, _ebb_bwd)


# --- input scale maps (XNOR-Net K, BiDM k-conv, XNOR-Net++ Gamma) ---------------------------

def input_abs_mean(x: jax.Array) -> jax.Array:
    """A = mean_c |x| over channels: (B, H, W, C) -> (B, H, W, 1) (§2.3 step 3)."""
    return jnp.mean(jnp.abs(x), axis=-1, keepdims=True)


def conv2d_nhwc(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """PyTorch-style conv: x (B,H,W,I), kernel (kh,kw,I,O), symmetric integer padding."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def box_filter_scale(x: jax.Array, kernel_size: int, stride: int = 1,
                     padding: int = 0) -> jax.Array:
    """XNOR-Net K = A * k with k the fixed kh×kw box filter 1/k² (same stride/padding as the
    host conv). x: (B,H,W,C) -> (B,H_out,W_out,1)."""
    k = jnp.full((kernel_size, kernel_size, 1, 1), 1.0 / kernel_size ** 2, x.dtype)
    return conv2d_nhwc(input_abs_mean(x), k, stride, padding)


def xnorpp_gamma(alpha: jax.Array, beta: jax.Array, gamma: jax.Array) -> jax.Array:
    """XNOR-Net++ Gamma = alpha ⊗ beta ⊗ gamma: alpha (C_out,), beta (H_out,), gamma (W_out,)
    -> (H_out, W_out, C_out), broadcast over the batch of an NHWC output."""
    return beta[:, None, None] * gamma[None, :, None] * alpha[None, None, :]
