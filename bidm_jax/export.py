"""``--mode export``: a trained binary student as a packed inference file, and sampling from it.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm --mode export
    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm --mode sample \
        --config.sample.packed=auto [--config.export.kernel=pallas]

Export restores the student of ``{workdir}/checkpoints`` (EMA weights unless
``sample.use_ema=False``), replaces every binary layer's FP ``kernel`` by its sign bits
(``kernel_bits``, int32 words, plain layout) and the scale its weight quantizer multiplies
sign(W) by (``kernel_scale`` (O,)), drops what the binary forward never reads (the
``weight_scale`` σ, now the kernel_scale, and the bias unless ``quant.binary_bias='keep'``),
keeps every other tensor in float32, and writes

* ``{workdir}/export/packed.npz``: an uncompressed ``np.savez`` of the tensors by dotted name,
  plus ``__config__`` (the resolved config as JSON) and ``__meta__`` (format, layout, the
  packed layers and their contraction lengths), both as uint8 bytes;
* ``{workdir}/export/export.json``: real byte counts (the packed file against an FP32 npz of
  the teacher and of the fake-quant student written the same way) and tensor counts.

Sampling builds the student graph with packed layers (:mod:`bidm_jax.quant.packed`, TBS carry
included) from the config alone: no teacher is needed. docs/export.md has the details.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import jax
import numpy as np
from absl import logging
from flax import nnx

from bidm_jax import checkpoint
from bidm_jax.distill import objective
from bidm_jax.distill.config import resolve_distill_config
from bidm_jax.distill.run import attach_student_tbs, teacher_functional
from bidm_jax.kernels.packing import pack_signs_host, regroup_words_host
from bidm_jax.models.functional import Functional, check_shapes, path_name
from bidm_jax.quant import build_student
from bidm_jax.quant.layers import QConv, QDense
from bidm_jax.quant.packed import PackedOptions, scale_of
from bidm_jax.quant.student import build_packed_student

FORMAT = "bidm_jax.packed/1"
CONFIG_KEY, META_KEY = "__config__", "__meta__"
# On disk the words use the plain layout (group_words = 1): ceil(K/32) words per output
# channel, no padding to a kernel's group. Loading repacks them for the chosen kernel.
DISK = PackedOptions(kernel="xla")
LAYOUT = ("int32 words along the contraction axis K = (dy, dx, c) of the (kh, kw, I, O) "
          "kernel reshaped to (K, O), element k in bit k % 32 of word k // 32 (LSB first), "
          "bit 1 = -1, bit 0 = +1; zero padding to whole words")


def packed_options(config) -> PackedOptions:
    """The execution the config asks for (``export.kernel``, ``export.pallas_backend``)."""
    e = config.get("export")
    if e is None:
        return PackedOptions()
    return PackedOptions(kernel=e.kernel, backend=e.pallas_backend)


def student_model(config, packed: PackedOptions | None = None):
    """(Functional, model_fn, carry_init) of the student a config describes, fake-quant
    (``packed=None``) or packed; with the TBS table and carry when ``distill.tbs``.

    Only the graph matters: the values come from a checkpoint or an export, so the fake-quant
    student is built from a random FP UNet instead of the teacher checkpoint.
    """
    config = resolve_distill_config(config)
    mcfg = config.model
    input_shape = (1, mcfg.resolution, mcfg.resolution, mcfg.in_channels)
    rngs = nnx.Rngs(config.seed)
    if packed is None:
        # Zeros of the teacher's shapes: build_student needs concrete values to copy.
        zeros = {n: np.zeros(s.shape, s.dtype)
                 for n, s in teacher_functional(config).shapes().items()}
        student = build_student(zeros, mcfg, config.quant, rngs=rngs, input_shape=input_shape)
    else:
        student = build_packed_student(mcfg, config.quant, packed, rngs=rngs,
                                       input_shape=input_shape)
    topology, shapes = attach_student_tbs(student, config)
    fm = Functional(student)
    model_fn, carry_init = objective.make_sample_fns(fm, topology, shapes)
    return fm, model_fn, carry_init


def binary_layers(module: nnx.Module):
    """(dotted path, layer) of every binary QConv/QDense of ``module``."""
    for path, m in nnx.iter_modules(module):
        if isinstance(m, (QConv, QDense)) and m.spec.binary:
            yield path_name(path), m


def pack_params(fm: Functional, params: dict) -> tuple[dict, dict]:
    """Packed parameters (numpy, disk layout) of the fake-quant student ``fm`` with values
    ``params``, and per-layer facts {path: {"k", "kernel_shape", "exact_zero_weights"}}.

    Per binary layer: ``kernel_bits`` = sign bits of kernel (K, O) and ``kernel_scale`` =
    the scale of its weight quantizer's forward value, checked to be scale·sign(W).
    """
    def quantized(p):  # every layer's W_q in one compiled program
        return {base: layer._quant_weight() for base, layer in binary_layers(fm.module(p))}

    w_q = jax.device_get(jax.jit(quantized)(params))
    out, dropped, layers = {}, set(), {}
    for base, layer in binary_layers(fm.module(params)):
        w = np.asarray(params[f"{base}.kernel"], np.float32)
        try:
            scale, zeros = scale_of(w, w_q[base])
        except ValueError as e:
            raise ValueError(f"{base} ({layer.spec.weight}): {e}") from None
        k = math.prod(w.shape[:-1])
        out[f"{base}.kernel_bits"] = pack_signs_host(w.reshape(k, w.shape[-1]))
        out[f"{base}.kernel_scale"] = scale
        dropped |= {f"{base}.kernel", f"{base}.weight_scale"}
        if not layer.spec.keep_bias:
            dropped.add(f"{base}.bias")
        layers[base] = {"k": k, "kernel_shape": list(w.shape), "exact_zero_weights": zeros}
    for name, value in params.items():
        if name not in dropped:
            out[name] = np.asarray(value)
    return out, layers


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)


def write_packed(path: str, params: dict, config, layers: dict) -> int:
    """Writes the packed file (uncompressed npz) of :func:`pack_params`'s (params, layers)
    with the resolved ``config``; returns its size in bytes."""
    meta = {"format": FORMAT, "layout": LAYOUT, "method": config.quant.method,
            "packed_layers": layers}
    bad = [n for n in params if n.startswith("__")]
    if bad:
        raise ValueError(f"parameter names may not start with '__': {bad}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cfg = json.loads(config.to_json_best_effort())
    np.savez(path, **params, **{CONFIG_KEY: _json_bytes(cfg), META_KEY: _json_bytes(meta)})
    return os.path.getsize(path)


def read_packed(path: str) -> tuple[dict, dict, dict]:
    """(params, stored config as a dict, meta) of a packed file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no packed export at {path!r}; write one with --mode export")
    with np.load(path, allow_pickle=False) as z:
        if META_KEY not in z.files or CONFIG_KEY not in z.files:
            raise ValueError(f"{path!r} is not a bidm_jax packed export (no {META_KEY} entry)")
        meta = json.loads(z[META_KEY].tobytes().decode())
        config = json.loads(z[CONFIG_KEY].tobytes().decode())
        params = {n: z[n] for n in z.files if not n.startswith("__")}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}; this code reads {FORMAT}")
    return params, config, meta


