"""W1A1 / low-bit quantization: estimators, binarizers, registry, NNX layers, policy, summary.

Start with :class:`QuantFactory` (build a UNet's layers per the ``quant`` config),
:func:`build_student` (binary student from a teacher) and :func:`summarize` (efficiency
table). docs/quantization.md explains every method and flag.
"""

from bidm_jax.quant import binarizers, registry, ste, trace
from bidm_jax.quant.config import METHODS, get_quant_config, validate_quant_config
from bidm_jax.quant.factory import QuantFactory, fp_factory
from bidm_jax.quant.layers import QConv, QDense, ReSTEPower
from bidm_jax.quant.packed import PackedOptions
from bidm_jax.quant.policy import METHOD_SPECS, LayerSpec, MethodSpec, resolve_layer
from bidm_jax.quant.registry import get_quantizer, list_quantizers
from bidm_jax.quant.ste import approx_sign, reste_o_schedule
from bidm_jax.quant.student import (build_packed_student, build_student, load_teacher_params,
                                    refresh_kernel_inits, set_reste_o, with_reste_o)
from bidm_jax.quant.summary import summarize

__all__ = [
    "binarizers", "registry", "ste", "trace",
    "METHODS", "get_quant_config", "validate_quant_config",
    "QuantFactory", "fp_factory", "QConv", "QDense", "ReSTEPower", "PackedOptions",
    "METHOD_SPECS", "LayerSpec", "MethodSpec", "resolve_layer",
    "get_quantizer", "list_quantizers", "approx_sign", "reste_o_schedule",
    "build_student", "build_packed_student", "load_teacher_params", "refresh_kernel_inits",
    "set_reste_o", "with_reste_o", "summarize",
]
