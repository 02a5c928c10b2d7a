"""``qdm``: Q-DM (Li et al., NeurIPS 2023), W = A = b bits (W4A4 default), methods.md §4.

Q-DM has no public code and its full text could not be read (methods.md §4.1): the verified
facts are the two components and their targets (TaQ against activation-distribution
oscillation, NeM against error accumulation) and the headline (W4A4 CIFAR-10 FID 5.17, 7.8×
theoretical acceleration of the 1000-step DDPM). Everything else here is this project's
reading (methods.md §4.4), each alternative behind a flag (docs/qdm.md):

* LSQ weights (``quant.bits_w``; one step per output channel, ``quant.weight_granularity=
  tensor`` for one per kernel) and LSQ activations (``quant.bits_a``; a learned per-tensor
  step calibrated on the first batch, the LSQ paper's gradient scale ``act_step=learned_lsq``)
  on every conv/linear of the blocks, the ResBlock 1×1 skips and attention q/k/v/proj_out
  included; conv_in/conv_out, the time MLP, temb_proj and the norms FP
  (``quant.first_last_bits=8`` for 8-bit first/last convs);
* the attention operands q, k, softmax weights and v quantized at ``bits_a``
  (``quant.attn_quant=False`` keeps the QKᵀ and AV products FP), with TaQ
  (:mod:`bidm_jax.quant.taq`, ``quant.taq``) normalising q and k first;
* NeM (:mod:`bidm_jax.distill.nem`, ``distill.loss='nem'``): L_simple + λ·‖ε̂_FP − ε̂_Q‖²
  on the same (x_t, t), or matched after ``distill.nem_unroll`` sampler steps;
* the DDPM recipe (lr 2e-4, 5,000 warm-up steps, batch 128, grad clip 1, mean-reduced loss;
  configs/cifar10_ddim_qdm.py), initialised from the FP teacher.

Q-DM has no paper/code split: ``distill.faithful_to`` does not change it.
"""
from __future__ import annotations

import dataclasses

from bidm_jax.methods.base import register_method
from bidm_jax.methods.lsq import LSQ

# (faithful_to, quant field, value): the same for both (there is no released code).
QUANT_VALUES = tuple(
    (w, f, v) for w in ("paper", "code") for f, v in (
        ("bits_w", 4), ("bits_a", 4), ("two_basis", "none"), ("act_step", "learned_lsq"),
        ("first_last_bits", 32), ("progressive", False), ("attn_quant", True),
        ("weight_granularity", "channel"), ("taq", "batch_ema")))
# "All training settings follow DDPM" (methods.md §4.2 item 5, 11): lr 2e-4. A QAT run from
# a trained model may prefer 1/10 of it (BinaryDM's practice): --config.distill.lr=2e-5.
FAITHFUL = (("paper", "lr", 2e-4), ("code", "lr", 2e-4))


@dataclasses.dataclass(frozen=True)
class QDM(LSQ):
    """LSQ's layers (:mod:`bidm_jax.methods.lsq`) with Q-DM's values, TaQ and NeM."""

    def layer_patterns(self, family):
        # The time embedding's per-block projections stay FP too (methods.md §4.4); explicit
        # quant.fp_layers / binary_layers replace these patterns.
        fp, binary = super().layer_patterns(family)
        temb = tuple(p for p in binary if "temb" in p or "emb_layers" in p)
        return fp + temb, tuple(p for p in binary if p not in temb)

    def describe(self, config) -> dict:
        q = config.quant
        return {f: q[f] for f in ("bits_w", "bits_a", "act_step", "weight_granularity",
                                  "first_last_bits", "attn_quant", "taq", "taq_operands",
                                  "taq_buckets", "taq_momentum", "taq_variance",
                                  "taq_affine_init")}


QDM_METHOD = register_method(QDM(
    name="qdm", weight="lsq4", act="lsq4_sample", quant_values=QUANT_VALUES,
    distill_defaults=(("loss", "nem"), ("tbs", False)), faithful_values=FAITHFUL,
    step_ms=31.0,  # benchmarks/distill.md (TF32, batch 64, 1x H100)
    description="Q-DM W4A4: LSQ weights/activations, TaQ on attention q/k; NeM"))
