"""The packed inference file of a binary student (``--mode export``) and loading it.

    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm --mode export
    python -m bidm_jax.main --config configs/cifar10_ddim.py --workdir runs/bidm --mode sample \
        --config.sample.packed=auto [--config.export.kernel=pallas]

:func:`pack_params` replaces every binary layer's FP ``kernel`` by the sign planes of its weight
quantizer (``kernel_bits``: (P, words, O) int32, plain layout) and their scales
(``kernel_scale``: (P, O)), W_q = Σ_p scale_p·sign_p, with P = 1 for scale·sign(W) and 2 for
a two-basis binarizer; it drops what the binary forward never reads (the weight quantizer's
learnable values, now the scales, and the bias unless ``quant.binary_bias='keep'``) and keeps
every other tensor, auxiliary state included, in float32. The file:

* ``{workdir}/export/packed.npz``: an uncompressed ``np.savez`` of the tensors by dotted name,
  plus ``__config__`` (the resolved config as JSON) and ``__meta__`` (format, layout, the
  packed layers with their contraction length, planes, weight and activation bit widths), both
  as uint8 bytes. Multi-bit weights (LSQ, 8-bit first/last convs, EfficientDM) are
  ``kernel_q`` (int8 levels), ``kernel_step`` (O,) and, when asymmetric, ``kernel_zp`` (O,)
  instead of planes; Files of format ``bidm_jax.packed/1`` (one plane, (words, O) / (O,)) still
  load;
* ``{workdir}/export/export.json`` (the mode, :mod:`bidm_jax.modes.export`): real byte counts.

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
from flax import nnx

from bidm_jax.errors import CorruptFile
from bidm_jax.npzio import load_npz
from bidm_jax import build
from bidm_jax.kernels.packing import pack_signs_host, regroup_words_host
from bidm_jax.kernels.tpu_matmul import MAX_ACT_BITS, TPU_PATHS
from bidm_jax.models.functional import Functional, check_shapes, count, path_name
from bidm_jax.quant import variables
from bidm_jax.quant.layers import QConv, QDense
from bidm_jax.quant.packed import PackedOptions, weight_planes

FORMAT = "bidm_jax.packed/2"
READS = ("bidm_jax.packed/1", FORMAT)
CONFIG_KEY, META_KEY = "__config__", "__meta__"
# On disk the words use the plain layout (group_words = 1): ceil(K/32) words per output
# channel, no padding to a kernel's group. Loading repacks them for the chosen kernel.
DISK = PackedOptions(kernel="xla")
LAYOUT = ("kernel_bits (P, words, O): P sign planes, each int32 words along the contraction "
          "axis K = (dy, dx, c) of the (kh, kw, I, O) kernel reshaped to (K, O), element k in "
          "bit k % 32 of word k // 32 (LSB first), bit 1 = -1, bit 0 = +1; zero padding to "
          "whole words; kernel_scale (P, O); W_q = sum_p kernel_scale[p] * sign_p")


def packed_options(config) -> PackedOptions:
    """The execution the config asks for (``export.kernel``, ``export.pallas_backend``,
    ``export.tpu_operand``); a bad value is a ValueError listing the choices."""
    return PackedOptions(kernel=config.export.kernel, backend=config.export.pallas_backend,
                         tpu_operand=config.export.tpu_operand)


def check_tpu_path(opts: PackedOptions, layers: dict, path: str) -> None:
    """Refuses a TPU path that cannot hold some 1-bit layer's activations exactly (e.g. int4
    or popcount for 8-bit activations); ``layers`` is the meta's ``packed_layers``."""
    tpu_path = opts.tpu_path
    if tpu_path is None:
        return
    limit = MAX_ACT_BITS[tpu_path]
    # 1-bit-weight layers with integer activations (32 = FP activations: no integer core).
    bits_a = {base: int(info.get("bits_a") or 1) for base, info in layers.items()
              if int(info.get("bits_w", 1)) == 1 and int(info.get("planes", 1)) > 0}
    bad = sorted(base for base, b in bits_a.items() if limit < b < 32)
    if bad:
        bits = sorted({bits_a[b] for b in bad})
        fits = [p for p in TPU_PATHS if MAX_ACT_BITS[p] >= max(bits)]
        raise ValueError(f"export.tpu_operand={opts.tpu_operand!r} runs the TPU {tpu_path!r} "
                         f"path, exact for activations of at most {limit} bit(s), but {path} has "
                         f"{len(bad)} layers with {bits}-bit activations ({bad[0]}, ...); set "
                         f"export.tpu_operand to one of: {', '.join(fits)}")


