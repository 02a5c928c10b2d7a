"""Packed-weight matmul for the MXU (TPU) / tensor cores (GPU).

    out[m, n] = (Σ_k x[m, k] · sign(W)[k, n]) · row_scale[m] · col_scale[n]

The weights stay 1 bit per value in HBM (int32 words, packing.py, grouped layout with
``group_words = g``) and are unpacked on chip, one bit plane at a time: bit ``j`` of the
``g`` words of group ``q`` is the ±1 weight tile for the ``g`` contiguous rows
``k = q·32·g + j·g + [0, g)``, which meets the contiguous activation slice of the same rows
in one dot.  Activations come in as

* int8 (binary activations ±1, or 0 at zero-padded conv taps): int8 dot, int32 accumulation;
* bf16 / float (full-precision activations): bf16 dot, float32 accumulation.

The TPU variant (tpu_matmul.py) also takes an explicit MXU operand dtype per chip: int4,
int8, fp8 (float8_e4m3fn) or bf16.

Activations are zero-padded along K, so the padding bits of the weights meet zeros and add
nothing (packing.py, "Padding").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from bidm_jax.kernels import reference
from bidm_jax.kernels._backend import next_pow2, pad_to, resolve_backend, round_up
from bidm_jax.kernels.packing import BITS, num_words
from bidm_jax.kernels.tpu_matmul import OPERANDS, check_act_bits, tpu_packed_matmul

def _dtypes(x_dtype):
    if x_dtype == jnp.int8:
        return jnp.int8, jnp.int32
    return jnp.bfloat16, jnp.float32


def neg_bit_plane(words: jax.Array, j) -> jax.Array:
    """-bit j of each word as int32 (0 or -1): one shift pair, no select (GPU int8 path).

    ``j`` is a Python int or a traced int32 scalar.
    """
    if isinstance(j, int) and j == BITS - 1:
        s = words
    else:
        s = jax.lax.shift_left(words, jnp.int32(BITS - 1) - j)
    return jax.lax.shift_right_arithmetic(s, jnp.int32(BITS - 1))


def bf16_bit_plane(words: jax.Array, j) -> jax.Array:
    """±1 bf16 of bit j built from bits: move bit j to bf16's sign bit (15), or in 1.0.

    One shift and one and-or (a single LOP3 on NVIDIA GPUs) per value for a static ``j``
    (two shifts for a traced one), then a same-width bitcast; no int-to-float conversion
    (those run at a quarter of the integer rate).
    """
    if not isinstance(j, int):
        t = jax.lax.shift_left(jax.lax.shift_right_logical(words, j), jnp.int32(15))
    elif j > 15:
        t = jax.lax.shift_right_logical(words, jnp.int32(j - 15))
    elif j < 15:
        t = jax.lax.shift_left(words, jnp.int32(15 - j))
    else:
        t = words
    v = (t & 0x8000) | 0x3F80
    return jax.lax.bitcast_convert_type(v.astype(jnp.int16), jnp.bfloat16)


def _gpu_kernel(x_ref, w_ref, rsum_ref, rs_ref, cs_ref, o_ref, *, g, n_full, tail, groups_per_split,
                splits, int8, scale, pps):
    bm, bn = o_ref.shape
    s = pl.program_id(2)
    adtype = jnp.int32 if int8 else jnp.float32

    def plane(w, j):
        # int8: dot with -bit in {0, -1}; Σ x·sign(W) = rowsum(x) + 2·Σ x·(-bit) (epilogue).
        return neg_bit_plane(w, j).astype(jnp.int8) if int8 else bf16_bit_plane(w, j)

    def planes(q, j0, nplanes, acc):
        w = w_ref[pl.ds(q * g, g), :]
        for u in range(nplanes):
            j = j0 + u
            xs = x_ref[:, pl.ds(q * (BITS * g) + j * g, g)]
            acc = acc + jnp.dot(xs, plane(w, j), preferred_element_type=adtype)
        return acc

    # One loop step = `pps` bit planes of one group: a (bm, pps·g) activation slice, so the
    # pipelined shared-memory stages stay small; the word tile is re-read (from L1) per step.
    steps = BITS // pps
    lo = s * groups_per_split  # static trip count: splits divide the full groups evenly

    log_steps = steps.bit_length() - 1

    def step(t, a):
        if steps == 1:
            return planes(lo + t, 0, BITS, a)
        # Shifts, not // and %: Triton lowering of signed div/rem goes through i1 selects.
        q = jax.lax.shift_right_logical(t, jnp.int32(log_steps))
        return planes(lo + q, (t & (steps - 1)) * pps, pps, a)

    acc = jax.lax.fori_loop(0, groups_per_split * steps, step, jnp.zeros((bm, bn), adtype))
    if tail:
        # The last group holds only `tail` bit planes of real rows (no padding to 32·g).
        if splits == 1:
            acc = planes(n_full, 0, tail, acc)
        else:
            acc = jax.lax.cond(s == splits - 1, lambda a: planes(n_full, 0, tail, a), lambda a: a, acc)
    out = acc.astype(jnp.float32)
    if int8 and scale:
        out = rsum_ref[...] + 2.0 * out
    if scale:
        out = out * rs_ref[...] * cs_ref[...]
    o_ref[...] = out


def packed_matmul(
    x: jax.Array,
    w_words: jax.Array,
    k: int,
    group_words: int,
    row_scale: jax.Array | None = None,
    col_scale: jax.Array | None = None,
    *,
    backend: str | None = None,
    operand: str | None = None,
    act_bits: int | None = None,
    interpret=False,
    block_m: int | None = None,
    block_n: int | None = None,
    k_splits: int | None = None,
    planes_per_step: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 3,
) -> jax.Array:
    """x @ sign(W) with W packed 1-bit, scaled per row and column (methods.md §2.2–2.3).

    Args:
      x: (M, K) activations; int8 (±1/0) selects the int8/int32 path, any float the
        bf16/float32 path.
      w_words: (num_words(K, g), N) int32, ``pack_signs(W, axis=0, group_words=g)``.
      k: true contraction length K.
      group_words: layout parameter ``g`` the weights were packed with.
      row_scale: (M,) float, default 1.  col_scale: (N,) float (e.g. α), default 1.
      backend: "tpu", "gpu", "reference" or None (from the device).
      operand: TPU MXU operand dtype, "int4", "int8", "fp8" or "bf16" (tpu_matmul.py);
        None = int8 for int8 activations, bf16 otherwise (the GPU kernel always does that).
      act_bits: bit width of integer activation levels, refused above the operand's exact
        range (tpu_matmul.MAX_ACT_BITS); None = not checked.
      interpret: Pallas interpret mode (CPU tests): True, or ``pltpu.InterpretParams()`` for
        the TPU kernel in TPU interpret mode.
      block_m, block_n: output tile; k_splits: GPU split-K factor (parallelism at small M);
        the largest divisor of the number of full groups that is <= k_splits is used.
      planes_per_step: GPU bit planes per loop step (a divisor of 32).
      (GPU defaults for tiles, k_splits, planes_per_step and num_warps depend on M; see code.)
      num_warps, num_stages: Triton compiler parameters (GPU only).

    Returns:
      (M, N) float32.
    """
    x = jnp.asarray(x)
    w_words = jnp.asarray(w_words)
    if x.ndim != 2 or w_words.ndim != 2:
        raise ValueError(f"need x (M, K) and w_words (Kw, N); got {x.shape}, {w_words.shape}")
    if w_words.dtype != jnp.int32:
        raise ValueError(f"w_words must be int32, got {w_words.dtype}")
    m, kx = x.shape
    n = w_words.shape[1]
    if kx != k:
        raise ValueError(f"x has K={kx} but k={k}")
    g = group_words
    kw = num_words(k, g)
    if w_words.shape[0] != kw:
        raise ValueError(f"w_words has {w_words.shape[0]} words; K={k}, group_words={g} needs {kw}")
    rs = jnp.ones((m,), jnp.float32) if row_scale is None else jnp.asarray(row_scale, jnp.float32)
    cs = jnp.ones((n,), jnp.float32) if col_scale is None else jnp.asarray(col_scale, jnp.float32)
    if rs.shape != (m,) or cs.shape != (n,):
        raise ValueError(f"row_scale must be ({m},) and col_scale ({n},); got {rs.shape}, {cs.shape}")
    backend = resolve_backend(backend)
    by_dtype = "int8" if x.dtype == jnp.int8 else "bf16"
    if operand is not None and operand not in OPERANDS:
        raise ValueError(f"operand must be one of {OPERANDS} or None, got {operand!r}")
    if backend == "gpu" and operand not in (None, by_dtype):
        raise ValueError(f"operand={operand!r} is a TPU path; the GPU kernel's operand follows "
                         f"the activations' dtype ({x.dtype}: {by_dtype})")
    operand = operand or by_dtype
    check_act_bits(operand, act_bits)
    if backend == "reference":
        return reference.packed_matmul_ref(x, w_words, k, g, rs, cs)

    if backend == "tpu":
        return tpu_packed_matmul(x, w_words, k, g, rs, cs, operand=operand, act_bits=act_bits,
                                 interpret=interpret, block_m=block_m, block_n=block_n)

    cdtype, adtype = _dtypes(x.dtype)
    x = x.astype(cdtype)
    # GPU (Triton): the K loop runs inside the kernel; split-K adds a grid axis.
    int8 = cdtype == jnp.int8
    min_g = 32 if int8 else 16  # below the MMA's K the operands get replicated (wrong sums)
    if g & (g - 1) or g < min_g:
        raise ValueError(f"GPU needs group_words a power of two >= {min_g} for {cdtype.__name__} "
                         f"activations (one dot's K), got {g}")
    # Defaults = the best of the sweep in benchmarks/kernels.md (H100), each within the
    # 227 KiB of shared memory: pipelined stages hold (bm·pps·g) activations + (g·bn) words.
    if m <= 64:
        dbm, dbn, dpps, dsplits, dwarps = max(16, next_pow2(m)), 128, 8, 4, 4
    elif m <= 1024:
        dbm, dbn, dpps, dsplits, dwarps = 64, 64, 8, 1, 4
    else:
        dbm, dbn, dpps, dsplits, dwarps = 256, 128, 4, 1, 8
    if cdtype != jnp.int8:
        dpps, dbm = 4, min(dbm, 128)  # bf16 activations: twice the bytes per stage
    k_splits = k_splits or dsplits
    planes_per_step = planes_per_step or dpps
    num_warps = num_warps or dwarps
    if k_splits < 1:
        raise ValueError(f"k_splits must be >= 1, got {k_splits}")
    if planes_per_step < 1 or BITS % planes_per_step:
        raise ValueError(f"planes_per_step must divide 32, got {planes_per_step}")
    n_full = k // (BITS * g)
    tail = -(-(k - n_full * BITS * g) // g)
    splits = max([d for d in range(1, k_splits + 1) if n_full % d == 0] if n_full else [1])
    gps = n_full // splits
    bm = block_m or dbm
    bn = block_n or min(dbn, max(16, next_pow2(n)))
    mp, np_ = round_up(m, bm), round_up(n, bn)
    kx = n_full * BITS * g + tail * g
    x_p = pad_to(x, (mp, kx))
    w_p = pad_to(w_words, (kw, np_))
    rsum = jnp.sum(x, axis=1, dtype=jnp.int32).astype(jnp.float32) if int8 else jnp.zeros((m,), jnp.float32)
    rsum_p = pad_to(rsum.reshape(m, 1), (mp, 1))
    rs_p = pad_to(rs.reshape(m, 1), (mp, 1))
    cs_p = pad_to(cs.reshape(1, n), (1, np_))
    scale = splits == 1
    out = pl.pallas_call(
        functools.partial(_gpu_kernel, g=g, n_full=n_full, tail=tail, groups_per_split=gps,
                          splits=splits, int8=int8, scale=scale, pps=planes_per_step),
        out_shape=jax.ShapeDtypeStruct((splits, mp, np_), jnp.float32),
        grid=(mp // bm, np_ // bn, splits),
        in_specs=[
            pl.BlockSpec((bm, kx), lambda i, j, s: (i, 0)),
            pl.BlockSpec((kw, bn), lambda i, j, s: (0, j)),
            pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j, s: (0, j)),
        ],
        out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j)),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
    )(x_p, w_p, rsum_p, rs_p, cs_p)
    if scale:
        return out[0, :m, :n]
    acc = out[:, :m, :n].sum(0)
    if int8:
        acc = rsum[:, None] + 2.0 * acc
    return acc * rs[:, None] * cs[None, :]
