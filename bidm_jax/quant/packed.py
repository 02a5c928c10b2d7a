"""The binary layers' core product executed from 1-bit packed weights (``--mode export``).

Every W1A1 weight quantizer of the registry computes ``W_q = scale · sign(W)`` in its
forward pass, with ``scale`` per output channel (mean|W| detached / exact-grad, learnable σ),
per layer (DoReFa, ReSTE) or 1 (XNOR-Net++ 'sign'). Every activation quantizer's forward
values lie in {-1, 0, +1} or {0, 1}. So the fake-quantized core

    y = conv(x_q, scale · sign(W))                      (float, :class:`~.layers.QConv`)

equals, up to float summation order,

    y = scale · conv_int(int8(x_q), sign bits of W)     (integer accumulation, this module)

A packed layer holds ``kernel_bits``: P sign planes of the (kh·kw·I, O) / (I, O) kernel as
int32 words along the contraction axis (:func:`bidm_jax.kernels.pack_signs`, bit 1 = −1),
(P, words, O), and ``kernel_scale`` (P, O): W_q = Σ_p scale_p · sign_p. Single-basis
quantizers have P = 1 (the scale above); a two-basis binarizer (e.g. σ_I·sign(W) +
σ_II·sign(W − σ_I·sign W)) has P = 2, its quantizer's ``plane_fn`` saying how to split. The method's epilogue (K map, Γ, bias, RPReLU,
shortcut) is the fake-quant layer's own code (``QConv._epilogue``).

Two executions (``export.kernel``):

* ``xla``: the words are unpacked to ±1 in the program. Convs: int8 activations x int8
  weights through ``lax.conv_general_dilated`` (cuDNN's integer conv on GPUs, f32 output
  holding the exact integer sum). Dense layers: a bf16 x bf16 -> f32 dot of the same ±1/0
  values, also exact. Words are in the plain layout (``group_words=1``).
* ``pallas``: im2col of the int8 activations, then the :func:`bidm_jax.kernels.packed_matmul`
  Pallas kernel, which reads the 1-bit words from HBM and unpacks them on chip. The words are
  in the grouped layout that kernel variant wants (GPU Triton: ``g = 32``; TPU Mosaic:
  :func:`bidm_jax.kernels.default_group_words`). On a CPU the kernels run in Pallas
  interpret mode (tests). On the TPU variant ``export.tpu_operand`` picks the path: the MXU
  operand dtype (int4, int8, fp8, bf16; ``auto`` by chip, :mod:`bidm_jax.kernels.tpu_matmul`)
  or ``popcount`` (activation signs packed to words with a validity mask, then the VPU
  XNOR-popcount kernel); activations wider than the path holds exactly are refused.

Exact zeros: ``sign(0) = 0`` in the fake-quant forward but packs as +1 (one bit has no 0).
Activations keep their 0 (int8); an exact-zero *weight* is the one case the packed layer
can differ, which :mod:`bidm_jax.export` counts and reports.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bidm_jax.kernels.conv import default_group_words, im2col
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import num_words, pack_signs, unpack_signs
from bidm_jax.kernels.tpu_matmul import TPU_OPERAND_CHOICES, check_act_bits, resolve_tpu_operand
from bidm_jax.kernels.xnor import xnor_popcount_matmul

__all__ = ["KERNELS", "PALLAS_BACKENDS", "TPU_OPERAND_CHOICES", "PackedOptions", "conv_core", "dense_core",
           "conv_plane", "dense_plane", "conv_core_act_planes", "act_planes", "dequantize",
           "scale_of", "weight_planes", "int_conv_core", "int_dense_core"]

KERNELS = ("pallas", "xla")
PALLAS_BACKENDS = ("auto", "gpu", "tpu")


def _platform() -> str:
    p = jax.default_backend()
    return {"cuda": "gpu", "rocm": "gpu"}.get(p, p)


@dataclasses.dataclass(frozen=True)
class PackedOptions:
    """How packed binary layers execute (hashable: it is static graph data of the layers).

    kernel: 'xla' or 'pallas'. backend: the Pallas variant, 'gpu' (Triton) or 'tpu'
    (Mosaic); 'auto' = the default device's, and the Triton variant on a CPU.
    interpret: run the Pallas kernel in interpret mode; None = on a CPU only. True or a
    ``pltpu.InterpretParams()`` (TPU interpret mode, TPU variant only).
    tpu_operand: the TPU variant's path, one of ``TPU_OPERAND_CHOICES`` ('auto' = by
    ``jax.devices()[0].device_kind``, :func:`bidm_jax.kernels.tpu_matmul.operand_for_device_kind`).
    """

    kernel: str = "xla"
    backend: str = "auto"
    interpret: object = None
    tpu_operand: str = "auto"

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"export.kernel={self.kernel!r} is invalid; valid choices: "
                             f"{', '.join(KERNELS)}")
        if self.backend not in PALLAS_BACKENDS:
            raise ValueError(f"export.pallas_backend={self.backend!r} is invalid; valid "
                             f"choices: {', '.join(PALLAS_BACKENDS)}")
        if self.tpu_operand not in TPU_OPERAND_CHOICES:
            raise ValueError(f"export.tpu_operand={self.tpu_operand!r} is invalid; valid "
                             f"choices: {', '.join(TPU_OPERAND_CHOICES)}")

    @property
    def pallas_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "tpu" if _platform() == "tpu" else "gpu"

    @property
    def pallas_interpret(self):
        return _platform() not in ("gpu", "tpu") if self.interpret is None else self.interpret

    @property
    def tpu_path(self) -> str | None:
        """The TPU variant's path (int4 / int8 / fp8 / bf16 / popcount), 'auto' resolved;
        None when the packed layers do not run the TPU Pallas kernels."""
        if self.kernel != "pallas" or self.pallas_backend != "tpu":
            return None
        return resolve_tpu_operand(self.tpu_operand)

    def group_words(self, k: int) -> int:
        """Word layout of a kernel with contraction length ``k`` for this execution."""
        if self.kernel == "xla":
            return 1
        return default_group_words(k, self.pallas_backend)


def scale_of(w: jax.Array, w_q: jax.Array) -> tuple[np.ndarray, int]:
    """The ``scale`` (O,) with ``w_q = scale · sign(w)``, checked, and the count of exact
    zeros of ``w`` (they pack as +1).

    w: FP kernel (..., O); w_q: the weight quantizer's forward value of ``w``. Raises a
    ValueError when w_q is not of that form (a quantizer the packed layers cannot run).
    """
    w, w_q = np.asarray(w, np.float32), np.asarray(w_q, np.float32)
    o = w.shape[-1]
    flat, flat_q = w.reshape(-1, o), w_q.reshape(-1, o)
    # The value at each channel's first non-zero weight, exactly (a learnable sigma may be
    # negative); 0 for an all-zero channel.
    first = np.argmax(flat != 0, axis=0)
    cols = np.arange(o)
    scale = flat_q[first, cols] * np.sign(flat[first, cols])
    expect = scale * np.sign(flat)
    if not np.allclose(flat_q, expect, rtol=1e-6, atol=1e-30):
        bad = float(np.max(np.abs(flat_q - expect)))
        raise ValueError(f"the weight quantizer's output is not scale·sign(W) (max deviation "
                         f"{bad:.3g}); it cannot be packed to 1 bit")
    return scale.astype(np.float32), int(np.sum(flat == 0))


def words_shape(k: int, out_features: int, group_words: int) -> tuple[int, int]:
    return num_words(k, group_words), out_features


def _pallas(x2d: jax.Array, words, scale, k: int, g: int, opts: PackedOptions,
            act_bits: int | None = None) -> jax.Array:
    """scale · (x2d @ sign(W)) through the Pallas kernels: x2d (M, K) int8 levels -> (M, N)."""
    path = opts.tpu_path
    if path != "popcount":
        return packed_matmul(x2d, words, k, g, None, scale, backend=opts.pallas_backend,
                             operand=path, act_bits=act_bits, interpret=opts.pallas_interpret)
    # XNOR-popcount takes 1-bit operands: the signs of x and a mask of its non-zeros, so a 0
    # (a zero-padded tap, a DoReFa 0) contributes nothing and {0, 1} inputs work too.
    check_act_bits(path, act_bits)
    a_words = pack_signs(x2d, axis=1, group_words=g)
    mask = pack_signs(jnp.where(x2d != 0, -1, 1).astype(jnp.int8), axis=1, group_words=g)
    return xnor_popcount_matmul(a_words, words, k, None, scale, a_mask=mask, backend="tpu",
                                interpret=opts.pallas_interpret)


def _planes(core, words: jax.Array, scale: jax.Array) -> jax.Array:
    """Σ_p core(words[p], scale[p]) over the sign planes (one term for a single basis)."""
    out = core(words[0], scale[0])
    for p in range(1, words.shape[0]):
        out = out + core(words[p], scale[p])
    return out


def conv_core(x_q: jax.Array, words: jax.Array, scale: jax.Array, **kw) -> jax.Array:
    """Σ_p scale_p · conv(x_q, sign_p) from P packed planes: (B, H, W, I) -> (B, Ho, Wo, O)
    float32. words: (P, num_words(K, g), O) int32; scale: (P, O); the rest as
    :func:`conv_plane`."""
    return _planes(lambda w, s: conv_plane(x_q, w, s, **kw), words, scale)


def dense_core(x_q: jax.Array, words: jax.Array, scale: jax.Array, **kw) -> jax.Array:
    """Σ_p scale_p · (x_q @ sign_p) from P packed planes: (..., I) -> (..., O) float32.
    words: (P, num_words(I, g), O); scale: (P, O); the rest as :func:`dense_plane`."""
    return _planes(lambda w, s: dense_plane(x_q, w, s, **kw), words, scale)


def conv_plane(x_q: jax.Array, words: jax.Array, scale: jax.Array, *, kernel_size: int,
               in_features: int, stride: int, padding: int, group_words: int,
               opts: PackedOptions, act_bits: int | None = None) -> jax.Array:
    """scale · conv(x_q, sign(W)) from packed W: (B, H, W, I) -> (B, Ho, Wo, O) float32.

    x_q: quantized activations (values in {-1, 0, 1}, any dtype); words: (num_words(K, g),
    O) int32 with K = kernel_size²·I in (dy, dx, c) order; scale: (O,); symmetric integer
    ``padding`` (zeros, which contribute 0 as in the fake-quant conv of x_q). ``act_bits``:
    the bit width of integer activation levels (b-bit inputs), checked against the TPU path
    (None: the values are taken to fit it).
    """
    k = kernel_size * kernel_size * in_features
    o = words.shape[-1]
    xi = x_q.astype(jnp.int8)
    pads = ((padding, padding), (padding, padding))
    if opts.kernel == "xla":
        w = unpack_signs(words, k, 0, group_words=group_words)          # (K, O) int8 ±1
        w = w.reshape(kernel_size, kernel_size, in_features, o)
        # cuDNN runs s8 x s8 convolutions with an f32 (not s32) output; |sums| <= K < 2^24,
        # so the f32 result is the exact integer.
        acc = lax.conv_general_dilated(xi, w, (stride, stride), pads,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       preferred_element_type=jnp.float32)
        return acc * scale.astype(jnp.float32)
    b, h, w_, _ = xi.shape
    ho = (h + 2 * padding - kernel_size) // stride + 1
    wo = (w_ + 2 * padding - kernel_size) // stride + 1
    xp = jnp.pad(xi, ((0, 0), *pads, (0, 0)))
    cols = im2col(xp, (kernel_size, kernel_size), stride, (ho, wo))   # (B·Ho·Wo, K) int8
    return _pallas(cols, words, scale, k, group_words, opts, act_bits).reshape(b, ho, wo, o)


def dense_plane(x_q: jax.Array, words: jax.Array, scale: jax.Array, *, in_features: int,
                group_words: int, opts: PackedOptions, act_bits: int | None = None) -> jax.Array:
    """scale · (x_q @ sign(W)) from packed W: (..., I) -> (..., O) float32 (``act_bits`` as
    :func:`conv_plane`)."""
    o = words.shape[-1]
    xi = x_q.astype(jnp.int8)
    if opts.kernel == "xla":
        # ±1/0 are exact in bf16 and f32 accumulation of integers is exact below 2^24. Not an
        # s8 x s8 -> s32 dot: with both operands made in the program (sign -> s8, unpacked
        # words), XLA's GPU gemm returned doubled sums at K = 12 (K >= 32 were right; jax
        # 0.11.2, H200), like Triton below one MMA's K (docs/kernels.md).
        w = unpack_signs(words, in_features, 0, group_words=group_words,
                         dtype=jnp.bfloat16)                               # (I, O) ±1
        acc = lax.dot_general(x_q.astype(jnp.bfloat16), w, (((xi.ndim - 1,), (0,)), ((), ())),
                              preferred_element_type=jnp.float32)
        return acc * scale.astype(jnp.float32)
    lead = xi.shape[:-1]
    out = _pallas(xi.reshape(-1, in_features), words, scale, in_features, group_words, opts,
                  act_bits)
    return out.reshape(*lead, o)


def act_planes(levels: jax.Array, bits: int = 4) -> tuple[list[jax.Array], list[float], float]:
    """BinaryDM App. B.2 Eq. 19: signed b-bit integer levels a ∈ [−2^(b−1), 2^(b−1) − 1] as
    b planes of ±1, a = Σ_i c_i·β_i + c_0 (b = 4: a = 4β₁ + 2β₂ + β₃ + ½β₄ − ½).
    Returns (planes as int8, their coefficients c_i, the constant c_0)."""
    u = (levels + 2 ** (bits - 1)).astype(jnp.int32)               # 0 … 2^b − 1
    planes, coefs = [], []
    for i in range(bits):
        bit = (u >> (bits - 1 - i)) & 1
        planes.append((2 * bit - 1).astype(jnp.int8))
        coefs.append(2.0 ** (bits - 2 - i))
    return planes, coefs, -0.5


def conv_core_act_planes(levels: jax.Array, words: jax.Array, scale: jax.Array, *, bits: int,
                         kernel_size: int, in_features: int, stride: int, padding: int,
                         group_words: int, opts: PackedOptions) -> jax.Array:
    """Reference for :func:`conv_core` on b-bit integer ``levels`` (B, H, W, I): the
    W1A1-only route of BinaryDM App. B.2, b binary convolutions of the activation planes
    (:func:`act_planes`) plus the constant term on the unpadded area, per weight plane. The
    int8 route (:func:`conv_core`: one integer convolution of the levels) computes the same
    integers with one product instead of b + 1 and is what packed layers run."""
    planes, coefs, c0 = act_planes(levels, bits)
    ones = jnp.ones(levels.shape, jnp.int8)  # zero padding stays 0: the constant term too
    kw = dict(kernel_size=kernel_size, in_features=in_features, stride=stride,
              padding=padding, group_words=group_words, opts=opts)
    out = c0 * conv_core(ones, words, scale, **kw)
    for plane, c in zip(planes, coefs):
        out = out + c * conv_core(plane, words, scale, **kw)
    return out


def dequantize(words: jax.Array, scale: jax.Array, shape: tuple, group_words: int) -> jax.Array:
    """W_q = Σ_p scale_p · sign_p as a float32 kernel of ``shape`` ((kh, kw, I, O) / (I, O))
    from P packed planes (words (P, num_words(K, g), O), scale (P, O)): the weights of a
    layer whose activations stay full precision (W1A32), which has no integer core."""
    k, o = int(np.prod(shape[:-1])), shape[-1]
    w = sum(unpack_signs(words[p], k, 0, group_words=group_words, dtype=jnp.float32)
            * scale[p].astype(jnp.float32) for p in range(words.shape[0]))
    return w.reshape(tuple(shape[:-1]) + (o,))


def weight_planes(q, w, w_q, kwargs: dict) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """The (sign source, scale (O,)) planes of weight quantizer ``q`` for kernel ``w`` with
    forward value ``w_q`` (kwargs: its variables' values), checked to rebuild ``w_q``, and the
    count of exact zeros among the sign sources (they pack as +1).

    Single-basis quantizers (no ``plane_fn``): one plane, sign(w) with :func:`scale_of`.
    """
    if q.plane_fn is None:
        scale, zeros = scale_of(w, w_q)
        return [(np.asarray(w, np.float32), scale)], zeros
    planes = [(np.asarray(src, np.float32), np.asarray(scale, np.float32))
              for src, scale in q.plane_fn(w, **kwargs)]
    if not 1 <= len(planes) <= q.planes:
        raise ValueError(f"weight quantizer {q.name!r} declares at most {q.planes} planes but "
                         f"its plane_fn gave {len(planes)}")
    o = np.shape(w)[-1]
    rebuilt = sum(s.reshape(1, o) * np.sign(src).reshape(-1, o) for src, s in planes)
    w_q = np.asarray(w_q, np.float32).reshape(-1, o)
    if not np.allclose(rebuilt, w_q, rtol=1e-5, atol=1e-6):
        bad = float(np.max(np.abs(rebuilt - w_q)))
        raise ValueError(f"the planes of weight quantizer {q.name!r} do not rebuild its output "
                         f"(max deviation {bad:.3g}); it cannot be packed")
    return planes, int(sum(np.sum(src == 0) for src, _ in planes))


# --- multi-bit weights: integer core with zero points ----------------------------------------
#
# A multi-bit layer stores its weight levels (int8, the kernel's shape), step (O,) and, for an
# asymmetric quantizer, zero point (O,); its activation quantizer gives levels, a step and a
# zero point per tensor or per sample. With a = s_a·(q_a − z_a) and w = s_w·(q_w − z_w),
#
#   Σ_k a_k·w_k = s_a·s_w·[Σ q_a·q_w − z_w·Σ q_a − z_a·Σ m·q_w + z_a·z_w·Σ m]
#
# over each output's window: one integer product (int8 × int8) and three correction terms in
# the epilogue. m is 1 on the input and 0 on the conv's zero padding: the
# fake-quant conv pads the dequantized input, where a = 0 means q_a = z_a, not q_a = 0, so
# the z_a terms count only the window's real positions (Σ m·q_w and Σ m depend on the input
# size only: one conv of a ones image). Symmetric quantizers (LSQ) have z = None and skip
# their terms. Levels are stored signed (q − 2^(b−1), zero point shifted alike) so 8-bit ones
# fit int8. The sums come back as float32, as in :func:`conv_plane` (cuDNN's int8 convolution
# accumulates in int32 and writes f32; an s32 output is not among its configurations): exact
# while |Σ| < 2^24, i.e. K·2^(b_a−1)·2^(b_w−1) < 2^24: every 4-bit layer (K < 262,144);
# at W8A8 K < 1,024 (the first conv, K = 27; the last, K = 1,152, is within an ulp in the
# worst case).

def _int_conv(a: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    pads = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(a.astype(jnp.int8), w.astype(jnp.int8), (stride, stride),
                                    pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    preferred_element_type=jnp.float32)


def int_conv_core(qa: jax.Array, za, qw: jax.Array, zw, *, stride: int,
                  padding: int) -> jax.Array:
    """Σ (q_a − z_a)(q_w − z_w) over each window of a zero-padded conv (see above): qa
    (B, H, W, I) levels, qw (kh, kw, I, O) levels -> (B, Ho, Wo, O) float32. za: None, a
    scalar or (B, 1, 1, 1); zw: None or (O,). Multiply by s_a·s_w for the layer's output."""
    kh, kw, i, _ = qw.shape
    acc = _int_conv(qa, qw, stride, padding)
    ones_w = jnp.ones((kh, kw, i, 1), jnp.int8)
    if zw is not None:
        acc = acc - zw * _int_conv(qa, ones_w, stride, padding)
    if za is not None:
        mask = jnp.ones((1,) + qa.shape[1:], jnp.int8)
        acc = acc - za * _int_conv(mask, qw, stride, padding)
        if zw is not None:
            acc = acc + za * zw * _int_conv(mask, ones_w, stride, padding)
    return acc


def int_dense_core(qa: jax.Array, za, qw: jax.Array, zw) -> jax.Array:
    """Σ_k (q_a − z_a)(q_w − z_w): (..., I) levels, qw (I, O) -> (..., O) float32. za: None,
    a scalar or (B, 1); zw: None or (O,). The product runs as bf16 × bf16 with f32 sums (the
    levels are exact in bf16 and the sums below 2^24 for b ≤ 8, I < 1024), not s8 × s8 -> s32:
    see :func:`dense_plane` for the XLA GPU gemm that got those wrong."""
    acc = lax.dot_general(qa.astype(jnp.bfloat16), qw.astype(jnp.bfloat16),
                          (((qa.ndim - 1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32)
    if zw is not None:
        acc = acc - zw * jnp.sum(qa.astype(jnp.float32), axis=-1, keepdims=True)
    if za is not None:
        acc = acc - za * jnp.sum(qw.astype(jnp.float32), axis=0)
        if zw is not None:
            acc = acc + za * zw * qw.shape[0]
    return acc
