"""Process faults through the command line (docs/reliability.md): SIGKILL at random points of
a training run, resumed to the end, bit for bit the uninterrupted run; a kill in the middle
of a checkpoint write; a second run on a busy workdir; a full disk; a multi-process run
whose peer dies. One uninterrupted run (in this process) is the reference of them all.

    python -m pytest tests/test_faults.py --kills 10      # a longer local kill test
    python -m pytest tests/test_faults.py --kill-seed 7   # repeat the kill points of a run
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bidm_jax.main import cli
from bidm_jax.training import checkpoint
from tests.conftest import ROOT
from tests.fault_helpers import digest, error_lines, finished_steps, free_port, train_args

WORKER = os.path.join(ROOT, "tests", "fault_worker.py")
STEP = re.compile(r"\bstep (\d+)/\d+")
PARTIAL = checkpoint.TMP_SUFFIX


def env(**extra):
    """This process's environment (8 fake CPU devices, LLVM -O0) and its compilation cache,
    so that a child reuses the programs compiled here."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}


def start(args, program=("-m",), **kw):
    return subprocess.Popen([sys.executable, *program, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=kw.pop("env", None) or env(), **kw)


def wait_for_step(proc, step: int, timeout: float = 300) -> list[str]:
    """Reads ``proc``'s log until it has logged ``step`` (or later); returns the lines."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        m = STEP.search(line)
        if m and int(m.group(1)) >= step:
            return lines
        assert time.time() < deadline, "".join(lines[-30:])
    raise AssertionError(f"exited ({proc.wait()}) before step {step}:\n" + "".join(lines[-30:]))


def finish(proc, timeout: float = 300) -> str:
    return proc.communicate(timeout=timeout)[0]


def metrics(workdir) -> dict:
    with open(os.path.join(workdir, "logs", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows}


def state(workdir, step: int) -> dict:
    d = os.path.join(workdir, "checkpoints")
    return {"params": checkpoint.load_params(d, use_ema=False, step=step),
            "ema": checkpoint.load_params(d, use_ema=True, step=step)}


def assert_same_state(workdir, reference, step: int, note: str = "") -> None:
    got, want = state(workdir, step), state(reference, step)
    for tree in ("params", "ema"):
        assert set(got[tree]) == set(want[tree])
        for k in want[tree]:
            np.testing.assert_array_equal(np.asarray(got[tree][k]), np.asarray(want[tree][k]),
                                          err_msg=f"{tree} {k} at step {step} {note}")


def assert_same_run(workdir, reference, steps: int, note: str = "") -> None:
    """Loss and gradient norm of every step, the final parameters and EMA, and the final
    samples equal the reference run's exactly."""
    assert metrics(workdir) == metrics(reference), note
    assert_same_state(workdir, reference, steps, note)
    name = os.path.join("samples", "samples_train.npz")
    np.testing.assert_array_equal(np.load(os.path.join(workdir, name))["arr_0"],
                                  np.load(os.path.join(reference, name))["arr_0"])


@pytest.fixture(scope="module")
def kills(request):
    return max(1, request.config.getoption("--kills"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, kills):
    """The uninterrupted run: (workdir, steps); enough steps for the kills to fall apart."""
    # Each kill lands at most 3 steps after the last checkpoint and that run may complete
    # one more: 4 steps per kill keep every kill point before the end.
    steps = 4 * kills + 4
    work = tmp_path_factory.mktemp("reference")
    assert cli(train_args(work, steps)) == 0
    assert finished_steps(work) == sorted({*range(2, steps + 1, 2), steps})
    return str(work), steps


def test_sigkill_at_random_points_resumes_bit_exactly(reference, kills, request, tmp_path):
    """SIGKILL a few steps after the last checkpoint (in a step, a log write, a checkpoint
    write: wherever the kill lands), resume, again; the last run goes to the end. Every
    loss, the final parameters and samples equal the uninterrupted run's."""
    ref, steps = reference
    seed = request.config.getoption("--kill-seed")
    seed = random.randrange(2 ** 31) if seed is None else seed
    rng = random.Random(seed)
    work, done = str(tmp_path / "run"), []
    for _ in range(kills):
        resume = (finished_steps(work) or [0])[-1]
        target = min(resume + rng.randint(1, 3), steps - 1)
        proc = start(train_args(work, steps))
        wait_for_step(proc, target)
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        assert proc.returncode == -signal.SIGKILL
        done.append((target, (finished_steps(work) or [0])[-1]))
    note = f"--kill-seed {seed}: (kill after step, resumed from) {done}"
    assert cli(train_args(work, steps)) == 0, note  # the last resume: no kill, no process
    assert len(done) == kills and not [n for n in os.listdir(os.path.join(work, "checkpoints"))
                                       if PARTIAL in n]
    assert_same_run(work, ref, steps, note)


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path):
    """Killed while checkpoint 4 is half written: 2 is complete and intact, 4 does not
    exist (only its temporary directory); the resumed run starts from 2, removes the partial
    directory, leaves 2 as it was and ends bit for bit like the reference."""
    ref, steps = reference
    work = str(tmp_path / "run")
    proc = start([WORKER, *train_args(work, steps)[1:]], program=(),
                 env=env(BIDM_JAX_KILL_IN_SAVE="4"))
    out = finish(proc)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    names = os.listdir(os.path.join(work, "checkpoints"))
    assert finished_steps(work) == [2] and any(n.startswith("4" + PARTIAL) for n in names)
    assert_same_state(work, ref, 2)
    kept = digest(os.path.join(work, "checkpoints", "2"))
    assert cli(train_args(work, steps)) == 0
    assert not [n for n in os.listdir(os.path.join(work, "checkpoints")) if PARTIAL in n]
    assert digest(os.path.join(work, "checkpoints", "2")) == kept
    assert_same_run(work, ref, steps)


def rewind(reference, workdir, step: int) -> None:
    """``workdir`` = the reference run as it was at checkpoint ``step``: resuming it runs the
    reference's last steps with the programs already compiled (nothing new to compile)."""
    shutil.copytree(reference, workdir)
    for s in finished_steps(workdir):
        if s > step:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(s)))


