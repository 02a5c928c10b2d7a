"""Larq-style efficiency summary: parameters per bit width, storage, BOPs / FLOPs / OPs.

How the numbers are obtained (no data is run):

* Parameters come from the model's ``nnx.Param`` leaves. Each factory layer
  (:class:`QConv` / :class:`QDense`) knows its bit widths; its ``kernel``/``bias`` are the
  teacher's tensors, everything else under it is a method extra (tau, k-conv, shortcut...).
* MACs per layer come from one abstract trace (``jax.make_jaxpr``) during which every factory
  layer records its shapes (:mod:`bidm_jax.quant.trace`). The same jaxpr is walked for all
  ``conv_general_dilated``/``dot_general`` ops; the MACs not claimed by a factory layer are
  the parameter-free matmuls (attention QKᵀ and AV).

Two conventions are reported (methods.md §2.9, §8 item 6):

* ``stored`` (honest): everything the binary model needs at inference: 1-bit kernels,
  fp32 extras (tau, k-conv, RPReLU, shortcut scale and FP 1×1 shortcut convs), the derived
  per-channel/per-layer weight scales, norms and FP layers; binary-layer biases are dropped.
  FLOPs = all FP MACs incl. skip/shortcut convs, k-conv and attention matmuls.
* ``paper``: the BiDM/BinaryDM tables: binarized kernels at 1 bit, every other *teacher*
  tensor at 32 bits, extras not counted (optionally + per-channel scales). FLOPs = MACs of
  the FP conv/linear layers, excluding the 1×1 skip convs in a quantized model and never
  counting attention matmuls; an FP model counts all conv+linear MACs. The BiDM tables also
  leave the FP skip convs out of the size (37.3 MB on LDM-4, methods.md §0 item 3):
  ``size_skips_binary_mib`` counts them at 1 bit (:mod:`bidm_jax.quant.published` sets the
  papers' printed totals beside these).

BOPs = Σ MACs·b_w·b_a over quantized layers (b_w: stored bits, 2 for a two-basis layer;
b_a: 1, 4, 8 ...); OPs = BOPs/64 + FLOPs (BinaryDM's OPs = b_w·b_a·MACs/64 + FLOPs).
Attention matmuls count as FP FLOPs even when their operands are quantized (they run in
float here). Sizes are MiB (2^20
bytes), which the papers print as "MB". MAC counts are per image.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable

import jax
import jax.extend as jex
import jax.numpy as jnp
from flax import nnx

from bidm_jax.quant import trace
from bidm_jax.quant.extras import AttentionOperands
from bidm_jax.quant.layers import QConv, QDense

__all__ = ["summarize", "count_matmul_macs"]

_MiB = 2.0 ** 20


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        o_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        return math.prod(out) * math.prod(rhs) // rhs[o_dim]
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    return 0


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        mult = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
        subs = []
        for v in eqn.params.values():
            for item in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(item, jex.core.ClosedJaxpr):
                    subs.append(item.jaxpr)
                elif isinstance(item, jex.core.Jaxpr):
                    subs.append(item)
        if eqn.primitive.name == "cond":  # one branch runs: count the most expensive
            total += max((_jaxpr_macs(s) for s in subs), default=0)
        else:
            total += mult * sum(_jaxpr_macs(s) for s in subs)
    return total


def count_matmul_macs(fn: Callable, *args) -> int:
    """MACs of every conv/dot_general in ``fn(*args)`` (args may be ShapeDtypeStructs)."""
    return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _derived_scales(m) -> int:
    """fp32 weight scales a binary layer must store at inference but computes from W in
    training (detached/per-layer means, the quantizer's ``derived_scales``); learnable ones
    are already Params."""
    kind = m.spec.weight_quantizer.derived_scales
    return {"channel": m.out_features, "layer": 1, None: 0}[kind]


def _vsize(v) -> int:
    """Element count of a Variable; works on abstract (nnx.eval_shape) models too."""
    return int(math.prod(v.get_value().shape))


def _layer_params(model):
    """Per factory layer: (spec, teacher kernel/bias sizes, extra param count, derived scales);
    the count of the method's Params outside factory layers (the attention operand quantizers'
    steps, TaQ's affine: not teacher tensors) and of the teacher's Params outside factory
    layers (norms)."""
    layers, claimed, method_other = {}, set(), 0
    for path, m in nnx.iter_modules(model):
        if isinstance(m, AttentionOperands):
            for sub, v in nnx.to_flat_state(nnx.state(m, nnx.Param)):
                if tuple(path) + tuple(sub) not in claimed:
                    claimed.add(tuple(path) + tuple(sub))
                    method_other += _vsize(v)
            continue
        if not isinstance(m, (QConv, QDense)):
            continue
        leaves = nnx.to_flat_state(nnx.state(m, nnx.Param))
        extra = 0
        for sub, v in leaves:
            claimed.add(tuple(path) + tuple(sub))
            if tuple(sub) not in (("kernel",), ("bias",)):
                extra += _vsize(v)
        layers[m.spec.path] = dict(module=m, kernel=_vsize(m.kernel), bias=_vsize(m.bias),
                                   extra=extra, scales=_derived_scales(m) if m.spec.binary else 0)
    other = sum(_vsize(v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if tuple(p) not in claimed)
    return layers, other, method_other


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _fmt(n: float) -> str:
    return f"{n:,.0f}" if abs(n) < 1e6 else f"{n:.3e}"


def summarize(model: nnx.Module, input_shape: tuple, *, apply_fn: Callable | None = None,
              skip_patterns: tuple[str, ...] = ()) -> tuple[str, dict]:
    """Efficiency table of ``model`` at one input of ``input_shape`` ((H,W,C) or (1,H,W,C)).

    apply_fn(model, x) calls the model (default ``model(x, zeros(B) int32)``). skip_patterns:
    fnmatch patterns of the FP 1×1 skip convs the papers' FLOPs leave out (the model family's
    ``skip_patterns``, e.g. DDIM's ``*.nin_shortcut``). The model must
    be built through :class:`~bidm_jax.quant.factory.QuantFactory` (any method, 'fp'
    included). Returns (table string, dict). The dict holds
    ``params`` {by_bits (stored), teacher, other_fp}; ``macs`` {binary, bops, fp_layers,
    skip, shortcut, kconv, unclaimed (attention matmuls), total_traced}; ``stored`` and
    ``paper`` {fp32_size_mib, size_mib, fp32_flops, bops, flops, ops, size_saving,
    ops_saving} (+ ``size_with_scales_mib`` and the b/32 accounting ``ops_bitwidth``,
    ``ops_bitwidth_saving`` for paper); ``layers``: one row per factory layer. Two OPs
    accountings (methods.md §4.5): BiDM/BinaryDM's OPs = BOPs/64 + FLOPs (BOPs = b_w·b_a·MACs,
    a W4A4 layer at 1/4 of FP) and Σ MAC·max(b_w, b_a)/32 + FLOPs (a W4A4 layer at 1/8).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or shape[0] != 1:
        raise ValueError(f"input_shape must be (H, W, C) or (1, H, W, C), got {input_shape}")
    apply_fn = trace.default_apply if apply_fn is None else apply_fn
    graphdef, state = nnx.split(model)

    def f(state, x):
        return apply_fn(nnx.merge(graphdef, state), x)

    with trace.record_layers() as records:
        total_macs = count_matmul_macs(f, state, jax.ShapeDtypeStruct(shape, jnp.float32))
    if not records:
        raise ValueError("no factory-built layer was traced: build the model with "
                         "QuantFactory (use method 'fp' for a full-precision model)")
    layers, other_params, method_other = _layer_params(model)

    rows, macs = [], dict(binary=0, bops=0, bit_macs=0, fp_layers=0, skip=0, shortcut=0,
                          kconv=0)
    for r in records:
        is_skip = any(fnmatch.fnmatchcase(r.path, p) for p in skip_patterns)
        if r.binary:
            macs["binary"] += r.macs
            macs["bops"] += r.macs * r.bits_w * r.bits_a
            # Q-DM's reading (methods.md §4.5): a b-bit MAC costs b/32 of an FP one; with
            # W != A the wider operand sets the datapath.
            macs["bit_macs"] += r.macs * max(r.bits_w, r.bits_a)
        else:
            macs["fp_layers"] += r.macs
            macs["skip"] += r.macs if is_skip else 0
        macs["shortcut"] += r.shortcut_macs
        macs["kconv"] += r.kconv_macs
    claimed = sum(r.macs + r.shortcut_macs + r.kconv_macs for r in records)
    macs["unclaimed"] = max(total_macs - claimed, 0)  # attention matmuls and the like

    bits_stored = {1: 0, 32: 0}
    weight_bits = {"1bit": [0, 0], "quantized": [0, 0]}   # [Σ bits·weights, Σ weights]
    act_bits: dict[int, int] = {}
    teacher_params = other_params
    paper_bits, paper_scales = 32 * other_params, 0
    # The FP skip 1×1 convs of a binary model, which the BiDM tables count as binary
    # (methods.md §0 item 3): their kernels' bits beyond 1 and their per-channel scales.
    has_binary = any(info["module"].spec.binary for info in layers.values())
    skip_extra_bits, skip_scales = 0, 0
    for path, info in layers.items():
        spec = info["module"].spec
        teacher_params += info["kernel"] + info["bias"]
        wbits = spec.stored_bits_w
        bias_stored = info["bias"] if (not spec.binary or spec.keep_bias) else 0
        bits_stored[wbits] = bits_stored.get(wbits, 0) + info["kernel"]
        bits_stored[32] += bias_stored + info["extra"] + info["scales"]
        paper_bits += wbits * info["kernel"] + 32 * info["bias"]
        paper_scales += info["scales"] if spec.binary else 0
        if (has_binary and not spec.binary
                and any(fnmatch.fnmatchcase(path, p) for p in skip_patterns)):
            skip_extra_bits += (wbits - 1) * info["kernel"]
            skip_scales += info["module"].out_features
        if spec.binary:
            kinds = ("quantized", "1bit") if spec.bits_w == 1 else ("quantized",)
            for kind in kinds:
                weight_bits[kind][0] += wbits * info["kernel"]
                weight_bits[kind][1] += info["kernel"]
            act_bits[spec.bits_a] = act_bits.get(spec.bits_a, 0) + 1
        rec = [r for r in records if r.path == path]
        rows.append(dict(
            path=path, binary=spec.binary, bits=f"{wbits}/{spec.bits_a if spec.binary else 32}",
            params_low=info["kernel"] if wbits < 32 else 0,
            params_fp=(info["kernel"] if wbits == 32 else 0) + bias_stored + info["extra"]
            + info["scales"],
            macs_binary=sum(r.macs for r in rec if r.binary),
            macs_fp=sum((0 if r.binary else r.macs) + r.shortcut_macs + r.kconv_macs for r in rec)))
    bits_stored[32] += other_params + method_other
    has_binary = macs["binary"] > 0
    stored_bits = sum(b * n for b, n in bits_stored.items())
    flops_stored = macs["fp_layers"] + macs["shortcut"] + macs["kconv"] + macs["unclaimed"]
    flops_paper = macs["fp_layers"] - (macs["skip"] if has_binary else 0)
    # The same network in FP: conv+linear MACs (papers) plus the attention matmuls (stored).
    fp_paper = macs["binary"] + macs["fp_layers"]
    fp_stored = fp_paper + macs["unclaimed"]
    size_fp = 32 * teacher_params / 8 / _MiB
    out = dict(
        input_shape=shape,
        params=dict(by_bits={str(k): v for k, v in sorted(bits_stored.items())},
                    teacher=teacher_params, other_fp=other_params),
        macs=dict(macs, total_traced=total_macs),
        # Mean stored bits per weight of the 1-bit-quantizer layers (a two-basis layer kept
        # to the end stores 2) and of all quantized layers; quantized layers per activation
        # bit width.
        bits=dict(per_weight_1bit=_ratio(*weight_bits["1bit"]),
                  per_weight_quantized=_ratio(*weight_bits["quantized"]),
                  activation_layers={str(k): v for k, v in sorted(act_bits.items())}),
        stored=dict(fp32_size_mib=size_fp, size_mib=stored_bits / 8 / _MiB,
                    fp32_flops=fp_stored, bops=macs["bops"], flops=flops_stored,
                    ops=macs["bops"] / 64 + flops_stored),
        paper=dict(fp32_size_mib=size_fp, size_mib=paper_bits / 8 / _MiB,
                   size_with_scales_mib=(paper_bits + 32 * paper_scales) / 8 / _MiB,
                   size_skips_binary_mib=(paper_bits - skip_extra_bits) / 8 / _MiB,
                   size_skips_binary_with_scales_mib=(
                       paper_bits - skip_extra_bits + 32 * (paper_scales + skip_scales))
                   / 8 / _MiB,
                   fp32_flops=fp_paper, bops=macs["bops"], flops=flops_paper,
                   ops=macs["bops"] / 64 + flops_paper,
                   ops_bitwidth=macs["bit_macs"] / 32 + flops_paper),
        layers=rows,
    )
    for conv in ("stored", "paper"):
        c = out[conv]
        c["size_saving"] = c["fp32_size_mib"] / c["size_mib"]
        c["ops_saving"] = c["fp32_flops"] / c["ops"] if c["ops"] else float("nan")
    p = out["paper"]
    p["size_skips_binary_saving"] = p["fp32_size_mib"] / p["size_skips_binary_mib"]
    p["ops_bitwidth_saving"] = p["fp32_flops"] / p["ops_bitwidth"] if p["ops_bitwidth"] \
        else float("nan")
    return _table(out), out


