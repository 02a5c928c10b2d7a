"""Images/s of packed W1A1 sampling against the FP bf16 teacher and the fake-quant student.

    python -m benchmarks.packed_sampling --out $OUT/packed.json           # 1 GPU, full width
    python -m benchmarks.packed_sampling --tiny --out /tmp/packed.json     # CPU plumbing check

Model: the full-width DDIM CIFAR-10 UNet of ``configs/cifar10_ddim.py`` (BiDM student with
its TBS carry; the teacher is the same UNet in FP). Weights are random (a random FP UNet, the
student built from it with ``bidm_jax.build.student``, the packed student exported from that): the
time of a sampling step does not depend on the values. Every variant samples the same batch
of x_T with the same DDIM sampler (``make_sampler``, one jitted ``lax.scan`` over the steps).

Timing: each variant's sampler over ``--timed-steps`` DDIM steps is compiled and run once
(warm-up), then timed ``--repeats`` times (``block_until_ready``); the median per step gives
images/s for ``--steps``-step sampling (= batch / (100 · median step time) for 100 steps).
The DDIM step is the same program at every t, so a shorter scan keeps compile and run time
inside the budget without changing the per-step cost.

Variants (``--variants``):

* ``teacher_bf16`` / ``teacher_fp32``: the FP UNet, compute dtype bf16 / fp32 (XLA default
  precision: TF32 convs on GPUs);
* ``fakequant_fp32`` / ``fakequant_bf16``: the BiDM student as trained (FP kernels, sign in
  the forward pass, float convs);
* ``packed_xla_{fp32,bf16}``: the packed student, int8 activations × int8 ±1 weights unpacked
  from the 1-bit words in the program (cuDNN int8 conv, exact integer sums);
* ``packed_pallas_{fp32,bf16}``: the packed student through the ``packed_matmul`` Pallas
  kernel (weights stay 1-bit in HBM; im2col of int8 activations).

fp32/bf16 of a student = the compute dtype of everything around the binary core (FP layers,
norms, K map, shortcut). Also reported: bytes on disk of the FP32 teacher as an npz and of
the packed file (both uncompressed ``np.savez``), and agreement of the packed students' first
ε̂ with the fp32 fake-quant student's, both computed in full fp32 (``precision=highest``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = ("teacher_bf16", "teacher_fp32", "fakequant_fp32", "fakequant_bf16",
            "packed_xla_fp32", "packed_xla_bf16", "packed_pallas_fp32", "packed_pallas_bf16")
# --tiny: one of each kind (Pallas interpret mode compiles slowly on a CPU).
TINY = ("teacher_bf16", "fakequant_fp32", "packed_xla_fp32", "packed_pallas_fp32")


def get_config(tiny: bool, path: str = ""):
    from bidm_jax.configlib import resolve_config, sibling

    path = path or os.path.join(ROOT, "configs", "cifar10_ddim.py")
    c = sibling(os.path.abspath(path), os.path.splitext(os.path.basename(path))[0]).get_config()
    c.mesh.data = 1
    latent = c.model.name == "ldm_unet"
    if latent:  # random first-stage weights: decoding time does not depend on them
        c.first_stage.random_init, c.first_stage.path, c.first_stage.latents = True, "", ""
    if tiny:
        c.model.resolution = 8
        c.model.ch, c.model.ch_mult, c.model.num_res_blocks = 32, (1, 2), 1
        c.model.attn_resolutions = (4,)
        if latent:
            c.first_stage.ch, c.first_stage.ch_mult = 32, (1, 2)
            c.data.image_size = 16
        else:
            c.data.dataset, c.data.image_size = "digits", 8
    return resolve_config(c, "sample")


def build(config, args, packed: bool = True):
    """Random teacher params, fake-quant student params (kernels from the teacher) and the
    path of that student's packed file; and the byte report of the export (``packed``=False:
    no export, path and report None)."""
    import numpy as np

    from bidm_jax import build as builder
    from bidm_jax import export

    teacher = builder.fp_model(config)
    # The student's kernels / biases / norms are the teacher's (the student build copies them).
    fm = builder.student(config, teacher.params).fm
    student = {n: np.asarray(v) for n, v in {**fm.params, **fm.aux}.items()}
    if not packed:
        return (teacher.params, student, None), None
    packed, layers = export.pack_params(fm, student)
    directory = tempfile.mkdtemp(prefix="packed_bench_")
    path = os.path.join(directory, "packed.npz")
    size = export.write_packed(path, packed, config, layers)
    report = export.byte_report(packed, layers, size, student, teacher.shapes(), directory)
    return (teacher.params, student, path), report


def variant_model(name: str, config, teacher_params, student_params, packed_path):
    """(model_fn, carry_init, params, config) of one variant."""
    from bidm_jax import build as builder
    from bidm_jax import export

    c = config.copy_and_resolve_references()
    c.model.dtype = "bfloat16" if name.endswith("bf16") else "float32"
    if name.startswith("teacher"):
        c.quant.method, c.mode = "fp", "train"
        _, model_fn, _ = builder.sampling_model(c)
        return model_fn, None, teacher_params, c
    if name.startswith("fakequant"):
        _, model_fn, carry_init = builder.sampling_model(c)
        return model_fn, carry_init, student_params, c
    c.export.kernel = name.split("_")[1]
    _, model_fn, carry_init, params = export.packed_sampling_model(c, packed_path)
    return model_fn, carry_init, params, c


def time_variant(name, config, models, args, x_T, check):
    import jax

    from bidm_jax.diffusion.sampling import make_sampler

    model_fn, carry_init, params, c = variant_model(name, config, *models)
    c.diffusion.sample_steps = args.timed_steps
    params = jax.device_put(params)
    sample = jax.jit(make_sampler(model_fn, c, carry_init))
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    sample(params, x_T, rng).block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sample(params, x_T, rng).block_until_ready()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times) / args.timed_steps
    row = {"variant": name, "batch": int(x_T.shape[0]), "steps": args.steps,
           "timed_steps": args.timed_steps, "ms_per_step": step * 1e3,
           "ms_per_step_min": min(times) / args.timed_steps * 1e3,
           "images_per_s": x_T.shape[0] / (step * args.steps),
           "compile_and_first_run_s": first}
    if check is not None and not name.startswith("teacher"):
        row.update(check(name, model_fn, carry_init, params))
    return row


def time_decode(config, args, z):
    """The first stage's decoding of one batch of latents (random weights), timed as the
    sampler: median of ``--repeats`` after one compile-and-run. Images/s of whole sampling =
    batch / (steps · step time + decode time)."""
    import jax

    from bidm_jax import first_stage

    fs = first_stage.load(config)
    values = jax.device_put(fs.values)
    dec = jax.jit(fs.decode)
    t0 = time.perf_counter()
    dec(values, z).block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dec(values, z).block_until_ready()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {"variant": f"decode_{config.first_stage.kind}", "batch": int(z.shape[0]),
            "ms_per_batch": ms, "ms_per_step": ms, "images_per_s": z.shape[0] / ms * 1e3,
            "steps": args.steps, "compile_and_first_run_s": first}


def make_check(config, models, x_T):
    """Max |ε̂ − ε̂_ref| at the first DDIM step (t = 990) of a student variant against the
    fp32 fake-quant student, both evaluated with precision=highest (no TF32: the FP layers
    around the binary core must not differ), on 16 samples; and of each Pallas variant
    against the xla variant of the same dtype.

    With random weights, float summation-order differences of ~1e-7 flip the sign of the few
    binary activations that lie within that distance of 0; in an untrained network such
    flips cascade, so the fake-quant comparison is a weak check at full size (per-layer
    equality is what tests/test_export.py checks, also on a GPU)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = x_T[:16]
    t = jnp.full((x.shape[0],), 990, jnp.int32)

    def eps(model_fn, carry_init, params):
        carry = carry_init(x) if carry_init is not None else None
        with jax.default_matmul_precision("highest"):
            out = jax.jit(lambda p: model_fn(p, x, t, carry)[0])(params)
        return np.asarray(out, np.float32)

    ref = eps(*variant_model("fakequant_fp32", config, *models)[:3])
    seen = {}

    def check(name, model_fn, carry_init, params):
        got = seen[name] = eps(model_fn, carry_init, params)
        out = {"eps_max_abs_diff_vs_fp32_fakequant": float(np.max(np.abs(got - ref))),
               "eps_frac_within_1e-3_of_fp32_fakequant": float(np.mean(np.abs(got - ref) < 1e-3)),
               "eps_ref_max_abs": float(np.max(np.abs(ref)))}
        xla = name.replace("pallas", "xla")
        if xla != name and xla in seen:  # the two packed executions: both exact integer cores
            out["eps_max_abs_diff_vs_" + xla] = float(np.max(np.abs(got - seen[xla])))
        return out

    return check


