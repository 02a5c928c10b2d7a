"""One run per workdir: a live holder stops a second run at once with its pid and host, a
stale lock (its process is gone) is taken over, the lock is released on errors; a workdir
that is a file or not writable is a clear error before any work."""
import json
import os
import socket
import subprocess
import sys

import pytest

from bidm_jax import workdir as W
from bidm_jax.main import run
from tests.conftest import tiny_config


def _write_lock(path, pid):
    with open(os.path.join(path, W.LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "mode": "train",
                   "since": "2026-12-07 10:00:00"}, f)


def test_second_run_on_a_held_workdir_stops_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, holder.pid)
        (tmp_path / "keep.txt").write_text("x")
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {holder.pid} on "
                                             rf".*--mode train, since 2026-12-07 10:00:00\)"):
            run(tiny_config(), str(tmp_path), "summary")
        assert sorted(os.listdir(tmp_path)) == before
        assert json.load(open(tmp_path / W.LOCK_NAME))["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over_and_released(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, gone.pid)
    with W.lock(str(tmp_path), "distill"):
        held = json.load(open(tmp_path / W.LOCK_NAME))
        assert held["pid"] == os.getpid() and held["mode"] == "distill"
        with pytest.raises(ValueError, match="in use by another run"):
            with W.lock(str(tmp_path), "sample"):
                pass
    assert not (tmp_path / W.LOCK_NAME).exists()


def test_lock_of_an_earlier_life_of_this_pid_is_stale(tmp_path):
    # A restarted container (same host name, same pid) finds its own pid in the lock.
    _write_lock(tmp_path, os.getpid())
    with W.lock(str(tmp_path), "train"):
        assert json.load(open(tmp_path / W.LOCK_NAME))["mode"] == "train"
    assert not (tmp_path / W.LOCK_NAME).exists()


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with W.lock(str(tmp_path), "train"):
            raise RuntimeError("boom")
    assert not (tmp_path / W.LOCK_NAME).exists()
    with W.lock(str(tmp_path), "train", primary=False):   # non-primary processes take none
        assert not (tmp_path / W.LOCK_NAME).exists()


def test_bad_workdirs_are_clear_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        run(tiny_config(), str(f), "summary")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="not writable"):
            W.prepare(str(ro))
    # A bucket URL would silently become a local folder named "gs:" on every host.
    with pytest.raises(ValueError, match="is a URL.*mount the bucket"):
        W.prepare("gs://bucket/runs/x")
    assert not os.path.exists("gs:")