def _table(s: dict) -> str:
    w = max([len("layer")] + [len(r["path"]) for r in s["layers"]])
    head = (f"{'layer':<{w}}  {'W/A':>5}  {'low-bit params':>14}  {'fp32 params':>12}  "
            f"{'binary MACs':>12}  {'FP MACs':>12}")
    lines = [head, "-" * len(head)]
    for r in s["layers"]:
        lines.append(f"{r['path']:<{w}}  {r['bits']:>5}  {_fmt(r['params_low']):>14}  "
                     f"{_fmt(r['params_fp']):>12}  {_fmt(r['macs_binary']):>12}  "
                     f"{_fmt(r['macs_fp']):>12}")
    p, m = s["params"], s["macs"]
    lines += ["-" * len(head),
              f"params by bit width (stored): {p['by_bits']}   params outside factory layers "
              f"(norms...): {_fmt(p['other_fp'])}",
              f"MACs per image at {s['input_shape'][1:]}: binary {_fmt(m['binary'])}, FP layers "
              f"{_fmt(m['fp_layers'])} (of which skip 1x1 {_fmt(m['skip'])}), FP shortcut convs "
              f"{_fmt(m['shortcut'])}, scale maps {_fmt(m['kconv'])}, attention matmuls "
              f"{_fmt(m['unclaimed'])}"]
    b = s["bits"]
    if b["activation_layers"]:
        one_bit = (f"{b['per_weight_1bit']:.4f} (1-bit layers), "
                   if math.isfinite(b["per_weight_1bit"]) else "")
        lines.append(f"bits per weight: {one_bit}{b['per_weight_quantized']:.4f} (all quantized "
                     f"layers); quantized layers by activation bits: {b['activation_layers']}")
    for conv, title in (("stored", "stored (all it needs)"),
                        ("paper", "papers' convention")):
        c = s[conv]
        lines += ["", f"{title:<30}{'FP32':>12}{'quantized':>12}{'saving':>9}",
                  f"{'  size (MiB)':<30}{c['fp32_size_mib']:>12.2f}{c['size_mib']:>12.2f}"
                  f"{c['size_saving']:>8.1f}x",
                  f"{'  BOPs':<30}{0:>12.3e}{c['bops']:>12.3e}",
                  f"{'  FLOPs':<30}{c['fp32_flops']:>12.3e}{c['flops']:>12.3e}",
                  f"{'  OPs = BOPs/64 + FLOPs':<30}{c['fp32_flops']:>12.3e}{c['ops']:>12.3e}"
                  f"{c['ops_saving']:>8.1f}x"]
    p = s["paper"]
    lines.append(f"{'  OPs = Σ MAC·b/32 + FLOPs':<30}{p['fp32_flops']:>12.3e}"
                 f"{p['ops_bitwidth']:>12.3e}{p['ops_bitwidth_saving']:>8.1f}x")
    if "size_with_scales_mib" in s["paper"]:
        lines.append(f"{'  size + fp32 weight scales':<30}{'':>12}"
                     f"{s['paper']['size_with_scales_mib']:>12.2f}")
    if p["size_skips_binary_mib"] != p["size_mib"]:
        lines.append(f"{'  size, FP skip convs at 1 bit':<30}{'':>12}"
                     f"{p['size_skips_binary_mib']:>12.2f}{p['size_skips_binary_saving']:>8.1f}x"
                     f"  (+ scales {p['size_skips_binary_with_scales_mib']:.2f})")
    return "\n".join(lines)
