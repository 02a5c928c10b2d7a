"""``binarydm_baseline``: the "Baseline" rows of BinaryDM's tables (methods.md §3.7): a
learnable single-basis weight σ·sign(W) (σ per output channel, init mean|W|) on every
quantized layer, LSQ activations as BinaryDM's, no EBB and no LRM (Table 12's "0 (no EBB)").
"""
from __future__ import annotations

import dataclasses

from bidm_jax.methods.base import register_method
from bidm_jax.methods.binarydm import FAITHFUL, QUANT_VALUES
from bidm_jax.methods.lowbit import LowBit


@dataclasses.dataclass(frozen=True)
class Baseline(LowBit):
    def weight_for(self, group, qcfg) -> str:
        return "learnable_scale"


BASELINE = register_method(Baseline(
    name="binarydm_baseline", weight="learnable_scale", act="lsq4",
    quant_values=tuple((w, f, "none" if f == "two_basis" else v) for w, f, v in QUANT_VALUES),
    faithful_values=FAITHFUL,
    step_ms=25.0,  # benchmarks/distill.md (TF32, batch 64, 1x H100)
    description="BinaryDM Baseline W1A4: learnable sigma·sign(W), LSQ activations"))