def binary_layers(module: nnx.Module):
    """(dotted path, layer) of every binary QConv/QDense of ``module``."""
    for path, m in nnx.iter_modules(module):
        if isinstance(m, (QConv, QDense)) and m.spec.binary:
            yield path_name(path), m


def pack_params(fm: Functional, values: dict) -> tuple[dict, dict]:
    """Packed tensors (numpy, disk layout) of the fake-quant student ``fm`` with ``values``
    (parameters and auxiliary state), and per-layer facts {path: {"k", "kernel_shape",
    "planes", "bits_w", "bits_a", "exact_zero_weights"}}.

    Per 1-bit layer: ``kernel_bits`` (P, words, O) and ``kernel_scale`` (P, O), the planes of
    its weight quantizer's forward value, checked to rebuild it (:func:`weight_planes`); P is
    the number of bases in use (a two-basis binarizer after its stage switch stores one).
    Per multi-bit layer (LSQ weights; EfficientDM's asymmetric weights, at 1 bit too):
    ``kernel_q`` (int8 levels, the kernel's shape), ``kernel_step`` (O,) and, for a quantizer
    with a zero point, ``kernel_zp`` (O,): W_q = step·(kernel_q − kernel_zp); planes 0. A
    layer whose progressive-binarization switch is still off cannot be packed.
    """
    def quantized(v):  # every layer's W_q and its quantizer's inputs in one program
        return {base: (layer._quant_weight(),
                       variables.kwargs(layer, layer.spec.weight_quantizer, layer.spec, None))
                for base, layer in binary_layers(fm.module(v))}

    w_q = jax.device_get(jax.jit(quantized)(values))
    out, dropped, layers = {}, set(), {}
    for base, layer in binary_layers(fm.module(values)):
        spec, q = layer.spec, layer.spec.weight_quantizer
        if spec.gated and float(np.asarray(values[f"{base}.quant_on"])) == 0.0:
            raise ValueError(f"{base} is still full precision (progressive binarization has "
                             "not reached it): export a checkpoint after the first steps")
        w = np.asarray(values[f"{base}.kernel"], np.float32)
        k = math.prod(w.shape[:-1])
        if q.levels is not None:
            # Multi-bit (and asymmetric) weights: int8 levels of the quantizer's forward value,
            # a LoRA merged into W first (EfficientDM: W + B·A quantized once).
            levels = [np.asarray(a) for a in jax.device_get(q.levels(w, **w_q[base][1]))]
            out[f"{base}.kernel_q"] = levels[0].astype(np.int8)
            out[f"{base}.kernel_step"] = np.asarray(levels[1], np.float32)
            if q.zero_point:
                out[f"{base}.kernel_zp"] = np.asarray(levels[2], np.float32)
            planes, zeros = [], 0
        else:
            try:
                planes, zeros = weight_planes(q, w, w_q[base][0], w_q[base][1])
            except ValueError as e:
                raise ValueError(f"{base} ({spec.weight}): {e}") from None
            out[f"{base}.kernel_bits"] = np.stack([pack_signs_host(src.reshape(k, w.shape[-1]))
                                                   for src, _ in planes])
            out[f"{base}.kernel_scale"] = np.stack([scale for _, scale in planes])
        act_attrs = {v.attr for v in layer._act_quantizer(isinstance(layer, QDense)).variables}
        dropped |= {f"{base}.kernel"} | {f"{base}.{v.attr}" for v in q.variables
                                         if v.attr not in act_attrs}
        if spec.gated:
            dropped.add(f"{base}.quant_on")
        if not spec.keep_bias:
            dropped.add(f"{base}.bias")
        layers[base] = {"k": k, "kernel_shape": list(w.shape), "planes": len(planes),
                        "bits_w": q.precision, "bits_a": spec.bits_a,
                        "exact_zero_weights": zeros}
    for name, value in values.items():
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
    """(tensors, stored config as a dict, meta) of a packed file; a ``/1`` file's tensors are
    given the plane axis of ``/2``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no packed export at {path!r}; write one with --mode export")
    z = load_npz(path, "packed export")
    if META_KEY not in z or CONFIG_KEY not in z:
        raise ValueError(f"{path!r} is not a bidm_jax packed export (no {META_KEY} entry)")
    try:
        meta = json.loads(z[META_KEY].tobytes().decode())
        config = json.loads(z[CONFIG_KEY].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFile(f"{path} has a corrupt {META_KEY}/{CONFIG_KEY} entry: {e}") from None
    params = {n: v for n, v in z.items() if not n.startswith("__")}
    if meta.get("format") not in READS:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}; this code reads "
                         f"{', '.join(READS)}")
    if meta["format"] == "bidm_jax.packed/1":  # one plane without the plane axis
        for base, info in meta["packed_layers"].items():
            for n in (f"{base}.kernel_bits", f"{base}.kernel_scale"):
                if n in params:
                    params[n] = params[n][None]
            info.setdefault("planes", 1)
    return params, config, meta


def npz_bytes(arrays: dict, directory: str | None = None) -> int:
    """Size on disk of ``np.savez(arrays)`` (written to a temporary file, then removed)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, "x.npz")
        np.savez(path, **arrays)
        return os.path.getsize(path)


