"""Packed-weight matmul on the TPU MXU, one operand dtype per chip (docs/kernels.md, "TPU paths").

    out[m, n] = (Σ_k x[m, k] · sign(W)[k, n]) · row_scale[m] · col_scale[n]

The weights stay 1 bit per value in HBM (int32 words, grouped layout, packing.py) and are
unpacked in VMEM, one bit plane at a time, straight to the MXU operand dtype:

=========  ======================  ============  ==============================================
operand    MXU operands            accumulator   exact activations (signed b-bit levels)
=========  ======================  ============  ==============================================
int4       int4 × int4             int32         b <= 4: levels in [-8, 7]
int8       int8 × int8             int32         b <= 8: levels in [-128, 127]
fp8        float8_e4m3fn × e4m3fn  float32       b <= 5: e4m3 holds every integer in [-16, 16]
bf16       bf16 × bf16             float32       b <= 8: bf16 holds every integer in [-256, 256]
=========  ======================  ============  ==============================================

b = 1 means values in {-1, 0, +1} (binary activations, 0 at zero-padded taps) or {0, 1}.
The float accumulators are exact while |Σ| < 2^24, i.e. K · 2^(b-1) < 2^24. ``popcount``
(:mod:`bidm_jax.kernels.xnor`, the vector units) is the fifth TPU path, for b = 1 only.

Integer activations travel through HBM as int8 and are converted in VMEM. int4 and fp8
planes are built through an intermediate type (int32 -> int8 -> int4, int32 -> float32 ->
fp8): each step is a plain conversion that Mosaic has a rule for on the chips that have the
dtype, rather than a direct int32 -> int4 truncation.

``auto`` picks the operand from ``jax.devices()[0].device_kind``; :func:`operand_for_device_kind`
holds the table and its sources.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from bidm_jax.kernels._backend import pad_to, round_up
from bidm_jax.kernels.packing import BITS, num_words

OPERANDS = ("int4", "int8", "fp8", "bf16")  # MXU operand dtypes of :func:`tpu_packed_matmul`
TPU_PATHS = OPERANDS + ("popcount",)        # + the VPU XNOR-popcount kernel (xnor.py)
TPU_OPERAND_CHOICES = ("auto",) + TPU_PATHS  # the values of ``export.tpu_operand``
# Largest activation bit width each path computes exactly (module docstring).
MAX_ACT_BITS = {"int4": 4, "int8": 8, "fp8": 5, "bf16": 8, "popcount": 1}

_DTYPES = {  # operand -> (MXU operand dtype, accumulator dtype)
    "int4": (jnp.int4, jnp.int32),
    "int8": (jnp.int8, jnp.int32),
    "fp8": (jnp.float8_e4m3fn, jnp.float32),
    "bf16": (jnp.bfloat16, jnp.float32),
}


def operand_for_device_kind(device_kind: str) -> str:
    """The operand ``auto`` picks for a device kind ("TPU v5 lite", "TPU v6e", "TPU7x", ...).

    * v2, v3, v4 (and v4 lite): ``bf16``. v2/v3 have no integer MXU path; on v4 int8 runs at
      the bf16 rate (Cloud TPU v4 docs: 275 TFLOPs "bf16 or int8"), and JAX's TPU info
      lists int8 only as a right-hand operand beside bf16 there.
    * v5e, v5p, v6e: ``int4`` (int4 peak = 2 × int8 = 4 × bf16 in JAX's TPU info).
    * TPU7x and later: ``fp8`` (no int8/int4 MXU path; fp8 = 2 × bf16).
    * anything else (CPU, GPU, an unknown name): ``int8``.
    """
    m = re.match(r"\s*tpu\s*v?(\d+)", device_kind.lower())
    if m is None:
        return "int8"
    gen = int(m.group(1))
    if gen <= 4:
        return "bf16"
    if gen <= 6:
        return "int4"
    return "fp8"


def resolve_tpu_operand(choice: str, device_kind: str | None = None) -> str:
    """``export.tpu_operand`` -> a concrete TPU path; ``auto`` reads ``device_kind`` (default
    ``jax.devices()[0].device_kind``)."""
    if choice not in TPU_OPERAND_CHOICES:
        raise ValueError(f"tpu_operand={choice!r} is invalid; valid choices: "
                         f"{', '.join(TPU_OPERAND_CHOICES)}")
    if choice != "auto":
        return choice
    if device_kind is None:
        device_kind = jax.devices()[0].device_kind
    return operand_for_device_kind(device_kind)


def check_act_bits(path: str, act_bits: int | None) -> None:
    """Refuses activations of more bits than ``path`` holds exactly (None = not checked)."""
    if act_bits is None:
        return
    limit = MAX_ACT_BITS[path]
    if not 1 <= act_bits <= limit:
        fits = [p for p in TPU_PATHS if MAX_ACT_BITS[p] >= act_bits]
        raise ValueError(f"the TPU {path!r} path computes activations of at most {limit} bit(s) "
                         f"exactly, got {act_bits}-bit activations; paths that hold them: "
                         f"{', '.join(fits) or 'none'}")


def unpack_bit_plane(words: jax.Array, j: int) -> jax.Array:
    """±1 int32 values of bit ``j`` of each word: bit 1 -> -1, bit 0 -> +1.

    ``(w << (31 - j)) >> 31`` (arithmetic) is 0 or -1; ``| 1`` maps it to +1 or -1.  Two
    or three integer ops per bit, no select.
    """
    s = jax.lax.shift_left(words, jnp.int32(BITS - 1 - j)) if j != BITS - 1 else words
    return jax.lax.shift_right_arithmetic(s, jnp.int32(BITS - 1)) | 1


def _to_operand(v: jax.Array, operand: str) -> jax.Array:
    """int32 / int8 / float values -> the MXU operand dtype, through the intermediate type
    of the module docstring (int values pass exactly; floats round for bf16 only)."""
    if operand == "int4":
        return v.astype(jnp.int8).astype(jnp.int4)
    if operand == "fp8":
        return v.astype(jnp.float32).astype(jnp.float8_e4m3fn)
    return v.astype(_DTYPES[operand][0])


@functools.lru_cache(maxsize=None)
def xla_int4_dot_works() -> bool:
    """Whether XLA on the default device compiles an int4 x int4 -> int32 dot. Interpret mode
    runs the kernel body there, and XLA:CPU in jax 0.10 refuses it ("custom element sizes on
    non-sub-byte types")."""
    # Called while tracing the caller: compile-time eval on a NumPy input runs the probe
    # now instead of staging it into the caller's program.
    with jax.ensure_compile_time_eval():
        try:
            dot = jax.jit(lambda u: jnp.dot(u, u, preferred_element_type=jnp.int32))
            return int(dot(np.ones((8, 8), jnp.int4))[0, 0]) == 8
        except Exception:  # noqa: BLE001 - any compile failure means "no"
            return False


def _kernel(x_ref, w_ref, rs_ref, cs_ref, o_ref, acc_ref, *, g, operand, widen_int4):
    kk = pl.program_id(2)
    adtype = _DTYPES[operand][1]

    @pl.when(kk == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    w = w_ref[...]
    acc = acc_ref[...]
    for j in range(BITS):
        slab = _to_operand(unpack_bit_plane(w, j), operand)   # (g, bn) ±1 in VMEM
        xs = _to_operand(x_ref[:, j * g : (j + 1) * g], operand)
        if widen_int4:  # interpret mode on an XLA without int4 dots: the int4 values, as int8
            xs, slab = xs.astype(jnp.int8), slab.astype(jnp.int8)
        acc = acc + jnp.dot(xs, slab, preferred_element_type=adtype)
    acc_ref[...] = acc

    @pl.when(kk == pl.num_programs(2) - 1)
    def _out():
        o_ref[...] = acc_ref[...].astype(jnp.float32) * rs_ref[...] * cs_ref[...]


def tpu_packed_matmul(x: jax.Array, w_words: jax.Array, k: int, group_words: int,
                      row_scale: jax.Array, col_scale: jax.Array, *, operand: str,
                      act_bits: int | None = None, interpret=False,
                      block_m: int | None = None, block_n: int | None = None) -> jax.Array:
    """The Mosaic kernel behind ``packed_matmul(..., backend="tpu")``.

    Args:
      x: (M, K) activations: int8 integer levels for int4 / int8 / fp8, any dtype for bf16.
      w_words: (num_words(K, g), N) int32 grouped layout; g % 8 == 0 or a single group.
      row_scale: (M,) float32; col_scale: (N,) float32.
      operand: one of :data:`OPERANDS`.
      act_bits: the activations' bit width when known: refused above the operand's limit.
      interpret: False, True or ``pltpu.InterpretParams()`` (TPU interpret mode on a CPU).

    Returns:
      (M, N) float32.
    """
    if operand not in OPERANDS:
        raise ValueError(f"operand must be one of {OPERANDS}, got {operand!r}")
    check_act_bits(operand, act_bits)
    if operand != "bf16" and not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"the {operand} path takes integer activation levels (int8), got "
                         f"{x.dtype}; float activations use operand 'bf16'")
    if operand != "bf16":
        x = x.astype(jnp.int8)
    elif not jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.bfloat16)  # float activations round to bf16 once, in XLA
    m, n, g = x.shape[0], w_words.shape[1], group_words
    kw = num_words(k, g)
    groups = kw // g
    if groups > 1 and g % 8:
        raise ValueError(f"TPU needs group_words % 8 == 0 (or one group); got {g} with {groups} groups")
    bm = block_m or min(256, round_up(m, 32))
    bn = block_n or min(256, round_up(n, 128))
    mp, np_ = round_up(m, bm), round_up(n, bn)
    # Zero-padded activations meet the weights' padding bits and add nothing (packing.py).
    x_p = pad_to(x, (mp, kw * BITS))
    w_p = pad_to(w_words, (kw, np_))
    out = pl.pallas_call(
        functools.partial(_kernel, g=g, operand=operand,
                          widen_int4=bool(interpret) and operand == "int4"
                          and not xla_int4_dot_works()),
        out_shape=jax.ShapeDtypeStruct((mp, np_), jnp.float32),
        grid=(mp // bm, np_ // bn, groups),
        in_specs=[
            pl.BlockSpec((bm, BITS * g), lambda i, j, q: (i, q)),
            pl.BlockSpec((g, bn), lambda i, j, q: (q, j)),
            pl.BlockSpec((bm, 1), lambda i, j, q: (i, 0)),
            pl.BlockSpec((1, bn), lambda i, j, q: (0, j)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, q: (i, j)),
        scratch_shapes=[pltpu.VMEM((bm, bn), _DTYPES[operand][1])],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
    )(x_p, w_p, pad_to(row_scale.reshape(m, 1), (mp, 1)), pad_to(col_scale.reshape(1, n), (1, np_)))
    return out[:m, :n]
