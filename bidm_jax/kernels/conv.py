"""Binary convolution from packed weights (BiDM BNNConv2d, methods.md §2.2–2.4): a reference.

This module composes the two Pallas paths into a whole BiDM binary conv, the XNOR-popcount
path included, and is what the kernel tests and ``benchmarks/kernels.py`` exercise. It is a
kernel-level reference, not the layer the product runs: packed students execute through
:mod:`bidm_jax.quant.packed` (``conv_plane``: XLA's int8 conv, or :func:`im2col` + the
``packed_matmul`` kernel, any method's epilogue), which shares :func:`im2col` and the word
layout (:func:`default_group_words`) with this module.

    y = (sign(x + τ) ⊛ α·sign(W)) ⊙ K  +  s · shortcut(x),     K = kconv(mean_c |x|) + b_k

* α_o = mean_{kh,kw,i} |W[..., o]| (§2.2), computed once at packing time;
* K: a 1→1 conv with the host conv's kernel, stride and padding over the channel mean of the
  *unshifted* input, plus its bias (§2.3 step 3); one scale per output position;
* shortcut (§2.4): identity when C_in = C_out (average pooling by ``stride`` when strided),
  an FP 1×1 conv with bias when channels change; ``s`` is passed as used by the host model
  (LDM uses |s|, the CIFAR code uses s as is).

The conv runs as an im2col matmul: rows m = (b, ho, wo), contraction k = (dy, dx, c) (the
order of a Flax (kh, kw, I, O) kernel reshaped to (kh·kw·I, O)); K and α are the kernels'
row and column scales.

Zero padding is exact: a padded tap of ``sign(x)`` contributes 0, not ±1.
* path "mxu": the int8 im2col holds sign values (0 at padded taps, and 0 where x + τ is
  exactly 0, as torch.sign), so the int8 dot is exact by construction;
* path "popcount": activations are 1 bit, so a validity mask travels with them (bit 1 =
  real tap); the kernel counts only valid bits and uses K_m = #valid taps per row
  (xnor.py).  Here an exact zero of x + τ binarizes to +1 (packing.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bidm_jax.kernels._backend import resolve_backend
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import BITS, num_words, pack_signs
from bidm_jax.kernels.xnor import xnor_popcount_matmul

PATHS = ("mxu", "popcount")
_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PackedConv:
    """A binary conv kernel stored 1 bit per weight.

    words: (num_words(kh·kw·I, group_words), O) int32, sign bits of W reshaped to (kh·kw·I, O).
    alpha: (O,) float32, per-output-channel scale mean|W| (methods.md §2.2).
    """

    words: jax.Array
    alpha: jax.Array
    kernel_size: tuple[int, int]
    in_channels: int
    out_channels: int
    group_words: int

    @property
    def k(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels


jax.tree_util.register_dataclass(
    PackedConv,
    data_fields=["words", "alpha"],
    meta_fields=["kernel_size", "in_channels", "out_channels", "group_words"],
)


def default_group_words(k: int, backend: str | None = None) -> int:
    """Layout group per backend: TPU wants 128-lane dots, Triton a power-of-two dot K."""
    backend = resolve_backend(backend)
    kw = -(-k // BITS)
    if backend == "tpu":
        return kw if kw <= 128 else 128
    if backend == "gpu":
        return 32  # int8 MMA K; a partial last group costs nothing (tail planes)
    return 1


def pack_conv_weights(kernel: jax.Array, *, group_words: int | None = None,
                      backend: str | None = None) -> PackedConv:
    """Packs a Flax conv kernel (kh, kw, I, O) into sign bits + per-channel α.

    group_words defaults to :func:`default_group_words` for ``backend`` (the layout must
    suit the backend that later runs :func:`binary_conv2d`).
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be (kh, kw, I, O), got shape {kernel.shape}")
    kh, kw_, cin, cout = kernel.shape
    k = kh * kw_ * cin
    g = group_words or default_group_words(k, backend)
    flat = kernel.reshape(k, cout)
    alpha = jnp.mean(jnp.abs(flat.astype(jnp.float32)), axis=0)
    return PackedConv(pack_signs(flat, axis=0, group_words=g), alpha, (kh, kw_), cin, cout, g)


