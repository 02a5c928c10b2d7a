"""``lsq``: the LSQ rows of BinaryDM's tables (Esser et al.; methods.md §5): signed
``quant.bits_w``-bit weights with a learned per-output-channel step (init 2·mean|W|/√Q_P,
gradient scale 1/√(n·Q_P) with n the weights per channel) and ``quant.bits_a``-bit LSQ
activations; W2A4 by default (W2A8, W2A32 by override)."""
from __future__ import annotations

import dataclasses

from bidm_jax.methods.base import register_method
from bidm_jax.methods.binarydm import FAITHFUL
from bidm_jax.methods.lowbit import LowBit
from bidm_jax.quant.registry import LSQ_BITS

QUANT_VALUES = tuple(
    (w, f, v) for w in ("paper", "code") for f, v in (
        ("bits_w", 2), ("bits_a", 4), ("two_basis", "none"),
        ("act_step", "learned" if w == "paper" else "dynamic"),
        ("first_last_bits", 8 if w == "paper" else 32), ("progressive", False),
        ("attn_quant", True), ("weight_granularity", "channel")))


@dataclasses.dataclass(frozen=True)
class LSQ(LowBit):
    lsq_weights: bool = True

    def weight_for(self, group, qcfg) -> str:
        # quant.weight_granularity: 'channel' (default) or 'tensor' (the original LSQ's).
        tensor = self.field(qcfg, "weight_granularity") == "tensor"
        return f"lsq{int(self.field(qcfg, 'bits_w'))}" + ("_tensor" if tensor else "")

    def validate(self, qcfg) -> None:
        super().validate(qcfg)
        bits_w = self.field(qcfg, "bits_w")
        if bits_w not in LSQ_BITS:
            raise ValueError(f"method {self.name!r} needs quant.bits_w in {LSQ_BITS}, got "
                             f"{bits_w}")


LSQ_METHOD = register_method(LSQ(
    name="lsq", weight="lsq2", act="lsq4", quant_values=QUANT_VALUES, faithful_values=FAITHFUL,
    step_ms=25.2,  # benchmarks/distill.md (TF32, batch 64, 1x H100)
    description="LSQ W2A4: learned-step uniform weights and activations"))
