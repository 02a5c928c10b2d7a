"""Command-line entry point.

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher \
        --mode train [--config.train.lr=1e-4 ...]

Modes: train (FP teacher), distill (binary student), export (packed 1-bit student), sample,
eval, summary, ref_stats, train_proxy, quickstart.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "distill", "export", "sample", "eval", "summary", "ref_stats", "train_proxy",
         "quickstart")

config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", None, MODES, "What to run (default: the config's `mode`, else train).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def run(config, workdir: str, mode: str):
    """Dispatches one mode; importing lazily keeps start-up (and --help) fast."""
    from bidm_jax.configlib import validate_config

    validate_config(config)
    from bidm_jax import parallel

    parallel.maybe_initialize_distributed(config.mesh)  # before any device use
    os.makedirs(workdir, exist_ok=True)
    if mode == "train":
        from bidm_jax.train import run_train
        return run_train(config, workdir)
    if mode == "distill":
        from bidm_jax.distill.run import run_distill
        return run_distill(config, workdir)
    if mode == "export":
        from bidm_jax.export import export_student
        return export_student(config, workdir)
    if mode == "sample":
        from bidm_jax.sample import run_sample
        return run_sample(config, workdir)
    if mode == "summary":
        from bidm_jax.summary import run_summary
        return run_summary(config, workdir)
    if mode == "quickstart":
        from bidm_jax.quickstart import run_quickstart
        return run_quickstart(config, workdir)
    if mode in ("eval", "ref_stats", "train_proxy"):
        from bidm_jax.metrics import evaluate
        return getattr(evaluate, f"run_{mode}")(config, workdir)
    raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")


class _QuietLibraries:
    """Drops INFO chatter of checkpointing internals so the progress line stays readable."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "orbax" not in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    mode = FLAGS.mode or config.get("mode", "train")
    if mode not in MODES:
        raise app.UsageError(f"mode {mode!r} is invalid; valid choices: {', '.join(MODES)}")
    try:
        result = run(config, FLAGS.workdir, mode)
    except (ValueError, FileNotFoundError) as e:
        # Bad config values and missing inputs are user errors: a clear message, no traceback.
        logging.error("%s", e)
        print(f"bidm_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    if isinstance(result, dict):
        logging.info("result: %s", json.dumps(result, default=str, sort_keys=True))


def entry():
    app.run(main)


if __name__ == "__main__":
    entry()
