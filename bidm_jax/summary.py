"""``--mode summary``: the Larq-style efficiency table of the configured model.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/summary --mode summary

Builds the UNet abstractly (no weights are initialised, no data or teacher is read) through
:class:`bidm_jax.quant.QuantFactory` with ``quant.method`` (``fp`` gives the FP model) and
prints :func:`bidm_jax.quant.summarize`'s table: parameters per bit width, storage in MiB
(stored = everything the model needs, FP shortcut/skip convs included; and the papers'
convention), BOPs / FLOPs / OPs per image (methods.md §2.9). With TBS on (``distill.tbs``,
resolved as in ``--mode distill``) the coefficient table and the per-sample sampling carry
are reported beside it; they are not part of the UNet table.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.distill import tbs as tbs_lib
from bidm_jax.distill.config import resolve_distill_config
from bidm_jax.models import build_unet
from bidm_jax.quant import QuantFactory, summarize, trace
from bidm_jax.quant.factory import fp_factory


def abstract_model(config) -> nnx.Module:
    """The configured UNet under ``nnx.eval_shape`` (shapes only) built by the quant factory."""
    mcfg, qcfg = config.model, config.quant
    shape = (1, mcfg.resolution, mcfg.resolution, mcfg.in_channels)
    dtype = None if mcfg.dtype == "float32" else jnp.dtype(mcfg.dtype)
    sizes = None
    if qcfg.method == "xnor++":  # Γ is sized by each conv's output size (as build_student)
        fp = nnx.eval_shape(lambda: build_unet(mcfg, rngs=nnx.Rngs(0), factory=fp_factory()))
        sizes = trace.output_sizes(trace.trace_layers(fp, shape))
    return nnx.eval_shape(lambda: build_unet(
        mcfg, rngs=nnx.Rngs(0), factory=QuantFactory(qcfg, layer_sizes=sizes, dtype=dtype)))


def tbs_summary(config, model) -> dict | None:
    """TBS extras of a resolved config: table shape and per-sample carry (None if TBS is off)."""
    dist = config.distill
    if not dist.tbs:
        return None
    topo = tbs_lib.make_topology(model, dist.tbs_topology, dist.tbs_last_n)
    shapes = tbs_lib.feature_shapes(model, topo, (config.model.resolution,) * 2
                                    + (config.model.in_channels,))
    rows = tbs_lib.num_rows(config.diffusion.num_timesteps)
    return {"topology": topo.kind, "table_shape": [rows, topo.n_columns],
            "table_params": rows * topo.n_columns,
            "mix": [list(m) for m in topo.mix],
            "carry_shapes": {k: list(v.shape) for k, v in shapes.items()},
            "carry_floats_per_sample": tbs_lib.carry_floats(shapes),
            "carry_mib_per_sample_fp32": tbs_lib.carry_floats(shapes) * 4 / 2 ** 20}


def run_summary(config, workdir: str) -> dict:
    """Prints the table and writes ``{workdir}/summary.json`` (with the per-layer rows);
    returns the summary dict: ``summarize``'s keys except ``layers``, plus ``method`` and
    ``tbs``."""
    config = resolve_distill_config(config)
    model = abstract_model(config)
    shape = (config.model.resolution, config.model.resolution, config.model.in_channels)
    table, info = summarize(model, shape)
    info = {"method": config.quant.method, **info, "tbs": tbs_summary(config, model)}
    lines = [f"model: {config.model.name}, quant.method={config.quant.method}, input {shape}",
             table]
    if info["tbs"]:
        t = info["tbs"]
        lines += ["", f"TBS ({t['topology']} topology): coefficient table {t['table_shape']} "
                  f"= {t['table_params']} fp32 params; sampling carry per sample "
                  f"{t['carry_floats_per_sample']:,} floats ({t['carry_mib_per_sample_fp32']:.2f} "
                  f"MiB fp32): {t['carry_shapes']}"]
    print("\n".join(lines))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(info, f, indent=1, default=str)
    return {k: v for k, v in info.items() if k != "layers"}