def _nbytes(arrays: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))


def byte_report(packed: dict, layers: dict, packed_file_bytes: int, student: dict,
                teacher_shapes: dict, directory: str | None = None) -> dict:
    """The byte and tensor counts of export.json (see docs/export.md)."""
    bits = {n for n in packed if n.endswith((".kernel_bits", ".kernel_q"))}
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
        "fp_params": count(fp),
        "fp_bytes": _nbytes(fp),
        "dropped_tensors": len(set(student) - set(packed)),
        "exact_zero_weights": int(sum(v["exact_zero_weights"] for v in layers.values())),
    }


def resolve_packed_path(config, workdir: str) -> str:
    """``sample.packed``: 'auto' = ``{workdir}/export/packed.npz``, else the path given."""
    p = config.sample.packed
    return os.path.join(workdir, "export", "packed.npz") if p == "auto" else p


# Settings a packed file must share with the sampling config (the compute dtype may differ;
# which layers are binary is checked on the layers themselves, not on the patterns).
_MUST_MATCH = {"model": None, "quant": None,
               "distill": ("tbs", "tbs_topology", "tbs_last_n"),
               "diffusion": ("num_timesteps",)}
_IGNORED = {("model", "dtype"), ("quant", "fp_layers"), ("quant", "binary_layers")}


def _check_compatible(config, stored: dict, path: str) -> None:
    diffs = []
    for section, fields in _MUST_MATCH.items():
        want = json.loads(config[section].to_json_best_effort())
        have = stored.get(section, {})
        for f in fields or sorted(set(want) | set(have)):
            if (section, f) not in _IGNORED and want.get(f) != have.get(f):
                diffs.append(f"{section}.{f}: file {have.get(f)!r}, config {want.get(f)!r}")
    if diffs:
        raise ValueError(f"packed export {path} was made with other settings than this config; "
                         "sample with the config it was exported with:\n  " + "\n  ".join(diffs))


def packed_sampling_model(config, path: str):
    """(Functional, model_fn, carry_init, values) of the packed student in ``path``, executed
    per ``export.kernel`` (words repacked to that kernel's layout). ``config`` is resolved."""
    params, stored, meta = read_packed(path)
    if not build.method(config).binary:
        raise ValueError(f"quant.method={config.quant.method!r} cannot sample a packed export; "
                         "use the student's config")
    _check_compatible(config, stored, path)
    opts = packed_options(config)
    check_tpu_path(opts, meta["packed_layers"], path)
    planes = {base: int(info["planes"]) for base, info in meta["packed_layers"].items()
              if int(info.get("bits_w", 1)) == 1}
    fm, model_fn, carry_init = build.sampling_model(config, packed=opts, packed_planes=planes)
    built = sorted(base for base, _ in binary_layers(fm.module(fm.params)))
    if built != sorted(meta["packed_layers"]):
        raise ValueError(f"packed export {path} holds binary layers "
                         f"{sorted(meta['packed_layers'])[:4]}... but this config builds "
                         f"{built[:4]}...: sample with the config it was exported with")
    for base, info in meta["packed_layers"].items():
        name, k = f"{base}.kernel_bits", int(info["k"])
        if name in params:
            params[name] = np.stack([regroup_words_host(plane, k, 1, opts.group_words(k))
                                     for plane in params[name]])
    aux = {n: v for n, v in params.items() if n in fm.aux}
    check_shapes(fm.shapes(), {n: v for n, v in params.items() if n not in aux},
                 f"packed export {path}")
    return fm, model_fn, carry_init, params
