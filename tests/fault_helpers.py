"""Helpers shared by the fault tests (tests/test_faults.py, tests/test_bad_inputs.py)."""
import hashlib
import os

from tests.conftest import ROOT

CONFIG = os.path.join(ROOT, "tests", "fault_config.py")


def train_args(workdir, steps, *extra):
    """A command line (``argv[0]`` first) training the fault config for ``steps`` steps."""
    return ["bidm_jax.main", "--config", CONFIG, "--workdir", str(workdir), "--mode", "train",
            f"--config.train.num_steps={steps}", *extra]


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "bidm_jax: error:" in ln]


def digest(path) -> dict:
    """sha256 of every file under ``path`` by relative name."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def finished_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
