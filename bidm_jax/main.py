"""Command-line entry point.

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher \
        --mode train [--config.train.lr=1e-4 ...]

Modes: train (FP teacher), distill (binary student), export (packed 1-bit student), sample,
eval, summary, ref_stats, train_proxy, quickstart.
"""
from __future__ import annotations

import ast
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bidm_jax import workdir as workdir_lib
from bidm_jax.errors import TrainingDiverged
from bidm_jax.modes import MODES  # a plain table: importing it loads nothing heavy

config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", None, list(MODES), "What to run (default: the config's `mode`, else train).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def run(config, workdir: str, mode: str):
    """Validates and resolves ``config`` once (``configlib.resolve_config``: the config every
    part of the run sees and logs), then dispatches one mode (``bidm_jax.modes``)."""
    from bidm_jax.configlib import resolve_config

    config = resolve_config(config, mode)
    from bidm_jax import modes, parallel

    parallel.maybe_initialize_distributed(config.mesh)  # before any device use
    workdir_lib.prepare(workdir)
    import jax

    with workdir_lib.lock(workdir, mode, primary=jax.process_index() == 0):
        return modes.run(mode, config, workdir)


def last_override_wins(config, argv: list[str]) -> list[str]:
    """ml_collections appends every occurrence of a tuple override (``--config.model.ch_mult=
    (1,2) --config.model.ch_mult=1,2`` gives (1, 2, 1, 2)); here the last ``--config.F=V``
    of a field given more than once replaces the value, as for every other field. Returns
    the fields it reset."""
    given: dict[str, list[str]] = {}
    for arg in argv:
        if arg.startswith("--config.") and "=" in arg:
            field, value = arg[len("--config."):].split("=", 1)
            given.setdefault(field, []).append(value)
    reset = []
    for field, values in given.items():
        *parents, leaf = field.split(".")
        node = config
        for p in parents:
            node = node[p]
        if len(values) < 2 or not isinstance(node[leaf], tuple):
            continue
        try:
            value = ast.literal_eval(values[-1])
        except (ValueError, SyntaxError):
            value = tuple(v.strip() for v in values[-1].strip("()").split(",") if v.strip())
        node[leaf] = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        reset.append(field)
    return reset


class _QuietLibraries:
    """Drops INFO chatter of checkpointing internals so the progress line stays readable."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "orbax" not in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    for field in last_override_wins(config, sys.argv[1:]):
        logging.warning("--config.%s was given more than once: the last value is used", field)
    mode = FLAGS.mode or config.mode
    if mode not in MODES:
        raise app.UsageError(f"mode {mode!r} is invalid; valid choices: {', '.join(MODES)}")
    try:
        result = run(config, FLAGS.workdir, mode)
    except (ValueError, FileNotFoundError) as e:
        # Bad config values and missing inputs are user errors: a clear message, no traceback.
        logging.error("%s", e)
        print(f"bidm_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        logging.error("%s", e)
        print(f"bidm_jax: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if isinstance(result, dict):
        logging.info("result: %s", json.dumps(result, default=str, sort_keys=True))


def entry():
    app.run(main)


if __name__ == "__main__":
    entry()
