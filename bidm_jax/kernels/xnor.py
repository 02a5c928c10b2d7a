"""XNOR-popcount matmul on the vector units (TPU Mosaic) / CUDA cores (GPU Triton).

    out[m, n] = (K_m − 2·Σ_w popcount((a[m, w] xor b[w, n]) and mask[m, w])) · row_scale[m] · col_scale[n]

With ±1 operands encoded as sign bits (packing.py), ``a·b = K − 2·#differing bits`` — the
binary dot of BiDM Eq. 9 / methods.md §2.3 (x_b ⊛ sign W).  ``K_m`` is the true contraction
length, or the number of valid bits of row ``m`` when a validity mask is given (the
zero-padding correction of the binary conv, conv.py): a masked-out position contributes 0,
exactly like a zero-padded ``sign(x)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from bidm_jax.kernels import reference
from bidm_jax.kernels._backend import next_pow2, pad_to, resolve_backend, round_up
from bidm_jax.kernels.packing import popcount_rows


def popcount_sum(xs):
    """Σ popcount(x) over a list of int32 arrays, three words at a time through a carry-save
    adder: popcount(a)+popcount(b)+popcount(c) = popcount(a^b^c) + 2·popcount(maj(a, b, c)).
    Two popcounts per three words instead of three; popcount is the slow instruction on GPUs
    (a quarter of the integer add rate) and the two logic ops are one LOP3 each.
    """
    total = None
    i = 0
    while i < len(xs):
        if i + 3 <= len(xs):
            a, b, c = xs[i : i + 3]
            ab = a ^ b
            ones = jax.lax.population_count(ab ^ c)
            twos = jax.lax.population_count((a & b) | (ab & c))
            t = ones + jax.lax.shift_left(twos, jnp.int32(1))
            i += 3
        else:
            t = jax.lax.population_count(xs[i])
            i += 1
        total = t if total is None else total + t
    return total


def _epilogue(acc, kv, rs, cs):
    return (kv - 2 * acc).astype(jnp.float32) * rs * cs


def _tpu_kernel(*refs, bkw, masked):
    if masked:
        a_ref, b_ref, m_ref, kv_ref, rs_ref, cs_ref, o_ref, acc_ref = refs
    else:
        a_ref, b_ref, kv_ref, rs_ref, cs_ref, o_ref, acc_ref = refs
    kk = pl.program_id(2)

    @pl.when(kk == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    a = a_ref[...]
    v = m_ref[...] if masked else None
    acc = acc_ref[...]
    # One outer "xor product" per word: a column of a against a row of b.  Static unroll,
    # so every slice is a static lane/sublane slice that Mosaic lowers directly.
    xs = []
    for w in range(bkw):
        x = a[:, w : w + 1] ^ b_ref[w : w + 1, :]
        xs.append(x & v[:, w : w + 1] if masked else x)
    acc_ref[...] = acc + popcount_sum(xs)

    @pl.when(kk == pl.num_programs(2) - 1)
    def _out():
        o_ref[...] = _epilogue(acc_ref[...], kv_ref[...], rs_ref[...], cs_ref[...])


def _gpu_kernel(*refs, bkw, nk, masked, scale):
    if masked:
        a_ref, b_ref, m_ref, kv_ref, rs_ref, cs_ref, o_ref = refs
    else:
        a_ref, b_ref, kv_ref, rs_ref, cs_ref, o_ref = refs
    bm, bn = o_ref.shape

    # Triton cannot slice register tensors, so each word column/row is its own (cached) load.
    def body(i, acc):
        base = i * bkw
        xs = []
        for w in range(bkw):
            col = a_ref[:, pl.ds(base + w, 1)]
            x = col ^ b_ref[pl.ds(base + w, 1), :]
            xs.append(x & m_ref[:, pl.ds(base + w, 1)] if masked else x)
        return acc + popcount_sum(xs)

    lo = pl.program_id(2) * nk  # split-K: this program's first word block
    acc = jax.lax.fori_loop(lo, lo + nk, body, jnp.zeros((bm, bn), jnp.int32))
    if scale:
        o_ref[...] = _epilogue(acc, kv_ref[...], rs_ref[...], cs_ref[...])
    else:
        o_ref[...] = acc.astype(jnp.float32)  # partial popcount, exact below 2**24


def xnor_popcount_matmul(
    a_words: jax.Array,
    b_words: jax.Array,
    k: int,
    row_scale: jax.Array | None = None,
    col_scale: jax.Array | None = None,
    *,
    a_mask: jax.Array | None = None,
    backend: str | None = None,
    interpret: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k_words: int | None = None,
    k_splits: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> jax.Array:
    """Binary matmul of packed sign words with a per-row/per-column scale epilogue.

    Args:
      a_words: (M, Kw) int32, rows of packed signs (packing.pack_signs along K).
      b_words: (Kw, N) int32, columns of packed signs (same layout/group as ``a_words``).
      k: true contraction length K (Kw·32 ≥ K; padded bits must be 0 in both operands).
      row_scale: (M,) float, default 1.  col_scale: (N,) float, default 1.
      a_mask: optional (M, Kw) int32 validity bits; 0 bits contribute nothing (K_m = popcount).
      backend: "tpu" (Mosaic), "gpu" (Triton), "reference" (jnp) or None (from the device).
      interpret: run the Pallas kernel in interpret mode (CPU tests).
      block_m, block_n, block_k_words: tile sizes (defaults per backend).
      k_splits: GPU split-K factor (parallelism at small M; default 8 for M <= 64, else 1);
        partial counts are summed by XLA.
      num_warps, num_stages: Triton compiler parameters (GPU only).

    Returns:
      (M, N) float32.
    """
    a_words = jnp.asarray(a_words)
    b_words = jnp.asarray(b_words)
    if a_words.dtype != jnp.int32 or b_words.dtype != jnp.int32:
        raise ValueError(f"packed operands must be int32, got {a_words.dtype} and {b_words.dtype}")
    if a_words.ndim != 2 or b_words.ndim != 2 or a_words.shape[1] != b_words.shape[0]:
        raise ValueError(f"need a (M, Kw) and b (Kw, N); got {a_words.shape} and {b_words.shape}")
    m, kw = a_words.shape
    n = b_words.shape[1]
    if not 0 < k <= 32 * kw:
        raise ValueError(f"k={k} does not fit in {kw} words")
    if a_mask is not None and a_mask.shape != a_words.shape:
        raise ValueError(f"a_mask shape {a_mask.shape} != a_words shape {a_words.shape}")
    rs = jnp.ones((m,), jnp.float32) if row_scale is None else jnp.asarray(row_scale, jnp.float32)
    cs = jnp.ones((n,), jnp.float32) if col_scale is None else jnp.asarray(col_scale, jnp.float32)
    if rs.shape != (m,) or cs.shape != (n,):
        raise ValueError(f"row_scale must be ({m},) and col_scale ({n},); got {rs.shape}, {cs.shape}")
    backend = resolve_backend(backend)
    if backend == "reference":
        return reference.xnor_popcount_matmul_ref(a_words, b_words, k, rs, cs, a_mask=a_mask)

    kv = popcount_rows(a_mask) if a_mask is not None else jnp.full((m,), k, jnp.int32)
    masked = a_mask is not None
    if backend == "tpu":
        bm = block_m or min(256, round_up(m, 8))
        bn = block_n or min(256, round_up(n, 128))
        bkw = block_k_words or (kw if kw <= 128 else 128)
        if bkw != kw and bkw % 128:
            raise ValueError(f"TPU block_k_words must be a multiple of 128 or the full Kw={kw}")
    else:
        # Defaults = the best of the sweep in benchmarks/kernels.md (H100); larger tiles spill.
        small = m <= 64
        bm = block_m or (16 if small else min(64, next_pow2(m)))
        bn = block_n or min(64, next_pow2(n))
        bkw = block_k_words or min(6 if small else 12, kw)
        k_splits = k_splits or (8 if small else 1)
    if k_splits is not None and k_splits < 1:
        raise ValueError(f"k_splits must be >= 1, got {k_splits}")
    splits = 1 if backend == "tpu" else max(1, min(k_splits, -(-kw // bkw)))
    mp, np_, kwp = round_up(m, bm), round_up(n, bn), round_up(kw, bkw * splits)
    # Zero words are exact padding: xor of two zeros has no set bits (module docstring).
    a_p = pad_to(a_words, (mp, kwp))
    b_p = pad_to(b_words, (kwp, np_))
    kv_p = pad_to(kv.reshape(m, 1), (mp, 1))
    rs_p = pad_to(rs.reshape(m, 1), (mp, 1))
    cs_p = pad_to(cs.reshape(1, n), (1, np_))
    ins = [a_p, b_p] + ([pad_to(a_mask, (mp, kwp))] if masked else []) + [kv_p, rs_p, cs_p]
    out_shape = jax.ShapeDtypeStruct((mp, np_), jnp.float32)

    if backend == "tpu":
        a_spec = pl.BlockSpec((bm, bkw), lambda i, j, kk: (i, kk))
        specs = [a_spec, pl.BlockSpec((bkw, bn), lambda i, j, kk: (kk, j))]
        specs += [a_spec] if masked else []
        specs += [
            pl.BlockSpec((bm, 1), lambda i, j, kk: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j, kk: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j, kk: (0, j)),
        ]
        out = pl.pallas_call(
            functools.partial(_tpu_kernel, bkw=bkw, masked=masked),
            out_shape=out_shape,
            grid=(mp // bm, np_ // bn, kwp // bkw),
            in_specs=specs,
            out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
            scratch_shapes=[pltpu.VMEM((bm, bn), jnp.int32)],
            compiler_params=pltpu.CompilerParams(
                dimension_semantics=("parallel", "parallel", "arbitrary")
            ),
            interpret=interpret,
        )(*ins)
    else:
        a_spec = pl.BlockSpec((bm, kwp), lambda i, j, s: (i, 0))
        specs = [a_spec, pl.BlockSpec((kwp, bn), lambda i, j, s: (0, j))]
        specs += [a_spec] if masked else []
        specs += [
            pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j, s: (0, j)),
        ]
        out = pl.pallas_call(
            functools.partial(_gpu_kernel, bkw=bkw, nk=kwp // (bkw * splits), masked=masked,
                              scale=splits == 1),
            out_shape=jax.ShapeDtypeStruct((splits, mp, np_), jnp.float32),
            grid=(mp // bm, np_ // bn, splits),
            in_specs=specs,
            out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j)),
            compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
            interpret=interpret,
        )(*ins)
        if splits == 1:
            out = out[0]
        else:
            out = _epilogue(out.sum(0), kv_p.astype(jnp.float32), rs_p, cs_p)
    return out[:m, :n]
