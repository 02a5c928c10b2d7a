"""A small scheduler for experiment stages run as subprocesses on the GPUs of one machine.

Each :class:`Job` is a list of commands run one after the other with its output appended to
one log. A job either takes every device (data-parallel teacher training) or one device,
chosen by longest-processing-time-first over the jobs' cost estimates, so that independent
students train side by side, several per GPU when there are more jobs than GPUs. The driver
process never imports JAX, so it holds no device memory itself.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Job", "JobResult", "gpu_ids", "gpu_memory_gib", "assign", "run_jobs", "run_phase", "python_cmd", "say"]


@dataclasses.dataclass
class Job:
    """commands: argv lists run in order (the job fails at the first non-zero exit);
    all_devices: the job sees every device, else exactly one; cost: estimated seconds,
    used only to balance devices; done_file: when it exists the job is skipped (resume);
    env: extra environment variables."""

    name: str
    commands: list[list[str]]
    log: str
    cost: float = 1.0
    all_devices: bool = False
    done_file: str = ""
    env: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JobResult:
    name: str
    ok: bool
    seconds: float
    device: str
    skipped: bool = False
    error: str = ""


def gpu_memory_gib() -> float:
    """Memory of the smallest visible GPU in GiB (0 when unknown)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0.0
    visible = set(gpu_ids())
    sizes = [float(m) / 1024 for i, m in (line.split(",") for line in out.strip().splitlines())
             if i.strip() in visible]
    return min(sizes, default=0.0)


def gpu_ids() -> list[str]:
    """Visible NVIDIA GPUs (respecting CUDA_VISIBLE_DEVICES); [] without nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def assign(jobs: list[Job], devices: list[str]) -> dict[str, list[Job]]:
    """Longest-processing-time-first: each job (largest cost first) goes to the device with
    the least total cost so far. Returns device -> its jobs, in start order."""
    if not devices:
        raise ValueError("assign needs at least one device")
    load = {d: 0.0 for d in devices}
    plan: dict[str, list[Job]] = {d: [] for d in devices}
    for job in sorted(jobs, key=lambda j: -j.cost):
        d = min(devices, key=lambda x: (load[x], devices.index(x)))
        plan[d].append(job)
        load[d] += job.cost
    return plan


def _env(job: Job, device: str | None, gpus: bool, share: int) -> dict:
    env = {**os.environ, **job.env}
    if gpus and share > 1:  # a fair cap, so one process cannot starve the others
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / share:.3f}"
    # Several processes share a GPU: each allocates what it uses instead of 75% up front.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    if gpus and device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    if not gpus:
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


_print_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run_one(job: Job, device: str | None, gpus: bool, share: int = 1) -> JobResult:
    label = device if device is not None else "all"
    if job.done_file and os.path.exists(job.done_file):
        say(f"{job.name}: already done ({job.done_file}), skipped")
        return JobResult(job.name, True, 0.0, label, skipped=True)
    os.makedirs(os.path.dirname(os.path.abspath(job.log)), exist_ok=True)
    say(f"{job.name}: start on device {label} (log {job.log})")
    t0 = time.time()
    with open(job.log, "a") as log:
        for cmd in job.commands:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=_env(job, device, gpus, share)).returncode
            if rc != 0:
                dt = time.time() - t0
                say(f"{job.name}: FAILED (exit {rc}) after {dt:.0f} s; see {job.log}")
                return JobResult(job.name, False, dt, label, error=f"exit {rc}: {shlex.join(cmd)}")
    dt = time.time() - t0
    say(f"{job.name}: done in {dt:.0f} s")
    return JobResult(job.name, True, dt, label)


def run_jobs(jobs: list[Job], devices: list[str], per_device: int, gpus: bool,
             retry: bool = True) -> list[JobResult]:
    """Runs single-device jobs: LPT assignment, then up to ``per_device`` at once on each.

    With ``retry``, jobs that failed while sharing a device (typically out of device memory)
    run once more at the end, one at a time per device.
    """
    plan = assign(jobs, devices)
    for d, js in plan.items():
        say(f"device {d}: {', '.join(j.name for j in js) or '-'}")
    results: list[JobResult] = []

    def device_worker(d: str) -> list[JobResult]:
        with ThreadPoolExecutor(max_workers=per_device) as pool:
            share = min(per_device, len(plan[d]))
            return list(pool.map(lambda j: _run_one(j, d, gpus, share), plan[d]))

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        for rs in pool.map(device_worker, devices):
            results.extend(rs)
    failed = [r.name for r in results if not r.ok]
    if retry and failed and per_device > 1:
        say(f"retrying alone on a device: {', '.join(failed)}")
        again = run_jobs([j for j in jobs if j.name in failed], devices, 1, gpus, retry=False)
        results = [r for r in results if r.ok] + again
    return results


def run_phase(name: str, jobs: list[Job], devices: list[str], per_device: int, gpus: bool
              ) -> list[JobResult]:
    """One phase: all-device jobs one after another, then the single-device jobs."""
    say(f"phase {name}: {len(jobs)} job(s)")
    results = [_run_one(j, None, gpus) for j in jobs if j.all_devices]
    singles = [j for j in jobs if not j.all_devices]
    if singles:
        results += run_jobs(singles, devices, per_device, gpus)
    return results


def python_cmd(*args: str) -> list[str]:
    """argv running this interpreter (the one the driver runs under)."""
    return [sys.executable, *args]
