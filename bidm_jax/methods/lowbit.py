"""What the low-bit methods (BinaryDM, its Baseline, LSQ; methods.md §3, §5) share: LSQ
activations of ``quant.bits_a`` bits on the input of every quantized layer and on the
attention operands, the first and last convs at ``quant.first_last_bits``, the FP bias kept,
and the released code's progressive binarization (one block group per step, the attention
quantizers after them). Each method is its own file; this is their common base class.

The paper/code switches are ``quant`` fields left at None/'auto' and filled from
``distill.faithful_to`` by :meth:`LowBit.resolve_quant` (docs/binarydm.md lists them).
"""
from __future__ import annotations

import dataclasses
import fnmatch

import jax.numpy as jnp

from bidm_jax.methods.base import Method
from bidm_jax.models.registry import get_family
from bidm_jax.quant.policy import LayerSpec
from bidm_jax.quant.registry import LSQ_BITS
from bidm_jax.quant.taq import TaQSpec

__all__ = ["LowBit", "GATE", "act_quantizer"]

GATE = "quant_on"            # the gated layers' switch (bidm_jax.quant.registry.QuantGate)
OPERANDS_SUFFIX = ".operands"  # attention operand quantizers live under {block}.operands


def act_quantizer(bits: int, step: str) -> str:
    """Registry name of the LSQ activation quantizer: 'fp' at 32 bits, ``lsq{b}`` (learned
    step), ``lsq{b}_sample`` (learned, the LSQ paper's gradient scale) or ``lsq{b}_dynamic``
    (the code's per-batch step)."""
    if bits == 32:
        return "fp"
    if bits not in LSQ_BITS:
        raise ValueError(f"LSQ activations need quant.bits_a in {LSQ_BITS} or 32, got {bits}")
    return f"lsq{bits}" + {"dynamic": "_dynamic", "learned_lsq": "_sample"}.get(step, "")


