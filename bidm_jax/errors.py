"""Errors the command line reports as one clear line with their own exit code (no
traceback). Kept free of heavy imports: ``bidm_jax.main`` imports it before anything else."""


class TrainingDiverged(RuntimeError):
    """Training stopped because its updates stayed non-finite (``train.max_nonfinite_streak``
    in a row) or its last loss was non-finite; the last good checkpoint is kept and no final
    samples are written. Exit code 3."""

    exit_code = 3
