"""W1A1 / low-bit quantization: estimators, binarizers, the quantizer registry, NNX layers,
the per-layer spec, the efficiency summary.

Start with :class:`QuantFactory` (build a model's layers per the ``quant`` config and its
method, :mod:`bidm_jax.methods`) and :func:`summarize` (efficiency table); the student of a
config is built by :func:`bidm_jax.build.student`. docs/quantization.md explains every method
and flag.
"""

from bidm_jax.quant import binarizers, registry, ste, trace
from bidm_jax.quant.config import get_quant_config, validate_quant_config
from bidm_jax.quant.factory import QuantFactory, fp_factory
from bidm_jax.quant.layers import QConv, QDense, ReSTEPower
from bidm_jax.quant.packed import PackedOptions
from bidm_jax.quant.policy import LayerSpec
from bidm_jax.quant.registry import QVar, Quantizer, get_quantizer, list_quantizers, register
from bidm_jax.quant.ste import approx_sign, reste_o_schedule
from bidm_jax.quant.student import load_teacher_params, refresh_kernel_inits
from bidm_jax.quant.summary import summarize

__all__ = [
    "binarizers", "registry", "ste", "trace",
    "get_quant_config", "validate_quant_config",
    "QuantFactory", "fp_factory", "QConv", "QDense", "ReSTEPower", "PackedOptions",
    "LayerSpec", "QVar", "Quantizer", "get_quantizer", "list_quantizers", "register",
    "approx_sign", "reste_o_schedule", "load_teacher_params", "refresh_kernel_inits",
    "summarize",
]
