"""The workdir of a run: created and checked before any long work, and held by one run at a
time through a lock file.

``{workdir}/run.lock`` holds the holder's pid, host and start time (JSON). Another run on the
same workdir stops at once with a message naming the holder; a lock left by a process that no
longer exists on this host (a crash, a kill) is stale and taken over with a warning. Only the
first process of a multi-process run takes the lock (they share the workdir).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from absl import logging

LOCK_NAME = "run.lock"
_HELD: set[str] = set()  # lock files this process holds now


def prepare(workdir: str) -> None:
    """Creates ``workdir`` and checks that it is a writable directory; ValueError otherwise
    (before any data is loaded or program compiled). Object-store URLs (``gs://...``) are
    refused: every reader and writer here uses local file calls, which would silently create
    a local folder named ``gs:`` on each host; mount the bucket instead (docs/tpu.md)."""
    if "://" in workdir:
        raise ValueError(f"--workdir {workdir!r} is a URL; the workdir must be a path every "
                         "host sees: mount the bucket (e.g. gcsfuse BUCKET /mnt/gcs/BUCKET, as "
                         "launch/tpu_pod.sh does) and pass the mounted path (docs/tpu.md)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --workdir {workdir!r}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir!r} is not writable")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def lock(workdir: str, mode: str, primary: bool = True):
    """Holds ``{workdir}/run.lock`` for the block (released on exit, errors included).
    ``primary``: only this process takes the lock (the first process of a multi-process run).
    Raises ValueError when a live run holds it."""
    if not primary:
        yield
        return
    path = os.path.join(workdir, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            held = _holder(path)
            same_host = held.get("host") == me["host"]
            pid = held.get("pid")
            # A restarted container keeps its host name and often its pid: a lock naming this
            # process that it does not hold was left by an earlier life of the container.
            earlier_life = pid == me["pid"] and os.path.abspath(path) not in _HELD
            if same_host and isinstance(pid, int) and (earlier_life or not _alive(pid)):
                logging.warning("removing the stale lock of pid %s (no longer running) in %s",
                                held.get("pid"), workdir)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise ValueError(
                f"--workdir {workdir!r} is in use by another run (pid {held.get('pid', '?')} "
                f"on {held.get('host', '?')}, --mode {held.get('mode', '?')}, since "
                f"{held.get('since', '?')}); wait for it, use another workdir, or delete "
                f"{path} if that run is gone") from None
        except PermissionError:
            raise ValueError(f"--workdir {workdir!r} is not writable") from None
    else:
        raise ValueError(f"could not take the lock {path}")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    _HELD.add(os.path.abspath(path))
    try:
        yield
    finally:
        _HELD.discard(os.path.abspath(path))
        with contextlib.suppress(FileNotFoundError):
            if _holder(path).get("pid") == me["pid"]:
                os.remove(path)
