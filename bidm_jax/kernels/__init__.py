"""Packed 1-bit kernels: bit packing, XNOR-popcount and packed-weight matmuls, binary conv.

See docs/kernels.md for the packed layout, the padding scheme and how to run the benchmarks.
"""

from bidm_jax.kernels.conv import (
    PackedConv,
    binary_conv2d,
    binary_conv2d_reference,
    default_group_words,
    pack_conv_weights,
)
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import num_words, pack_signs, padded_length, unpack_signs
from bidm_jax.kernels.reference import packed_matmul_ref, xnor_popcount_matmul_ref
from bidm_jax.kernels.tpu_matmul import (
    TPU_OPERAND_CHOICES,
    operand_for_device_kind,
    resolve_tpu_operand,
    tpu_packed_matmul,
)
from bidm_jax.kernels.xnor import xnor_popcount_matmul

__all__ = [
    "TPU_OPERAND_CHOICES",
    "PackedConv",
    "binary_conv2d",
    "binary_conv2d_reference",
    "default_group_words",
    "num_words",
    "operand_for_device_kind",
    "pack_conv_weights",
    "pack_signs",
    "packed_matmul",
    "packed_matmul_ref",
    "padded_length",
    "resolve_tpu_operand",
    "tpu_packed_matmul",
    "unpack_signs",
    "xnor_popcount_matmul",
    "xnor_popcount_matmul_ref",
]
