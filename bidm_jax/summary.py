"""``--mode summary``: parameter and storage table of the configured model."""
from __future__ import annotations

import collections

import numpy as np
from flax import nnx

from bidm_jax.models import build_unet
from bidm_jax.models.functional import Functional


def param_table(fm: Functional) -> tuple[str, dict]:
    """Parameters grouped by top-level module (temb, conv_in, down.i, mid, up.i, out)."""
    groups = collections.OrderedDict()
    for name, v in fm.params.items():
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] in ("down", "up") else parts[0]
        groups[key] = groups.get(key, 0) + int(np.prod(v.shape))
    total = sum(groups.values())
    rows = [f"{'module':<12}{'params':>14}{'FP32 MiB':>12}"]
    rows += [f"{k:<12}{n:>14,}{n * 4 / 2**20:>12.2f}" for k, n in groups.items()]
    rows.append(f"{'total':<12}{total:>14,}{total * 4 / 2**20:>12.2f}")
    return "\n".join(rows), {"params": total, "fp32_mib": total * 4 / 2**20, "groups": groups}


def run_summary(config, workdir: str) -> dict:
    fm = Functional(nnx.eval_shape(lambda: build_unet(config.model, rngs=nnx.Rngs(0))))
    table, info = param_table(fm)
    print(table)
    return {"params": info["params"], "fp32_mib": info["fp32_mib"]}