def table(rows, bytes_report) -> str:
    head = "| variant | ms / step | images/s (%d steps) | first ε̂ max diff vs fp32 fake-quant |"
    lines = [head % rows[0]["steps"], "| --- | --- | --- | --- |"]
    for r in rows:
        d = r.get("eps_max_abs_diff_vs_fp32_fakequant")
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.2f} | {r['images_per_s']:.1f} | "
                     f"{'' if d is None else f'{d:.2e}'} |")
    b = bytes_report
    if b is None:
        return "\n".join(lines)
    lines += ["", "| file | bytes |", "| --- | --- |",
              f"| FP32 teacher npz | {b['teacher_fp32_npz_bytes']:,} |",
              f"| fake-quant student FP32 npz | {b['student_fp32_npz_bytes']:,} |",
              f"| packed student npz | {b['packed_file_bytes']:,} "
              f"({b['ratio_teacher_fp32_npz_over_packed']:.2f}x smaller than the teacher) |"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--tiny", action="store_true", help="8x8 ch-32 UNet, CPU-sized (plumbing)")
    p.add_argument("--config", default="",
                   help="model config (default configs/cifar10_ddim.py); an LDM config times "
                        "the latent sampler and, separately, the first stage's decoding")
    p.add_argument("--batch", type=int, default=None, help="default 256 (tiny: 8)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps images/s refers to")
    p.add_argument("--timed-steps", type=int, default=None, help="default 10 (tiny: 4)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (tiny: 2)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all; "
                        f"--tiny: {','.join(TINY)})")
    p.add_argument("--no-check", action="store_true", help="skip the ε̂ agreement check")
    p.add_argument("--deadline", type=float, default=0,
                   help="start no new variant after this many seconds (0 = none)")
    args = p.parse_args(argv)
    args.batch = args.batch or (8 if args.tiny else 256)
    args.timed_steps = args.timed_steps or (4 if args.tiny else 10)
    args.repeats = args.repeats or (2 if args.tiny else 5)
    names = [v for v in (args.variants or ",".join(TINY if args.tiny else VARIANTS)).split(",")
             if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; valid: {', '.join(VARIANTS)}")

    import jax

    start = time.perf_counter()
    config = get_config(args.tiny, args.config)
    models, bytes_report = build(config, args, packed=any(n.startswith("packed") for n in names))
    from bidm_jax import build as builder
    x_T = jax.random.normal(jax.random.key(0), (args.batch,) + builder.input_shape(config))
    check = None if args.no_check else make_check(config, models, x_T)
    rows = []
    for name in names:
        if args.deadline and time.perf_counter() - start > args.deadline:
            print(f"deadline: skipping {name}", flush=True)
            continue
        row = time_variant(name, config, models, args, x_T, check)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if config.first_stage.kind:
        row = time_decode(config, args, x_T)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
           "jax": jax.__version__, "tiny": args.tiny, "batch": args.batch,
           "steps": args.steps, "timed_steps": args.timed_steps, "repeats": args.repeats,
           "rows": rows, "bytes": bytes_report, "wall_s": time.perf_counter() - start}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(table(rows, bytes_report))
    print(f"device {out['device']}, wall {out['wall_s']:.0f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
