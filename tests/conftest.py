"""Test set-up: 8 fake CPU devices (must be set before jax initialises its backends) and a
tiny config shared by the end-to-end tests."""
import os
import sys

# LLVM -O0: XLA's CPU compile of the UNet's train step drops from ~18 s to ~6 s; the HLO
# (and so what is tested) is unchanged.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tempfile  # noqa: E402

from tests.tiny import tiny_config  # noqa: E402,F401  (re-exported: the tests import it here)

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs (the same train step built by several loops, resumed runs, the command
# line's train-then-sample runs, the fault tests' killed and resumed runs) compile once per
# test run instead of once per jit object and process: one persistent cache shared by the
# xdist workers and, through the environment, by every subprocess a test starts. (A partly
# written entry read by another process is a warning and a recompile, not an error.)
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
_CACHE = os.path.join(tempfile.gettempdir(), f"bidm_jax_xla_{_RUN}")
os.makedirs(_CACHE, exist_ok=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_addoption(parser):
    # The kill-and-resume test (tests/test_faults.py, docs/reliability.md): 3 random kill
    # points in CI; a longer local run with e.g. `pytest tests/test_faults.py --kills 10`.
    parser.addoption("--kills", type=int, default=3,
                     help="SIGKILLs of the kill-and-resume fault test (default 3)")
    parser.addoption("--notebooks", default="default",
                     help="notebooks tests/test_notebooks.py executes: default (01, 03), all, "
                          "or a comma list of names")
    parser.addoption("--kill-seed", type=int, default=None,
                     help="seed of the kill points (default: random, printed on failure)")


def quant_config(method: str = "bidm", **overrides):
    """A ``quant`` section for ``method`` with the DDIM family's layer patterns (what
    ``configlib.resolve_config`` fills in), for tests that build layers directly."""
    from bidm_jax.models.ddim_family import BINARY_LAYERS, FP_LAYERS
    from bidm_jax.quant import get_quant_config

    c = get_quant_config()
    c.method = method
    c.fp_layers, c.binary_layers = FP_LAYERS, BINARY_LAYERS
    for key, value in overrides.items():
        c[key] = value
    return c


def resolved(config, mode: str = "distill"):
    from bidm_jax.configlib import resolve_config

    return resolve_config(config, mode)


@pytest.fixture
def tiny():
    return tiny_config
