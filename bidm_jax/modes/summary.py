"""``--mode summary``: the Larq-style efficiency table of the configured model.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/summary --mode summary

Builds the model abstractly (no weights are initialised, no data or teacher is read) through
the method's factory (:func:`bidm_jax.build.quantized_model`; ``fp`` gives the FP model) and
prints :func:`bidm_jax.quant.summarize`'s table: parameters per bit width, storage in MiB
(stored = everything the model needs, FP shortcut/skip convs included; and the papers'
convention), BOPs / FLOPs / OPs per image (methods.md §2.9). With TBS on (``distill.tbs``,
resolved as in ``--mode distill``) the coefficient table and the per-sample sampling carry
are reported beside it; they are not part of the UNet table. For a model and method the
papers report (LDM-4 BiDM and BinaryDM), their printed totals and savings are set beside the
computed ones (:mod:`bidm_jax.quant.published`; docs/ldm_methods.md).
"""
from __future__ import annotations

import json
import os

import jax

from bidm_jax import build
from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.quant import published, summarize


# Which OPs convention a multi-bit claim can be read in (methods.md §4.5).
OPS_NOTE = ("OPs conventions: BOPs/64 + FLOPs (BiDM, BinaryDM) prices a W4A4 MAC at 16/64 "
            "of FP, so W4A4 cannot pass 4x; Sum MAC*b/32 + FLOPs prices it at 4/32 (8x "
            "ceiling). Q-DM's '7.8x for W4A4' fits only the b/32 convention: W4A4 with FP "
            "conv_in/conv_out gives 7.94x, with the time MLP and temb_proj FP too 7.91x, with "
            "the attention matmuls counted in FP 6.67x (DDPM CIFAR-10 UNet).")


def tbs_summary(config, model) -> dict | None:
    """TBS extras of a resolved config: table shape and per-sample carry (None if TBS is off)."""
    dist = config.distill
    if not dist.tbs:
        return None
    topo = tbs_lib.make_topology(build.family(config), model, dist.tbs_topology,
                                 dist.tbs_last_n)
    shapes = tbs_lib.feature_shapes(model, topo, build.input_shape(config))
    rows = tbs_lib.num_rows(config.diffusion.num_timesteps)
    return {"topology": topo.kind, "table_shape": [rows, topo.n_columns],
            "table_params": rows * topo.n_columns,
            "mix": [list(m) for m in topo.mix],
            "carry_shapes": {k: list(v.shape) for k, v in shapes.items()},
            "carry_floats_per_sample": tbs_lib.carry_floats(shapes),
            "carry_mib_per_sample_fp32": tbs_lib.carry_floats(shapes) * 4 / 2 ** 20}


def published_summary(config, info: dict) -> dict | None:
    """The papers' printed totals and savings for this model and method beside the computed
    papers' convention (FP skip convs at 1 bit, as the BiDM tables count them) and the honest
    (stored) counts; None when the papers print none."""
    fam = build.family(config)
    ref = published.reference(fam.preset(config.model) if fam.preset else None, config.quant)
    if ref is None:
        return None
    p, st = info["paper"], info["stored"]
    return {"source": ref.source,
            "printed": {"fp_size_mib": ref.fp_size_mib, "size_mib": ref.size_mib,
                        "fp_ops": ref.fp_ops, "ops": ref.ops, "bops": ref.bops,
                        "flops": ref.flops, **ref.savings()},
            "computed": {"fp_size_mib": p["fp32_size_mib"],
                         "size_mib": p["size_skips_binary_mib"],
                         "size_with_scales_mib": p["size_skips_binary_with_scales_mib"],
                         "size_saving": p["size_skips_binary_saving"],
                         "fp_ops": p["fp32_flops"], "bops": p["bops"], "flops": p["flops"],
                         "ops": p["ops"], "ops_saving": p["ops_saving"]},
            "honest": {"size_mib": st["size_mib"], "size_saving": st["size_saving"],
                       "ops": st["ops"], "ops_saving": st["ops_saving"]}}


def _published_lines(pub: dict) -> list[str]:
    r, c, h = pub["printed"], pub["computed"], pub["honest"]
    g = lambda v: "-" if v is None else f"{v / 1e9:.2f}G"
    lines = ["", f"published ({pub['source']}) vs this summary:",
             f"  printed:  FP {r['fp_size_mib']} MB, {g(r['fp_ops'])} OPs -> {r['size_mib']} MB "
             f"({r['size_saving']}x), {g(r['ops'])} OPs"
             + (f" ({r['ops_saving']}x)" if "ops_saving" in r else "")]
    lines.append(f"  papers' convention (FP skip convs at 1 bit): FP {c['fp_size_mib']:.1f} MiB, "
                 f"{g(c['fp_ops'])} OPs -> {c['size_mib']:.2f} MiB ({c['size_saving']:.1f}x; "
                 f"{c['size_with_scales_mib']:.2f} with fp32 scales), BOPs {g(c['bops'])} + "
                 f"FLOPs {g(c['flops'])} = {g(c['ops'])} OPs ({c['ops_saving']:.1f}x)")
    lines.append(f"  honest (stored, FP skip/shortcut convs and attention matmuls counted): "
                 f"{h['size_mib']:.2f} MiB ({h['size_saving']:.1f}x), {g(h['ops'])} OPs "
                 f"({h['ops_saving']:.1f}x)")
    return lines


def run_summary(config, workdir: str) -> dict:
    """Prints the table and writes ``{workdir}/summary.json`` (with the per-layer rows);
    returns the summary dict: ``summarize``'s keys except ``layers``, plus ``method`` and
    ``tbs``."""
    model = build.quantized_model(config, abstract=True, seed=0)
    shape = build.input_shape(config)
    table, info = summarize(model, shape, skip_patterns=build.family(config).skip_patterns)
    info = {"method": config.quant.method, **info, "tbs": tbs_summary(config, model),
            "published": published_summary(config, info)}
    lines = [f"model: {config.model.name}, quant.method={config.quant.method}, input {shape}",
             table]
    if any(int(k) > 1 for k in info["bits"]["activation_layers"]):
        lines += ["", OPS_NOTE]
    if info["tbs"]:
        t = info["tbs"]
        lines += ["", f"TBS ({t['topology']} topology): coefficient table {t['table_shape']} "
                  f"= {t['table_params']} fp32 params; sampling carry per sample "
                  f"{t['carry_floats_per_sample']:,} floats ({t['carry_mib_per_sample_fp32']:.2f} "
                  f"MiB fp32): {t['carry_shapes']}"]
    if info["published"]:
        lines += _published_lines(info["published"])
    print("\n".join(lines))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(info, f, indent=1, default=str)
    return {k: v for k, v in info.items() if k != "layers"}
