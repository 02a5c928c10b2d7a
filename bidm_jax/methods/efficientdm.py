"""``efficientdm``: EfficientDM (He et al., ICLR 2024; methods.md §5), the W4A4 row of
BinaryDM's tables and the W1A1 row of BiDM's, after the released code (ThisisBillhe/EfficientDM
quant_scripts/quant_layer.py, quant_model.py, train_efficientdm.py):

* weights of every quantized layer: QALoRA, ``quant.bits_w``-bit channel-wise asymmetric
  quantization of W + B·A (rank ``quant.lora_rank``), Δ and z from the clipping search on the
  teacher kernel (:mod:`bidm_jax.quant.efficientdm`);
* activations: TALSQ, ``quant.bits_a`` bits, one (Δ, z) per sampling step, calibrated on the
  teacher's trajectory (``quant.talsq_init``);
* which layers: every conv/linear of the blocks except the ResBlock 1×1 skips and the
  downsampling convs (the code skips modules named ``skip``/``op``: LDM's ``skip_connection``
  and ``Downsample.op``); the time-embedding MLP and the first and last convs (the code's
  "first three and last" modules) at ``quant.first_last_bits`` = 8 bits (W8A8, one (Δ, z)
  per layer, frozen: the code leaves them out of the optimizer); attention matmuls in FP;
* data-free distillation on the teacher's DDIM trajectories (``distill.data``,
  :mod:`bidm_jax.distill.trajectory`);
* AdamW (weight decay 0.01) with three learning rates: LoRA Δ_avg/2500 (Δ_avg: the mean of
  the layer's weight steps at initialisation), weight steps 1e-6, TALSQ steps and zero
  points ``train.lr`` = 5e-4; everything else (kernels, biases, norms, the W8A8 layers'
  quantizers, the weight zero points) frozen (:meth:`EfficientDM.lr_multipliers`).

W1A1: ``quant.bits_w=1``, ``quant.bits_a=1`` (two levels {−zΔ, (1 − z)Δ} with a real zero
point; the code asserts b ≥ 2). docs/efficientdm.md lists every choice and its flag.
"""
from __future__ import annotations

import dataclasses
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax.diffusion.samplers import ddim_timesteps
from bidm_jax.methods.base import Method, register_method
from bidm_jax.methods.lowbit import LowBit
from bidm_jax.models.registry import get_family
from bidm_jax.quant import efficientdm as Q
from bidm_jax.quant.policy import LayerSpec

DOWNSAMPLE = "*.downsample.conv"   # LDM's Downsample.op, which the code does not quantize
DEFAULT_GRID = (0, 10, 100)        # DDIM 100 of 1000 steps, ermongroup timesteps

QUANT_VALUES = tuple((w, f, v) for w in ("paper", "code") for f, v in (
    ("bits_w", 4), ("bits_a", 4), ("first_last_bits", 8), ("two_basis", "none"),
    ("act_step", "learned"), ("progressive", False), ("attn_quant", False)))
# train.lr is the TALSQ lr (5e-4, train_efficientdm.py); the other groups are multipliers.
FAITHFUL = (("paper", "lr", 5e-4), ("code", "lr", 5e-4))


def _grid(qcfg) -> tuple[int, int, int]:
    g = qcfg.talsq_grid
    return DEFAULT_GRID if g is None else tuple(int(v) for v in g)


