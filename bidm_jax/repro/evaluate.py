"""Evaluates several models' sample files in one process (the feature network compiles once).

    python -m bidm_jax.repro.evaluate --config configs/repro_cifar10_small.py:teacher \
        --root W --models teacher,bidm,xnor --config.eval.proxy_path=W/proxy/proxy_features.npz

For each model it reads ``{root}/{model}/samples/samples_{train|distill}.npz`` and writes
``{root}/{model}/eval/metrics.json`` (``bidm_jax.metrics.evaluate.run_eval``). A model whose
samples are missing is reported and skipped; the exit status is 1 if any was.
"""
from __future__ import annotations

import copy
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "ml_collections config file (eval section used).")
flags.DEFINE_string("root", None, "Experiment workdir holding one folder per model.")
flags.DEFINE_list("models", None, "Model folder names; 'teacher' reads samples_train.npz.")
flags.mark_flags_as_required(["config", "root", "models"])
FLAGS = flags.FLAGS


def samples_path(root: str, model: str) -> str:
    tag = "train" if model == "teacher" else "distill"
    return os.path.join(root, model, "samples", f"samples_{tag}.npz")


def main(argv):
    del argv
    from bidm_jax.configlib import validate_config
    from bidm_jax.metrics.evaluate import run_eval

    validate_config(FLAGS.config)
    failed = []
    for model in FLAGS.models:
        config = copy.deepcopy(FLAGS.config)
        with config.unlocked():
            config.eval.samples_path = samples_path(FLAGS.root, model)
        try:
            result = run_eval(config, os.path.join(FLAGS.root, model))
            logging.info("%s: proxy FID %.3f", model, result.get("proxy_fid", float("nan")))
        except (FileNotFoundError, ValueError) as e:
            logging.error("%s: not evaluated: %s", model, e)
            failed.append(model)
    if failed:
        print(f"not evaluated: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
