"""Driver of the reduced-scale CIFAR-10 reproduction of BiDM's W1A1 and BinaryDM's W1A4 comparisons.

    launch/repro_cifar10_small.sh --data data/cifar10_jpeg_q75.npz      # the experiment
    launch/repro_cifar10_small.sh --tiny                                # CI-sized, CPU

Phases, each a set of plain ``python -m bidm_jax.main`` calls with
``configs/repro_cifar10_small.py`` (their command lines are in the per-job logs):

1. ``teacher``: the FP DDIM CIFAR-10 teacher (full width), data parallel over every GPU;
   samples ``num_samples`` images from the shared noise at the end.
2. ``students``: the proxy feature network (+ its reference statistics) and the twelve
   students (``STUDENTS`` of the config), one process each, spread over the GPUs
   (longest job first, several per GPU when there are more jobs than GPUs); each samples the
   same noise at the end.
3. ``eval``: proxy FID / sFID / IS / precision / recall of every model, one process.
4. ``report``: PSNR of each student against the teacher on the same noise,
   ``results.json``, ``README.md`` and ``samples.png`` in ``--results``.

Finished jobs are skipped when the driver is run again with the same ``--workdir`` (resume).
Without GPUs (or with ``--cpu``) every job runs on the CPU, ``--parallel`` at a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time

from bidm_jax.repro import jobs as J
from bidm_jax.repro import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "repro_cifar10_small.py")
PHASES = ("teacher", "students", "eval", "report")
# Relative cost of one distillation step, used only to balance students over GPUs: the
# method's ``step_ms`` (ms at batch 64 on one H100, TF32, benchmarks/distill.md) plus what a
# model adds beyond its method's defaults (XNOR + TBS 37.7 and XNOR + SPD 38.3 vs XNOR 29.9).
EXTRA_MS = {"tbs": 7.8, "spd": 8.4}
DEFAULT_STEP_MS = 45.0  # a method without a measured cost: assume BiDM's and then some


def step_ms(entry) -> float:
    """Planning cost of a MODELS entry (method, tbs, loss, ...)."""
    from bidm_jax.methods import get_method

    method = get_method(entry[0])
    defaults = dict(method.distill_defaults)
    ms = method.step_ms or DEFAULT_STEP_MS
    if entry[1] and not defaults.get("tbs"):
        ms += EXTRA_MS["tbs"]
    if entry[2] == "spd" and defaults.get("loss") != "spd":
        ms += EXTRA_MS["spd"]
    return ms


def _load_config_module():
    from bidm_jax.configlib import sibling

    if not os.path.exists(CONFIG):
        raise FileNotFoundError(f"{CONFIG} not found: run the driver from a checkout of the "
                                "project (the configs folder sits beside the package)")
    return sibling(CONFIG, "repro_cifar10_small")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="", help="CIFAR-10: the project's JPEG npz, the python "
                   "archive or its folder (required unless --tiny)")
    p.add_argument("--tiny", action="store_true", help="CI size: tiny UNet, a few steps, "
                   "1,797 scikit-learn digits as 32x32 'CIFAR' unless --data is given")
    p.add_argument("--workdir", default="", help="default runs/repro_cifar10_small[_tiny]")
    p.add_argument("--results", default="", help="default results/cifar10_small "
                   "(with --tiny: {workdir}/results)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if GPUs are visible")
    p.add_argument("--parallel", type=int, default=0, help="jobs at once per device "
                   "(default: all of a phase's jobs on GPUs; 2 on the CPU)")
    p.add_argument("--models", default="", help="comma list to restrict the students")
    p.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                   help="override one budget entry (smoke runs; recorded in the results), "
                   "e.g. --budget student_steps=200; keys: BUDGET in the config file")
    args = p.parse_args(argv)
    bad = set(args.phases.split(",")) - set(PHASES)
    if bad:
        p.error(f"unknown phases {sorted(bad)}; valid: {','.join(PHASES)}")
    if not args.tiny and not args.data:
        p.error("--data is required (CIFAR-10 npz, archive or folder); or use --tiny")
    args.workdir = args.workdir or ("runs/repro_cifar10_small" + ("_tiny" if args.tiny else ""))
    bad = [o for o in args.budget if "=" not in o or "," in o]
    if bad:
        p.error(f"--budget takes KEY=VALUE, got {bad}")
    args.options = ",".join((["tiny"] if args.tiny else []) + args.budget)
    args.results = args.results or (os.path.join(args.workdir, "results") if args.tiny
                                    else "results/cifar10_small")
    return args


def prepare_data(args) -> tuple[str, str]:
    """Decodes the dataset once into ``{workdir}/data`` so that the many job processes skip
    JPEG decoding. Returns (path, description)."""
    from bidm_jax.data.cifar10 import HOW_TO_GET, write_decoded_npz
    from bidm_jax.metrics.evaluate import dataset_description

    d = os.path.join(args.workdir, "data")
    os.makedirs(d, exist_ok=True)
    if args.tiny and not args.data:
        path = os.path.join(d, "digits_as_cifar32.npz")
        if not os.path.exists(path):
            write_digits_as_cifar(path)
        return path, "scikit-learn digits upsampled to 32x32 RGB (tiny mode, not CIFAR-10)"
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"no CIFAR-10 at --data {args.data!r}.\n{HOW_TO_GET}")
    desc = dataset_description(args.data)
    base = os.path.splitext(os.path.basename(args.data.rstrip("/")))[0]
    path = os.path.join(d, f"{base}_decoded.npz")
    if not os.path.exists(path):
        J.say(f"decoding {args.data} once into {path}")
        write_decoded_npz(args.data, path)
    return path, desc


def write_digits_as_cifar(path: str) -> None:
    """The embedded digits in the decoded CIFAR npz layout (1,500 train / 297 test)."""
    import numpy as np

    from bidm_jax.data.digits import load_digits_rgb

    images, labels = load_digits_rgb(32)
    np.savez(path, train_images=images[:1500], train_labels=labels[:1500],
             test_images=images[1500:], test_labels=labels[1500:])


class Plan:
    """Command lines and jobs of every phase for one workdir."""

    def __init__(self, args, data_path: str, students: list[str]):
        self.args, self.students = args, students
        self.w = os.path.abspath(args.workdir)
        self.size = "," + args.options if args.options else ""
        # Programs compiled by one job are reused by the others and by a resumed run.
        self.env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(self.w, "xla_cache")}
        if args.tiny:  # LLVM -O0: the CPU compiles dominate a tiny run; same programs
            self.env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                     " --xla_backend_optimization_level=0").strip()
        self.common = [f"--config.data.path={data_path}", "--config.data.source=npz",
                       "--config.data.dataset=cifar10",
                       f"--config.eval.proxy_path={self.w}/proxy/proxy_features.npz",
                       f"--config.eval.ref_path={self.w}/proxy/ref_train_proxy.npz"]

    def dir(self, name: str) -> str:
        return os.path.join(self.w, name)

    def main_cmd(self, model: str, mode: str, workdir: str, *extra: str) -> list[str]:
        return J.python_cmd("-m", "bidm_jax.main", f"--config={CONFIG}:{model}{self.size}",
                            f"--workdir={workdir}", f"--mode={mode}", *self.common, *extra)

    def log(self, name: str) -> str:
        return os.path.join(self.w, "logs", f"{name}.log")

    def teacher_job(self, budget) -> J.Job:
        return J.Job("teacher", [self.main_cmd("teacher", "train", self.dir("teacher"))],
                     self.log("teacher"), cost=budget["teacher_steps"], all_devices=True,
                     done_file=os.path.join(self.dir("teacher"), "final.json"), env=self.env)

    def student_jobs(self, budget) -> list[J.Job]:
        out = [J.Job("proxy", [self.main_cmd("teacher", "train_proxy", self.dir("proxy")),
                               self.main_cmd("teacher", "ref_stats", self.dir("proxy"))],
                     self.log("proxy"), cost=60.0, env=self.env,
                     done_file=os.path.join(self.dir("proxy"), "ref_train_proxy.npz"))]
        teacher_ckpt = os.path.join(self.dir("teacher"), "checkpoints")
        models = _load_config_module().MODELS
        for s in self.students:
            cost = step_ms(models[s]) * budget["student_steps"] / 1000.0 + 60.0
            out.append(J.Job(s, [self.main_cmd(s, "distill", self.dir(s),
                                               f"--config.distill.teacher={teacher_ckpt}")],
                             self.log(s), cost=cost, env=self.env,
                             done_file=os.path.join(self.dir(s), "final.json")))
        return out

    def eval_job(self) -> J.Job:
        models = ["teacher"] + self.students
        cmd = J.python_cmd("-m", "bidm_jax.repro.evaluate", f"--config={CONFIG}:teacher{self.size}",
                           f"--root={self.w}", f"--models={','.join(models)}", *self.common)
        return J.Job("eval", [cmd], self.log("eval"), env=self.env)


# Device memory one student process may need at its peak (compile-time autotuning and
# sampling included): concurrency per GPU is capped so that they fit.
STUDENT_GIB = 16.0


def default_per_device(n_jobs: int, n_devices: int, gpus: bool) -> int:
    """Every job of a phase at once where memory allows (GPUs); 2 at a time on the CPU."""
    if not gpus:
        return 2
    fit = int(J.gpu_memory_gib() // STUDENT_GIB) or 1
    return max(1, min(math.ceil(n_jobs / n_devices), fit))


def size_note(args) -> str:
    if args.tiny:
        return ("**Tiny mode** (CI smoke run): a few steps of everything; the numbers below "
                "mean nothing.")
    note = "Teacher trained here; proxy features; JPEG CIFAR-10."
    if args.budget:
        note += (f" **Budget overridden** ({', '.join(args.budget)}): a smoke run, not the "
                 "fixed experiment.")
    return note


def machine_description(gpus: list[str]) -> str:
    if gpus:
        try:
            import subprocess
            names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=60).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
            visible = [names[int(g)] for g in gpus if g.isdigit() and int(g) < len(names)]
            if visible:
                return f"{len(visible)}x {visible[0]}, {os.cpu_count()} CPU cores"
        except (OSError, ValueError):
            pass
        return f"{len(gpus)} GPU(s), {os.cpu_count()} CPU cores"
    return f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _version(pkg: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def budgets_of(module, options: str, students: list[str]) -> tuple[dict, dict]:
    """The shared budget (with the resolved student lr) and one budget dict per model."""
    from bidm_jax.configlib import resolve_config

    suffix = "," + options if options else ""
    b = module.budget("teacher" + suffix)
    cfg = resolve_config(module.get_config("bidm" + suffix), "distill")
    b["student_lr"] = cfg.train.lr
    per = {"teacher": {"steps": b["teacher_steps"], "batch": b["teacher_batch"],
                       "lr": b["teacher_lr"], "warmup": b["teacher_warmup"],
                       "ema": b["teacher_ema"]}}
    for s in students:
        per[s] = {"steps": b["student_steps"], "batch": b["student_batch"],
                  "lr": b["student_lr"], "warmup": 0, "ema": b["student_ema"]}
    return b, per


def write_results(args, plan: Plan, budget: dict, per_model: dict, info: dict,
                  job_seconds: dict) -> dict:
    models = ["teacher"] + plan.students
    files = {m: os.path.join(plan.dir(m), "samples",
                             f"samples_{'train' if m == 'teacher' else 'distill'}.npz")
             for m in models}
    entries = report.collect(plan.w, models, files, per_model, job_seconds)
    ev = report.load_json(os.path.join(plan.dir("teacher"), "eval", "metrics.json"))
    proxy = report.load_json(os.path.join(plan.dir("proxy"), "proxy_train.json"))
    tfinal = report.load_json(os.path.join(plan.dir("teacher"), "final.json"))
    info.update(feature_network=ev.get("feature_network", proxy.get("feature_network", "proxy")),
                reference=f"{ev.get('reference', {}).get('num_images', '?')} images",
                teacher_minutes=(tfinal.get("train_seconds") or 0) / 60.0)
    results = {"experiment": "cifar10_small", "run": info, "budget": budget,
               "models": entries, "summary": report.summary(entries),
               "proxy": {k: proxy.get(k) for k in ("test_accuracy", "steps", "train_seconds")}}
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    rows = [(m, report.load_samples(files[m])) for m in models]
    rows = [(m, x) for m, x in rows if x is not None]
    if rows:
        size = report.sample_sheet(os.path.join(args.results, "samples.png"), rows)
        J.say(f"samples.png: {size / 1024:.0f} KiB")
    report.write_readme(os.path.join(args.results, "README.md"), results)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    module = _load_config_module()
    size = "tiny" if args.tiny else "full"
    students = [s for s in (args.models.split(",") if args.models else module.STUDENTS) if s]
    unknown = [s for s in students if s not in module.MODELS]
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; valid: {', '.join(module.MODELS)}")
    gpus = [] if args.cpu else J.gpu_ids()
    devices = gpus or ["cpu"]
    phases = args.phases.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    data_path, data_desc = prepare_data(args)
    plan = Plan(args, os.path.abspath(data_path), students)
    budget, per_model = budgets_of(module, args.options, students)
    J.say(f"{size} run on {machine_description(gpus)}; workdir {plan.w}")
    results: list[J.JobResult] = []
    n_single = len(students) + 1
    per_device = args.parallel or default_per_device(n_single, len(devices), gpus)
    if "teacher" in phases:
        results += J.run_phase("teacher", [plan.teacher_job(budget)], devices, per_device, bool(gpus))
    if "students" in phases:
        if not os.path.exists(os.path.join(plan.dir("teacher"), "final.json")):
            raise SystemExit("the teacher has not finished; run the teacher phase first")
        results += J.run_phase("students", plan.student_jobs(budget), devices, per_device,
                               bool(gpus))
    if "eval" in phases:
        results += J.run_phase("eval", [plan.eval_job()], devices, 1, bool(gpus))
    times_path = os.path.join(plan.w, "job_seconds.json")
    times = report.load_json(times_path)
    times.update({r.name: r.seconds for r in results if not r.skipped})
    with open(times_path, "w") as f:
        json.dump(times, f, indent=1)
    failed = [r for r in results if not r.ok]
    if "report" in phases:
        cmd = "launch/repro_cifar10_small.sh " + shlex.join(sys.argv[1:] if argv is None else argv)
        info = {"size": size, "command": cmd.strip(), "machine": machine_description(gpus),
                "jax_version": _version("jax"), "date": datetime.date.today().isoformat(),
                "total_minutes": (time.time() - t_start) / 60.0, "data": data_desc,
                "num_devices": len(gpus) or 1, "sample_seed": 1234,
                "teacher_params": "35.7 M parameters" if size == "full" else "tiny width",
                "students_note": (f"{len(students)} students, one process each, "
                                  f"{per_device} at a time per {'GPU' if gpus else 'CPU'}"),
                "size_note": size_note(args),
                "workdir_name": os.path.basename(plan.w)}
        res = write_results(args, plan, budget, per_model, info, times)
        J.say(f"results in {args.results}: {json.dumps(res['summary'])}")
    if failed:
        J.say(f"failed jobs: {', '.join(r.name for r in failed)}")
        return 1
    return 0


def entry() -> int:
    try:
        return main()
    except (FileNotFoundError, ValueError) as e:  # bad input: a message, no traceback
        print(f"repro_cifar10_small: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(entry())