def test_second_run_on_a_busy_workdir_is_refused(reference, tmp_path, capsys):
    """While a run trains, a second one on its workdir stops at once with exit code 2 and
    one line naming the holder, and changes nothing: the first ends like the reference."""
    ref, steps = reference
    work = str(tmp_path / "run")
    rewind(ref, work, steps - 9)
    first = start(train_args(work, steps))
    wait_for_step(first, steps - 8)
    capsys.readouterr()
    assert cli(train_args(work, steps)) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"is in use by another run (pid {first.pid} on " in lines[0]
    assert "--mode train" in lines[0]
    out = finish(first)
    assert first.returncode == 0 and not error_lines(out), out[-3000:]
    assert_same_run(work, ref, steps)


def test_full_disk_is_one_error_and_keeps_the_last_checkpoint(reference, tmp_path):
    """A write limit below the size of a checkpoint's array data (what a full disk does to
    the writer): the run stops at its save with exit code 4 and one line naming the
    checkpoint; the checkpoints already there are untouched and no partial directory is
    left."""
    ref, steps = reference
    work = str(tmp_path / "run")
    rewind(ref, work, steps - 1)
    kept = finished_steps(work)[-1]
    before = digest(os.path.join(work, "checkpoints"))
    # Below a checkpoint's array data (>= 400 kB here), above everything else the run writes
    # (metadata, logs, config: < 40 kB). The child sets it itself (a fork of this
    # multithreaded process could deadlock); it reads compiled programs from the cache but
    # writes none (an entry could be over the limit).
    limit = 100_000
    limited = (f"import resource, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, "
               f"({limit}, {limit})); runpy.run_module('bidm_jax.main', run_name='__main__')")
    proc = start(["-c", limited, "--workdir", work, "--mode", "train"], program=(),
                 env=env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1e9"))
    out = finish(proc)
    assert proc.returncode == 4, out[-3000:]
    lines = error_lines(out)
    assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
    assert (f"could not write checkpoint {os.path.join(work, 'checkpoints')}/{steps}: "
            "File too large" in lines[0]), lines[0]
    assert f"the previous checkpoint (step {kept}) is kept" in lines[0]
    assert digest(os.path.join(work, "checkpoints")) == before  # no partial directory left


def test_a_dead_peer_stops_a_multi_process_run(tmp_path):
    """Two processes train together; one is killed: the other stops within seconds (exit
    code 5, one line saying a peer is gone) instead of waiting in a collective."""
    port = free_port()
    work = str(tmp_path / "run")
    one_device = env(XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                               "--xla_backend_optimization_level=0")
    args = train_args(work, 500, "--config.mesh.data=-1", "--config.ckpt.save_every=1000",
                      f"--config.mesh.coordinator_address=127.0.0.1:{port}",
                      "--config.mesh.num_processes=2", "--config.mesh.init_timeout_s=120",
                      "--config.mesh.heartbeat_timeout_s=10")
    procs = [start([*args, f"--config.mesh.process_id={i}"], env=one_device) for i in (0, 1)]
    try:
        wait_for_step(procs[0], 2)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        out = finish(procs[0], timeout=120)
        assert time.time() - t0 < 60
        assert procs[0].returncode == 5, out[-3000:]
        lines = error_lines(out)
        assert len(lines) == 1 and "another process died or was killed" in lines[0], lines
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