def _matches(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


@dataclasses.dataclass(frozen=True)
class EfficientDM(LowBit):
    # --- configuration ----------------------------------------------------------------------

    def resolve(self, config) -> None:
        super().resolve(config)
        q = config.quant
        if not q.edge_layers:  # left empty: the first/last convs and the time MLP at 8 bits
            family = get_family(config.model.name)
            skips, edges = set(family.skip_patterns), tuple(family.edge_layers)
            q.edge_layers = edges + tuple(p for p in family.fp_layers
                                          if p not in skips and p not in edges)

    def resolve_quant(self, config) -> None:
        super().resolve_quant(config)
        q, d = config.quant, config.diffusion
        if q.talsq_grid is None:  # the sampler's timesteps: TALSQ's step index
            ts = ddim_timesteps(d.num_timesteps, d.sample_steps, d.timestep_convention)
            q.talsq_grid = (int(ts[0]), int(d.num_timesteps) // int(d.sample_steps), len(ts))

    def layer_patterns(self, family):
        fp = tuple(family.fp_layers) + tuple(p for p in family.binary_layers if p == DOWNSAMPLE)
        return fp, tuple(p for p in family.binary_layers if p != DOWNSAMPLE)

    def validate(self, qcfg) -> None:
        Method.validate(self, qcfg)
        f = lambda name: self.field(qcfg, name)
        for field, bits in (("bits_w", f("bits_w")), ("bits_a", f("bits_a")),
                            ("first_last_bits", f("first_last_bits"))):
            if bits is not None and not (1 <= bits <= 8 or (bits == 32 and field != "bits_w")):
                raise ValueError(f"method 'efficientdm' needs quant.{field} in 1..8"
                                 f"{'' if field == 'bits_w' else ' or 32 (FP)'}, got {bits}")
        if f("attn_quant"):
            raise ValueError("method 'efficientdm' keeps the attention matmuls in FP (its code "
                             "quantizes none): quant.attn_quant must be False")
        if not isinstance(qcfg.lora_rank, int) or qcfg.lora_rank < 0:
            raise ValueError(f"quant.lora_rank={qcfg.lora_rank!r} must be an int >= 0")
        if not qcfg.lora_lr_div > 0:
            raise ValueError(f"quant.lora_lr_div={qcfg.lora_lr_div} must be > 0")
        for field in ("weight_step_lr", "weight_zp_lr"):
            if not qcfg[field] >= 0:
                raise ValueError(f"quant.{field}={qcfg[field]} must be >= 0")
        if qcfg.zp_form == "code" and 1 in (f("bits_a"), f("first_last_bits")):
            raise ValueError("quant.zp_form='code' gives three levels at 1 bit; use 'offset'")
        g = qcfg.talsq_grid
        if g is not None and (len(g) != 3 or g[0] < 0 or g[1] < 1 or g[2] < 1):
            raise ValueError(f"quant.talsq_grid={g!r} must be (first t >= 0, stride >= 1, "
                             "steps >= 1)")

    # --- layers -----------------------------------------------------------------------------

    def layer_spec(self, path: str, qcfg, group: int | None = None) -> LayerSpec:
        self.validate(qcfg)
        f = lambda name: self.field(qcfg, name)
        if _matches(path, qcfg.edge_layers):
            bits = int(f("first_last_bits"))
            if bits == 32:
                return LayerSpec(path=path, method=self.name, binary=False)
            return LayerSpec(path=path, method=self.name, binary=True,
                             weight=Q.weight_name(bits, 0), act=Q.act_name(bits, qcfg.zp_form),
                             keep_bias=True, group=group)
        spec = Method.layer_spec(self, path, qcfg, group)
        if not spec.binary:
            return spec
        bits_a = int(f("bits_a"))
        act = "fp" if bits_a == 32 else Q.talsq_name(bits_a, _grid(qcfg), qcfg.zp_form)
        return dataclasses.replace(spec, weight=Q.weight_name(int(f("bits_w")), qcfg.lora_rank),
                                   act=act, keep_bias=True)

    def attention_quantizers(self, path: str, qcfg):
        return None

    # --- training hooks ---------------------------------------------------------------------

    def lr_multipliers(self, params: dict, config) -> dict:
        """The code's three AdamW groups as multipliers of ``train.lr`` (the TALSQ lr):
        LoRA factors (mean Δ of the layer's weight steps)/lora_lr_div, weight steps
        weight_step_lr, weight zero points weight_zp_lr, TALSQ steps and zero points 1;
        every other parameter 0 (frozen, as ``requires_grad=False`` in the code)."""
        q, lr = config.quant, float(config.train.lr)
        out = {}
        for name in params:
            layer, _, attr = name.rpartition(".")
            edge = _matches(layer, q.edge_layers)
            if attr in (Q.LORA_A, Q.LORA_B):
                delta = np.mean(np.asarray(params[f"{layer}.{Q.WEIGHT_DELTA}"], np.float64))
                out[name] = float(delta) / float(q.lora_lr_div) / lr
            elif attr == Q.WEIGHT_DELTA and not edge:
                out[name] = float(q.weight_step_lr) / lr
            elif attr == Q.WEIGHT_ZP and not edge:
                out[name] = float(q.weight_zp_lr) / lr
            elif attr in (Q.TALSQ_DELTA, Q.TALSQ_ZP):
                out[name] = 1.0
            else:
                out[name] = 0.0
        return out

    def calibrate(self, ctx, params: dict, aux: dict) -> tuple[dict, dict]:
        """One calibration forward on a batch pooled over the trajectory's steps sets every
        activation quantizer, each TALSQ step to the same values (``talsq_init='shared'``,
        the code's init from one calibration set); with 'per_step' (and a trajectory
        context) each step's (Δ, z) is then re-set from that step's states alone."""
        params, aux = ctx.forward(params, aux)
        config = getattr(ctx, "config", None)
        if config is None or config.quant.talsq_init != "per_step":
            return params, aux
        names = [n for n in params if n.rpartition(".")[2] in (Q.TALSQ_DELTA, Q.TALSQ_ZP)]
        if not names:
            return params, aux
        if any(params[n].shape != (ctx.steps,) for n in names):
            raise ValueError(f"quant.talsq_grid={tuple(config.quant.talsq_grid)} does not have "
                             f"the trajectory's {ctx.steps} steps")

        def one_step(acc, pos):  # keep only entry pos of what the step's batch calibrates
            p, _ = ctx.step_forward({**params, **acc}, aux, pos)
            return {n: acc[n].at[pos].set(p[n][pos]) for n in names}, None

        acc, _ = jax.lax.scan(one_step, {n: params[n] for n in names}, jnp.arange(ctx.steps))
        return {**params, **acc}, aux

    def describe(self, config) -> dict:
        q = config.quant
        return {f: (list(q[f]) if isinstance(q[f], tuple) else q[f]) for f in (
            "bits_w", "bits_a", "first_last_bits", "edge_layers", "lora_rank", "lora_lr_div",
            "weight_step_lr", "weight_zp_lr", "talsq_init", "zp_form", "talsq_grid")}


EFFICIENTDM = register_method(EfficientDM(
    name="efficientdm", weight=Q.DEFAULT_WEIGHT, act=Q.DEFAULT_ACT, quant_values=QUANT_VALUES,
    distill_defaults=(("loss", "none"), ("tbs", False), ("data", "teacher_trajectory")),
    faithful_values=FAITHFUL,
    step_ms=28.6,  # benchmarks/distill.md (TF32, batch 64, 1x H100)
    description="EfficientDM W4A4: QALoRA asymmetric weights, TALSQ activations; data-free"))