def _norm_padding(padding, kernel_size):
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        if padding.upper() == "SAME":
            return tuple(((s - 1) // 2, s - 1 - (s - 1) // 2) for s in kernel_size)
        raise ValueError(f"padding string must be 'SAME' or 'VALID', got {padding!r}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding must be int, 'SAME', 'VALID' or ((t, b), (l, r)); got {padding}")
    return pads


def im2col(xp, kernel_size, stride, out_hw):
    """(B, Hp, Wp, C) padded input -> (B·Ho·Wo, kh·kw·C) with k = (dy, dx, c)."""
    b, _, _, c = xp.shape
    ho, wo = out_hw
    cols = [
        xp[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride, :]
        for dy in range(kernel_size[0])
        for dx in range(kernel_size[1])
    ]
    return jnp.stack(cols, axis=3).reshape(b * ho * wo, len(cols) * c)


def _conv(x, w, stride, pads):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HI
    )


def _scale_and_shortcut(x, kernel_size, cout, tau, k_kernel, k_bias, shortcut_kernel,
                        shortcut_bias, stride, pads, out_hw):
    """K map (B, Ho, Wo) and the unscaled shortcut (B, Ho, Wo, O), both float32."""
    b, h, w, cin = x.shape
    if tau.shape != (cin,):
        raise ValueError(f"tau must have shape ({cin},), got {tau.shape}")
    if k_kernel.shape != (*kernel_size, 1, 1):
        raise ValueError(f"k_kernel must be {(*kernel_size, 1, 1)}, got {k_kernel.shape}")
    amap = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
    kmap = _conv(amap, k_kernel.astype(jnp.float32), stride, pads)[..., 0] + k_bias
    if shortcut_kernel is not None:
        if shortcut_kernel.shape != (1, 1, cin, cout):
            raise ValueError(f"shortcut_kernel must be (1, 1, {cin}, {cout}), got {shortcut_kernel.shape}")
        sc = _conv(x, shortcut_kernel.astype(jnp.float32), stride, ((0, 0), (0, 0)))
        if shortcut_bias is not None:
            sc = sc + shortcut_bias
    elif cin != cout:
        raise ValueError(f"channels change {cin} -> {cout}: a (1, 1, {cin}, {cout}) shortcut_kernel is required")
    elif stride > 1:
        hs, ws = h // stride, w // stride
        sc = x[:, : hs * stride, : ws * stride].reshape(b, hs, stride, ws, stride, cin).mean((2, 4))
    else:
        sc = x
    if sc.shape[1:3] != tuple(out_hw):
        raise ValueError(f"shortcut spatial shape {sc.shape[1:3]} != conv output {tuple(out_hw)}")
    return kmap, sc


def binary_conv2d(
    x: jax.Array,
    packed: PackedConv,
    *,
    tau: jax.Array,
    k_kernel: jax.Array,
    k_bias: jax.Array | float = 0.0,
    shortcut_scale: jax.Array | float = 0.0,
    shortcut_kernel: jax.Array | None = None,
    shortcut_bias: jax.Array | None = None,
    stride: int = 1,
    padding="SAME",
    path: str = "mxu",
    backend: str | None = None,
    interpret: bool = False,
    **kernel_kwargs,
) -> jax.Array:
    """BiDM binary conv (methods.md §2.3–2.4) from packed weights.

    Args:
      x: (B, H, W, I) float input (before the τ shift).
      packed: :func:`pack_conv_weights` of the (kh, kw, I, O) kernel.
      tau: (I,) channel threshold τ.  k_kernel: (kh, kw, 1, 1) and k_bias (scalar): the
        learnable scale conv.  shortcut_scale: s, applied as given.
      shortcut_kernel, shortcut_bias: (1, 1, I, O), (O,) FP shortcut when I != O.
      stride: int.  padding: int, 'SAME', 'VALID' or ((top, bottom), (left, right)).
      path: "mxu" (int8 ±1 im2col, tensor cores / MXU) or "popcount" (XNOR-popcount).
      backend, interpret, kernel_kwargs: passed to the matmul kernel (e.g. ``operand="int4"``
        for the TPU MXU path's operand dtype, tpu_matmul.py).

    Returns:
      (B, Ho, Wo, O) float32.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != packed.in_channels:
        raise ValueError(f"x must be (B, H, W, {packed.in_channels}), got {x.shape}")
    b, h, w, cin = x.shape
    kh, kw_ = packed.kernel_size
    pads = _norm_padding(padding, packed.kernel_size)
    ho = (h + sum(pads[0]) - kh) // stride + 1
    wo = (w + sum(pads[1]) - kw_) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {x.shape} too small for kernel {packed.kernel_size} with padding {pads}")
    tau = jnp.asarray(tau, jnp.float32)
    kmap, sc = _scale_and_shortcut(
        x, packed.kernel_size, packed.out_channels, tau, jnp.asarray(k_kernel), k_bias,
        shortcut_kernel, shortcut_bias, stride, pads, (ho, wo))
    row_scale = kmap.reshape(-1)
    k, g = packed.k, packed.group_words
    full_pads = ((0, 0), pads[0], pads[1], (0, 0))
    if path == "mxu":
        xb = jnp.pad(jnp.sign(x + tau).astype(jnp.int8), full_pads)
        out = packed_matmul(im2col(xb, packed.kernel_size, stride, (ho, wo)), packed.words, k, g,
                            row_scale, packed.alpha, backend=backend, interpret=interpret, **kernel_kwargs)
    else:
        # Padded taps hold +1 here (value 0 packs as bit 0); the mask bit says they are not real.
        xs = jnp.pad(x + tau, full_pads)
        a_words = pack_signs(im2col(xs, packed.kernel_size, stride, (ho, wo)), axis=1, group_words=g)
        ones = jnp.pad(jnp.full((1, h, w, 1), -1.0), full_pads)
        valid = im2col(jnp.broadcast_to(ones, (1, h + sum(pads[0]), w + sum(pads[1]), cin)),
                         packed.kernel_size, stride, (ho, wo))
        mask = jnp.tile(pack_signs(valid, axis=1, group_words=g), (b, 1))
        if a_words.shape[1] != num_words(k, g):
            raise ValueError("internal: activation words do not match the packed weight layout")
        out = xnor_popcount_matmul(a_words, packed.words, k, row_scale, packed.alpha, a_mask=mask,
                                   backend=backend, interpret=interpret, **kernel_kwargs)
    y = out.reshape(b, ho, wo, packed.out_channels)
    return y + jnp.asarray(shortcut_scale, jnp.float32) * sc


def binary_conv2d_reference(x, kernel, *, tau, k_kernel, k_bias=0.0, shortcut_scale=0.0,
                            shortcut_kernel=None, shortcut_bias=None, stride=1, padding="SAME"):
    """The same layer with ``lax.conv`` on ±1 floats and the unpacked FP kernel (kh, kw, I, O).

    sign follows torch.sign (sign(0) = 0); zero padding of sign(x) contributes 0.
    """
    x = jnp.asarray(x, jnp.float32)
    kernel = jnp.asarray(kernel, jnp.float32)
    kh, kw_, cin, cout = kernel.shape
    pads = _norm_padding(padding, (kh, kw_))
    alpha = jnp.mean(jnp.abs(kernel), axis=(0, 1, 2))
    xb = jnp.sign(x + jnp.asarray(tau, jnp.float32))
    y = _conv(xb, alpha * jnp.sign(kernel), stride, pads)
    kmap, sc = _scale_and_shortcut(x, (kh, kw_), cout, jnp.asarray(tau, jnp.float32),
                                   jnp.asarray(k_kernel), k_bias, shortcut_kernel, shortcut_bias,
                                   stride, pads, y.shape[1:3])
    return y * kmap[..., None] + jnp.asarray(shortcut_scale, jnp.float32) * sc
