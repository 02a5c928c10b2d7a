"""Pure-jnp references for the packed kernels (what each Pallas kernel must equal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bidm_jax.kernels.packing import unpack_signs

_HI = jax.lax.Precision.HIGHEST


def xnor_popcount_matmul_ref(a_words, b_words, k, row_scale=None, col_scale=None, *, a_mask=None):
    """(K_m − 2·Σ popcount(xor(a[m], b[:, n]) & mask[m])) · rs[m] · cs[n], see xnor.py.

    a_words: (M, Kw) int32; b_words: (Kw, N) int32; a_mask: optional (M, Kw) int32.
    Returns (M, N) float32.
    """
    x = a_words[:, :, None] ^ b_words[None, :, :]
    if a_mask is not None:
        x = x & a_mask[:, :, None]
        kv = jnp.sum(jax.lax.population_count(a_mask), axis=1, dtype=jnp.int32)[:, None]
    else:
        kv = jnp.int32(k)
    pc = jnp.sum(jax.lax.population_count(x), axis=1, dtype=jnp.int32)
    out = (kv - 2 * pc).astype(jnp.float32)
    if row_scale is not None:
        out = out * jnp.asarray(row_scale, jnp.float32)[:, None]
    if col_scale is not None:
        out = out * jnp.asarray(col_scale, jnp.float32)[None, :]
    return out


def packed_matmul_ref(x, w_words, k, group_words, row_scale=None, col_scale=None):
    """x @ unpack(w) · rs[m] · cs[n] in float32 (exact for ±1 int8 x up to K < 2**24).

    A float ``x`` is rounded to bf16 first, as the kernel's bf16 path does.
    x: (M, K); w_words: (Kw, N) int32 grouped layout.  Returns (M, N) float32.
    """
    w = unpack_signs(w_words, k, axis=0, group_words=group_words, dtype=jnp.float32)
    if x.dtype != jnp.int8:
        x = x.astype(jnp.bfloat16)
    out = jnp.dot(x.astype(jnp.float32), w, precision=_HI)
    if row_scale is not None:
        out = out * jnp.asarray(row_scale, jnp.float32)[:, None]
    if col_scale is not None:
        out = out * jnp.asarray(col_scale, jnp.float32)[None, :]
    return out