@dataclasses.dataclass(frozen=True)
class LowBit(Method):
    """Base of the LSQ-activation methods. ``quant_values``: ((faithful_to, quant field,
    value), ...) for the fields left automatic; subclasses give their weight quantizer by
    overriding :meth:`weight_for`."""

    quant_values: tuple = ()
    bias: str = "keep"

    def values(self, faithful_to: str) -> dict:
        return {f: v for which, f, v in self.quant_values if which == faithful_to}

    def field(self, qcfg, name: str):
        """``quant.{name}``, or the paper's value while it is still automatic (a ``quant``
        section used directly, without ``configlib.resolve_config``)."""
        v = qcfg[name]
        return self.values("paper").get(name) if v is None or v == "auto" else v

    def resolve_quant(self, config) -> None:
        q = config.quant
        for field, value in self.values(config.distill.faithful_to).items():
            if q[field] is None or q[field] == "auto":
                q[field] = value
        if q.ebb_switch_step is None:
            q.ebb_switch_step = int(config.train.num_steps) // 2
        for field, fallback in (("taq", "off"), ("weight_granularity", "channel")):
            if q[field] == "auto":
                q[field] = fallback
        if q.taq_timesteps is None:
            q.taq_timesteps = int(config.diffusion.num_timesteps)
        if q.attn_quant_start is None:
            groups = get_family(config.model.name).num_groups
            q.attn_quant_start = groups(config.model) if q.progressive and groups else 0

    lsq_weights: bool = False      # LSQ weight steps (quant.weight_granularity applies)

    def validate(self, qcfg) -> None:
        act_quantizer(int(self.field(qcfg, "bits_a")), self.field(qcfg, "act_step"))
        if not self.lsq_weights and qcfg.weight_granularity not in ("auto", "channel"):
            raise ValueError(f"quant.weight_granularity={qcfg.weight_granularity!r} needs a "
                             f"method with LSQ weights (qdm, lsq), not {self.name!r}")
        if qcfg.first_last_bits is not None and qcfg.first_last_bits not in (*LSQ_BITS, 32):
            raise ValueError(f"quant.first_last_bits={qcfg.first_last_bits} must be in "
                             f"{LSQ_BITS} or 32 (full precision)")

    # --- layers -----------------------------------------------------------------------------

    def weight_for(self, group: int | None, qcfg) -> str:
        """Registry name of the weight quantizer of a quantized layer in block ``group``
        (each LowBit method gives its own: BinaryDM's EBB, the Baseline's σ·sign, LSQ)."""
        raise NotImplementedError(f"method {self.name!r}: a LowBit method must say which "
                                  "weight quantizer its layers use (weight_for)")

    def layer_patterns(self, family):
        # Every conv/linear of the blocks is quantized, the ResBlock 1×1 skips included
        # (BinaryDM code, methods.md §3.1), unlike BiDM which keeps them FP.
        skips = tuple(family.skip_patterns)
        fp = tuple(p for p in family.fp_layers if p not in skips)
        return fp, tuple(family.binary_layers) + skips

    def layer_spec(self, path: str, qcfg, group: int | None = None) -> LayerSpec:
        self.validate(qcfg)
        f = lambda name: self.field(qcfg, name)
        edge_bits = f("first_last_bits")
        if (edge_bits is not None and edge_bits != 32
                and any(fnmatch.fnmatchcase(path, p) for p in qcfg.edge_layers)):
            # BinaryDM App. B.1: the layers closest to the input and output at 8 bits.
            return LayerSpec(path=path, method=self.name, binary=True, weight=f"lsq{edge_bits}",
                             act=act_quantizer(edge_bits, f("act_step")), keep_bias=True,
                             group=group)
        spec = super().layer_spec(path, qcfg, group)
        if not spec.binary:
            return spec
        return dataclasses.replace(
            spec, weight=self.weight_for(group, qcfg),
            act=act_quantizer(int(f("bits_a")), f("act_step")),
            gated=bool(f("progressive")) and group is not None)

    def attention_quantizers(self, path: str, qcfg):
        if not self.field(qcfg, "attn_quant") or int(self.field(qcfg, "bits_a")) == 32:
            return None
        name = act_quantizer(int(self.field(qcfg, "bits_a")), self.field(qcfg, "act_step"))
        return {"q": name, "k": name, "weights": name, "v": name}

    def attention_taq(self, path: str, qcfg):
        # Q-DM's TaQ (bidm_jax.quant.taq); every LowBit method can ablate it ('off' unless
        # the method's values turn it on).
        mode = self.field(qcfg, "taq") or "off"
        if mode == "off":
            return None
        return TaQSpec(mode=mode, operands=tuple(qcfg.taq_operands),
                       buckets=int(qcfg.taq_buckets), momentum=float(qcfg.taq_momentum),
                       variance=qcfg.taq_variance, eps=float(qcfg.taq_eps),
                       num_timesteps=int(qcfg.taq_timesteps or 1000),
                       affine_init=qcfg.taq_affine_init)

    def attention_gated(self, qcfg) -> bool:
        return bool(self.field(qcfg, "attn_quant")) and int(qcfg.attn_quant_start or 0) > 0

    # --- training hooks ---------------------------------------------------------------------

    def gate_start(self, name: str, config) -> int:
        """First training step on which gate ``name`` (``{layer}.quant_on``) quantizes:
        progressive binarization turns block group g on at step G−1−g (the middle block
        first, G groups), the attention operands at ``quant.attn_quant_start``."""
        q = config.quant
        layer = name[: -len(GATE) - 1]
        if layer.endswith(OPERANDS_SUFFIX):
            return int(q.attn_quant_start)
        if not q.progressive:
            return 0
        family = get_family(config.model.name)
        group = family.block_group(layer, config.model)
        return family.num_groups(config.model) - 1 - group

    def step_aux(self, aux: dict, step, config) -> dict:
        out = dict(aux)
        for name in aux:
            if name.rsplit(".", 1)[-1] == GATE:
                out[name] = jnp.asarray(step >= self.gate_start(name, config), jnp.float32)
        return out

    def describe(self, config) -> dict:
        q = config.quant
        return {f: q[f] for f in ("bits_w", "bits_a", "two_basis", "two_basis_groups",
                                  "ebb_tau", "ebb_switch_step", "act_step", "first_last_bits",
                                  "progressive", "attn_quant", "attn_quant_start",
                                  "weight_granularity", "taq")}
