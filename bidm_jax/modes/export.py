"""``--mode export``: a trained binary student as a packed inference file
(``{workdir}/export/packed.npz``, format in :mod:`bidm_jax.export`) and ``export.json`` with
its real byte counts against FP32 files of the teacher and of the fake-quant student."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from bidm_jax import build, export
from bidm_jax.models.functional import check_shapes
from bidm_jax.training import checkpoint


def _latest_step(ckpt_dir: str) -> int:
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir!r} holds no checkpoint steps")
    return max(steps)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_export(config, workdir: str) -> dict:
    """Writes ``{workdir}/export/packed.npz`` and ``export.json``; returns the report (byte
    counts, tensor counts, paths)."""
    if not build.method(config).binary:
        raise ValueError(f"quant.method={config.quant.method!r}: an FP model has no binary "
                         "layers to pack; export a binary student (--config.quant.method=bidm, "
                         "xnor, ...)")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no student checkpoint under {ckpt_dir}; distil one first "
                                "(--mode distill)")
    fm = build.student(config).fm
    params, aux = checkpoint.load_params(ckpt_dir, use_ema=config.sample.use_ema,
                                         with_aux=True)
    check_shapes(fm.shapes(), params, f"student checkpoint {ckpt_dir}")
    params = {n: np.asarray(v) for n, v in params.items()}
    values = {**params, **{n: np.asarray(v) for n, v in build.sampling_aux(aux).items()}}
    packed, layers = export.pack_params(fm, values)
    planes = {b: i["planes"] for b, i in layers.items() if i["bits_w"] == 1}
    disk_fm = build.student(config, packed=export.DISK, packed_planes=planes).fm
    check_shapes({**disk_fm.shapes(), **disk_fm.aux_shapes()}, packed, "packed parameters")
    out_dir = os.path.join(workdir, "export")
    path = os.path.join(out_dir, "packed.npz")
    report = {"format": export.FORMAT, "method": config.quant.method, "path": path,
              "ema": bool(config.sample.use_ema), "step": _latest_step(ckpt_dir)}
    if jax.process_index() == 0:
        size = export.write_packed(path, packed, config, layers)
        report.update(export.byte_report(packed, layers, size, params,
                                         build.teacher(config).shapes(), out_dir))
        report["student_checkpoint_step_bytes"] = _dir_bytes(
            os.path.join(ckpt_dir, str(report["step"])))
        if report["exact_zero_weights"]:
            logging.warning("%d binary weights are exactly 0: fake-quant sign(0) = 0, packed "
                            "+1 (outputs may differ slightly)", report["exact_zero_weights"])
        with open(os.path.join(out_dir, "export.json"), "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
        logging.info("export: %s (%d bytes; FP32 teacher npz %d bytes, %.1fx)", path, size,
                     report["teacher_fp32_npz_bytes"],
                     report["ratio_teacher_fp32_npz_over_packed"])
    return report