def npz_bytes(arrays: dict, directory: str | None = None) -> int:
    """Size on disk of ``np.savez(arrays)`` (written to a temporary file, then removed)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, "x.npz")
        np.savez(path, **arrays)
        return os.path.getsize(path)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _nbytes(arrays: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def byte_report(packed: dict, layers: dict, packed_file_bytes: int, student: dict,
                teacher_shapes: dict, directory: str | None = None) -> dict:
    """The byte and tensor counts of export.json (see docs/export.md)."""
    bits = {n for n in packed if n.endswith(".kernel_bits")}
    fp = {n: v for n, v in packed.items() if n not in bits}
    teacher_zeros = {n: np.zeros(s.shape, np.float32) for n, s in teacher_shapes.items()}
    teacher_npz = npz_bytes(teacher_zeros, directory)
    student_f32 = {n: np.asarray(v, np.float32) for n, v in student.items()}
    student_npz = npz_bytes(student_f32, directory)
    return {
        "packed_file_bytes": packed_file_bytes,
        "teacher_fp32_params_bytes": _nbytes(teacher_zeros),
        "teacher_fp32_npz_bytes": teacher_npz,
        "student_fp32_params_bytes": _nbytes(student_f32),
        "student_fp32_npz_bytes": student_npz,
        "ratio_teacher_fp32_npz_over_packed": teacher_npz / packed_file_bytes,
        "ratio_student_fp32_npz_over_packed": student_npz / packed_file_bytes,
        "packed_tensors": len(bits),
        "packed_weights": int(sum(math.prod(v["kernel_shape"]) for v in layers.values())),
        "packed_bytes": _nbytes({n: packed[n] for n in bits}),
        "fp_tensors": len(fp),
        "fp_params": int(sum(np.size(v) for v in fp.values())),
        "fp_bytes": _nbytes(fp),
        "dropped_tensors": len(set(student) - set(packed)),
        "exact_zero_weights": int(sum(v["exact_zero_weights"] for v in layers.values())),
    }


def export_student(config, workdir: str) -> dict:
    """``--mode export``: writes ``{workdir}/export/packed.npz`` and ``export.json``; returns
    the report (byte counts, tensor counts, paths)."""
    if config.quant.method == "fp":
        raise ValueError("quant.method='fp': an FP model has no binary layers to pack; export "
                         "a binary student (--config.quant.method=bidm, xnor, ...)")
    config = resolve_distill_config(config)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no student checkpoint under {ckpt_dir}; distil one first "
                                "(--mode distill)")
    fm, _, _ = student_model(config)
    params = checkpoint.load_params(ckpt_dir, use_ema=config.sample.use_ema)
    check_shapes(fm.shapes(), params, f"student checkpoint {ckpt_dir}")
    params = {n: np.asarray(v) for n, v in params.items()}
    packed, layers = pack_params(fm, params)
    disk_fm, _, _ = student_model(config, packed=DISK)
    check_shapes(disk_fm.shapes(), packed, "packed parameters")
    out_dir = os.path.join(workdir, "export")
    path = os.path.join(out_dir, "packed.npz")
    report = {"format": FORMAT, "method": config.quant.method, "path": path,
              "ema": bool(config.sample.use_ema), "step": _latest_step(ckpt_dir)}
    if jax.process_index() == 0:
        size = write_packed(path, packed, config, layers)
        report.update(byte_report(packed, layers, size, params,
                                  teacher_functional(config).shapes(), out_dir))
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


def _latest_step(ckpt_dir: str) -> int:
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir!r} holds no checkpoint steps")
    return max(steps)


def resolve_packed_path(config, workdir: str) -> str:
    """``sample.packed``: 'auto' = ``{workdir}/export/packed.npz``, else the path given."""
    p = config.sample.packed
    return os.path.join(workdir, "export", "packed.npz") if p == "auto" else p


# Settings a packed file must share with the sampling config (the compute dtype may differ).
_MUST_MATCH = {"model": None, "quant": None,
               "distill": ("tbs", "tbs_topology", "tbs_last_n"),
               "diffusion": ("num_timesteps",)}


def _check_compatible(config, stored: dict, path: str) -> None:
    diffs = []
    for section, fields in _MUST_MATCH.items():
        want = json.loads(config[section].to_json_best_effort())
        have = stored.get(section, {})
        for f in fields or sorted(set(want) | set(have)):
            if (section, f) == ("model", "dtype"):
                continue
            if want.get(f) != have.get(f):
                diffs.append(f"{section}.{f}: file {have.get(f)!r}, config {want.get(f)!r}")
    if diffs:
        raise ValueError(f"packed export {path} was made with other settings than this config; "
                         "sample with the config it was exported with:\n  " + "\n  ".join(diffs))


def packed_sampling_model(config, path: str):
    """(Functional, model_fn, carry_init, params) of the packed student in ``path``, executed
    per ``export.kernel`` (words repacked to that kernel's layout)."""
    params, stored, meta = read_packed(path)
    config = resolve_distill_config(config)
    if config.quant.method == "fp":
        raise ValueError("quant.method='fp' cannot sample a packed export; use the student's "
                         "config")
    _check_compatible(config, stored, path)
    opts = packed_options(config)
    fm, model_fn, carry_init = student_model(config, packed=opts)
    for base, info in meta["packed_layers"].items():
        name, k = f"{base}.kernel_bits", int(info["k"])
        if name in params:
            params[name] = regroup_words_host(params[name], k, 1, opts.group_words(k))
    check_shapes(fm.shapes(), params, f"packed export {path}")
    return fm, model_fn, carry_init, params
