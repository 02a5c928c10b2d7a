"""The ``--mode`` bodies: each takes a resolved config and a workdir, builds through
:mod:`bidm_jax.build`, runs the loop or the sampler, and writes files. No mode module imports
another (the quickstart composes the shared pieces itself)."""

# mode -> (module, function); main imports the one it runs, so start-up stays fast.
MODES = {
    "train": ("bidm_jax.modes.train", "run_train"),
    "distill": ("bidm_jax.modes.train", "run_distill"),
    "export": ("bidm_jax.modes.export", "run_export"),
    "sample": ("bidm_jax.modes.sample", "run_sample"),
    "encode_latents": ("bidm_jax.modes.encode_latents", "run_encode_latents"),
    "eval": ("bidm_jax.metrics.evaluate", "run_eval"),
    "summary": ("bidm_jax.modes.summary", "run_summary"),
    "ref_stats": ("bidm_jax.metrics.evaluate", "run_ref_stats"),
    "train_proxy": ("bidm_jax.metrics.evaluate", "run_train_proxy"),
    "quickstart": ("bidm_jax.modes.quickstart", "run_quickstart"),
}


def run(mode: str, config, workdir: str):
    """Runs ``mode`` on a resolved ``config`` (the mode's module is imported here, so that
    start-up and --help stay fast)."""
    import importlib

    if mode not in MODES:
        raise ValueError(f"--mode must be one of {tuple(MODES)}, got {mode!r}")
    module, function = MODES[mode]
    return getattr(importlib.import_module(module), function)(config, workdir)
