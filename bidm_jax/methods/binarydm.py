"""``binarydm``: BinaryDM W1A4 (ICLR 2025), methods.md §3.

* Weights: the evolvable-basis binarizer (EBB, Eq. 5–8) on the head/tail block groups (the
  ``quant.two_basis_groups`` groups whose features are at >= 1/2 of the input's scale; the
  DDIM CIFAR-10 UNet: the 32² and 16² levels), a learnable single basis σ·sign(W) elsewhere.
  ``quant.two_basis='paper'``: the second basis is regularised by L_EBB = τ·mean σ_II and
  dropped at ``quant.ebb_switch_step`` (stage 2, single basis everywhere at inference);
  ``'code'`` (the released "LMB" code): kept to the end, no regulariser (1.1 bits/weight).
* Activations: LSQ ``quant.bits_a`` bits (4) on every quantized layer's input and on the
  attention q, k, softmax weights and v (:mod:`bidm_jax.methods.lowbit`).
* Distillation: LRM (Eq. 11–15, :mod:`bidm_jax.distill.lrm`), λ = 1e-4, K = 4.

docs/binarydm.md has every paper/code switch.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bidm_jax.methods.base import register_method
from bidm_jax.methods.lowbit import LowBit

SIGMA2, STAGE = "ebb_sigma2", "ebb_second"  # bidm_jax.quant.registry's EBB variables

# (faithful_to, quant field, value): BinaryDM paper (App. B.1, Tables 9-12) / released code.
QUANT_VALUES = (
    ("paper", "bits_a", 4), ("paper", "two_basis", "paper"), ("paper", "act_step", "learned"),
    ("paper", "first_last_bits", 8), ("paper", "progressive", False),
    ("paper", "attn_quant", True),
    ("code", "bits_a", 4), ("code", "two_basis", "code"), ("code", "act_step", "dynamic"),
    ("code", "first_last_bits", 32), ("code", "progressive", True),
    ("code", "attn_quant", True),
)
# lr: paper 1/10 of the FP lr (App. B.1; DDIM CIFAR-10 2e-4); code 8e-5 (bedrooms.yaml:
# base 2e-5 × batch 4 × 1 GPU, the released recipe; there is no released CIFAR code).
FAITHFUL = (("paper", "lr", 2e-5), ("code", "lr", 8e-5))


@dataclasses.dataclass(frozen=True)
class BinaryDM(LowBit):
    def weight_for(self, group, qcfg) -> str:
        mode = self.field(qcfg, "two_basis")
        if mode == "none" or group is None or group >= int(qcfg.two_basis_groups):
            return "learnable_scale"
        return "ebb_staged" if mode == "paper" else "ebb"

    def step_aux(self, aux: dict, step, config) -> dict:
        out = super().step_aux(aux, step, config)
        switch = int(config.quant.ebb_switch_step)
        for name in aux:
            if name.rsplit(".", 1)[-1] == STAGE:  # Eq. 10: stage 2 from the switch on
                out[name] = jnp.asarray(step < switch, jnp.float32)
        return out

    def extra_loss(self, params: dict, aux: dict, step, config):
        """L_EBB = τ·(1/N)·Σ_i mean(σ_II^i) over the N two-basis layers while their second
        basis is on (paper mode; BinaryDM Eq. 9)."""
        q = config.quant
        if q.two_basis != "paper" or q.ebb_tau == 0:
            return None, {}
        terms = [jnp.mean(params[n]) * aux[f"{n[: -len(SIGMA2)]}{STAGE}"]
                 for n in params if n.rsplit(".", 1)[-1] == SIGMA2]
        if not terms:
            return None, {}
        reg = jnp.mean(jnp.stack(terms))
        return float(q.ebb_tau) * reg, {"ebb_reg": reg}


BINARYDM = register_method(BinaryDM(
    name="binarydm", weight="ebb", act="lsq4", quant_values=QUANT_VALUES,
    distill_defaults=(("loss", "lrm"), ("tbs", False)), faithful_values=FAITHFUL,
    step_ms=33.0,  # benchmarks/distill.md (TF32, batch 64, 1x H100)
    description="BinaryDM W1A4: EBB two-basis head/tail weights, LSQ activations; LRM"))
