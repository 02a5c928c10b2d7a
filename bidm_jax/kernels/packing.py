"""Sign-bit packing: 32 signs per int32 word along the contraction axis (design.md §3).

Bit convention (one bit per value, LSB first):

* bit 1 means **-1**, bit 0 means **+1**; a value ``x`` packs as ``x < 0``.  So ``sign(0)``
  packs as **+1**.  This is the usual packed convention and also the IEEE sign-bit
  convention.  (PyTorch's ``torch.sign`` gives 0 at exactly 0; a single bit cannot hold 0.
  Exact zeros have probability zero for continuous activations; the int8 tensor-core path of
  :mod:`bidm_jax.kernels.conv` keeps them as 0 when exactness matters.)
* ``words`` is int32, not uint32: ``lax.population_count`` lowers for int32 on GPU Triton
  and on TPU Mosaic.

Layout.  With ``group_words = g`` (a layout parameter; ``g = 1`` is the plain layout) the
contraction axis is cut into groups of ``32·g`` elements and, inside group ``q``,

    element  k = q·32·g + j·g + w   lives in   bit j of word  q·g + w      (0 ≤ j < 32, 0 ≤ w < g).

For ``g = 1`` this is ``k = 32·w + j``.  The grouped layout lets a tensor-core kernel unpack
bit ``j`` of ``g`` consecutive words into ``g`` *consecutive* rows of the weight tile, so the
matching activation columns are one contiguous slice (packed_matmul.py).  A dot over ``k`` is
invariant to permuting ``k`` in both operands, so the XNOR-popcount path works in any layout as
long as both operands share it.

Padding.  The axis is padded to a multiple of ``32·g`` with **zero values**, which pack as
bit 0 (+1) in *both* operands.  In XNOR-popcount the padded bits xor to 0 and add nothing to
the popcount, so ``out = K − 2·popcount`` with the *true* ``K`` stays exact.  In the
tensor-core path the activations are zero-padded (value 0), so the padded weight rows
multiply 0 and add nothing either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BITS = 32


def padded_length(k: int, group_words: int = 1) -> int:
    """Length of a contraction axis of ``k`` elements after padding to whole groups."""
    if k < 1:
        raise ValueError(f"contraction length must be >= 1, got {k}")
    if group_words < 1:
        raise ValueError(f"group_words must be >= 1, got {group_words}")
    step = BITS * group_words
    return -(-k // step) * step


def num_words(k: int, group_words: int = 1) -> int:
    """Number of int32 words holding ``k`` signs (padding included)."""
    return padded_length(k, group_words) // BITS


def _bit_weights() -> jax.Array:
    # 1 << j as int32; bit 31 is the int32 sign bit (-2**31), which is what we want.
    return jnp.asarray(np.array([1 << j for j in range(BITS)], dtype=np.uint32).view(np.int32))


def pack_signs(x: jax.Array, axis: int = -1, *, group_words: int = 1) -> jax.Array:
    """Packs the signs of ``x`` along ``axis`` into int32 words.

    Args:
      x: any real array (float or ±1 int).  Element packs as bit 1 iff ``x < 0`` (so 0 → +1).
      axis: the contraction axis, of length ``K``.
      group_words: layout parameter ``g`` (module docstring); 1 = plain layout.

    Returns:
      int32 array, ``axis`` replaced by ``padded_length(K, g) // 32`` words.
    """
    x = jnp.asarray(x)
    axis = axis % x.ndim
    k = x.shape[axis]
    kp = padded_length(k, group_words)
    x = jnp.moveaxis(x, axis, -1)
    bits = (x < 0).astype(jnp.int32)
    if kp != k:
        bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, kp - k)])
    lead = bits.shape[:-1]
    g = group_words
    # (..., q, j, w) -> (..., q, w, j): bit j of word (q, w).
    bits = bits.reshape(lead + (kp // (BITS * g), BITS, g))
    bits = jnp.swapaxes(bits, -1, -2)
    words = jnp.sum(bits * _bit_weights(), axis=-1, dtype=jnp.int32)  # no carries: disjoint bits
    words = words.reshape(lead + (kp // BITS,))
    return jnp.moveaxis(words, -1, axis)


def unpack_signs(
    words: jax.Array, k: int, axis: int = -1, *, group_words: int = 1, dtype=jnp.int8
) -> jax.Array:
    """Inverse of :func:`pack_signs`: ±1 values of the first ``k`` elements along ``axis``.

    Args:
      words: int32 words, ``axis`` of length ``padded_length(k, g) // 32``.
      k: true (unpadded) length of the contraction axis.
      group_words: the layout parameter used when packing.
      dtype: output dtype (int8 by default).
    """
    words = jnp.asarray(words)
    if words.dtype != jnp.int32:
        raise ValueError(f"words must be int32, got {words.dtype}")
    axis = axis % words.ndim
    kp = padded_length(k, group_words)
    if words.shape[axis] != kp // BITS:
        raise ValueError(
            f"words axis {axis} has {words.shape[axis]} words; K={k} with group_words="
            f"{group_words} needs {kp // BITS}"
        )
    w = jnp.moveaxis(words, axis, -1)
    lead = w.shape[:-1]
    g = group_words
    w = w.reshape(lead + (kp // (BITS * g), g))
    shifts = jnp.arange(BITS, dtype=jnp.int32)
    bits = (w[..., None, :] >> shifts[:, None]) & 1  # (..., q, j, w)
    vals = (1 - 2 * bits).astype(dtype).reshape(lead + (kp,))[..., :k]
    return jnp.moveaxis(vals, -1, axis)


# NumPy twins of the two functions above, for (K, O) kernels packed on the host: exporting a
# whole model then compiles no program per kernel shape.


def pack_signs_host(w: np.ndarray, group_words: int = 1) -> np.ndarray:
    """NumPy twin of ``pack_signs(w, 0, group_words=g)`` for (K, O) arrays: element
    k = q·32g + j·g + i goes to bit j of word q·g + i; bit 1 iff w < 0."""
    k, o = w.shape
    g = group_words
    kp = padded_length(k, g)
    bits = np.zeros((kp, o), np.uint64)
    bits[:k] = np.asarray(w) < 0
    shifts = np.arange(BITS, dtype=np.uint64)[:, None, None]
    bits = bits.reshape(kp // (BITS * g), BITS, g, o) << shifts          # (q, j, i, O)
    return bits.sum(axis=1).astype(np.uint32).reshape(kp // BITS, o).view(np.int32)


def unpack_signs_host(words: np.ndarray, k: int, group_words: int = 1) -> np.ndarray:
    """NumPy twin of ``unpack_signs(words, k, 0, group_words=g)``: (K, O) int8 ±1."""
    kw, o = words.shape
    g = group_words
    if kw != num_words(k, g):
        raise ValueError(f"{kw} words do not hold K={k} with group_words={g}")
    u = np.asarray(words).view(np.uint32).reshape(kw // g, 1, g, o)
    bits = (u >> np.arange(BITS, dtype=np.uint32)[:, None, None]) & 1   # (q, j, i, O)
    return (1 - 2 * bits.astype(np.int8)).reshape(-1, o)[:k]


def regroup_words_host(words: np.ndarray, k: int, g_from: int, g_to: int) -> np.ndarray:
    """(num_words(k, g_from), O) words -> (num_words(k, g_to), O), same signs (host)."""
    if g_from == g_to:
        return np.asarray(words)
    return pack_signs_host(unpack_signs_host(words, k, g_from), g_to)


def popcount_rows(words: jax.Array) -> jax.Array:
    """Number of set bits per row of an (M, Kw) int32 array -> (M,) int32."""
    return jnp.sum(jax.lax.population_count(words), axis=-1, dtype=jnp.int32)
