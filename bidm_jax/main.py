"""Command-line entry point.

    python -m bidm_jax.main --config configs/cifar10_ddim_teacher.py --workdir runs/teacher \
        --mode train [--config.train.lr=1e-4 ...]
    python -m bidm_jax.main --workdir runs/teacher --mode sample   # the workdir's saved config

Modes: train (FP teacher), distill (binary student), export (packed 1-bit student), sample,
encode_latents (a latent model's data through its first stage), eval, summary, ref_stats,
train_proxy, quickstart.

Errors the user can act on (a bad config, file or workdir, a diverged run, a failed write, a
dead peer process) are printed once as ``bidm_jax: error: <one line>`` with the exit code of
:mod:`bidm_jax.errors`; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import ast
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bidm_jax import errors, saved_config
from bidm_jax import workdir as workdir_lib
from bidm_jax.configargs import check_config_arg, config_error, with_saved_config
from bidm_jax.modes import MODES  # a plain table: importing it loads nothing heavy

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, argv: list[str] | None = None) -> None:
    """Defines --config, --workdir and --mode on ``flag_values``; ``argv``: the command line
    whose ``--config.F=V`` overrides apply (default ``sys.argv`` at parse time)."""
    config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file "
                                    "(default: the config saved in --workdir).",
                                    flag_values=flag_values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", None, list(MODES), "What to run (default: the config's `mode`, "
                      "else train).", flag_values=flag_values)
    flags.mark_flag_as_required("workdir", flag_values=flag_values)


define_flags()


def run(config, workdir: str, mode: str):
    """Validates and resolves ``config`` once (``configlib.resolve_config``: the config every
    part of the run sees and logs), checks it against the config ``workdir`` remembers
    (:mod:`bidm_jax.saved_config`), then dispatches one mode (``bidm_jax.modes``)."""
    from bidm_jax.configlib import resolve_config

    config = resolve_config(config, mode)
    saved_config.check(config, workdir, mode)
    if mode == "distill":
        saved_config.check_teacher(config)
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
    """Drops INFO chatter of checkpointing internals so the progress line stays readable,
    and orbax's own tracebacks of a failed read or write: the error reaches the caller, which
    reports it once, in one line."""

    def filter(self, record) -> bool:
        return "orbax" not in record.pathname or 30 <= record.levelno < 40


def _multiprocess() -> bool:
    """Whether this process joined a multi-process run (asked without importing jax: an
    error before the run started must not wait for it)."""
    parallel = sys.modules.get("bidm_jax.parallel")
    return parallel is not None and parallel.is_multiprocess()


def _is_peer_failure(e: BaseException) -> bool:
    """A runtime error of a collective (XLA status text such as ``UNKNOWN: Gloo all-reduce
    failed ... Connection closed by peer``) in a multi-process run: a peer is gone."""
    if not _multiprocess() or isinstance(e, errors.ReportedError):
        return False
    text = str(e).lstrip()
    return type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError") or text.split(":")[0] in (
        "UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED",
        "FAILED_PRECONDITION", "DATA_LOSS")


def report(e: BaseException) -> int | None:
    """Prints ``e`` as one line on stderr and returns its exit code, or returns None when it
    is not an error the user can act on (a bug: the caller re-raises it with its traceback)."""
    if _is_peer_failure(e):
        from bidm_jax import parallel

        code, message = errors.PeerFailed.exit_code, (
            f"a collective of this {parallel.process_count()}-process run failed: another "
            f"process died or was killed ({errors.one_line(e, 300)})")
    elif isinstance(e, errors.ReportedError):
        code, message = e.exit_code, str(e)
    elif isinstance(e, (ValueError, FileNotFoundError)):
        code, message = errors.BadInput.exit_code, str(e)
    elif isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        code, message = errors.WriteFailed.exit_code, f"{errors.io_reason(e)}{where}"
    else:
        return None
    print(f"bidm_jax: error: {errors.one_line(message, 2000)}", file=sys.stderr, flush=True)
    return code


def parse_flags(argv: list[str], flag_values=FLAGS) -> list[str]:
    """Parses the command line (``argv[0]`` is the program) into ``flag_values``; returns the
    positional arguments. A workdir's saved config stands in for an omitted ``--config``.
    Raises ConfigError (one line: the file and line of a config that does not load, an
    unknown field with the fields it could be, ...)."""
    try:
        rest = flag_values(argv)  # --help prints and exits here
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:
        check_config_arg(argv)  # a missing file fails the overrides first: say what it is
        raise config_error(e, argv) from None
    check_config_arg(argv)
    try:
        flag_values.config.keys()  # a config file that failed to load raises only on access
    except Exception as e:
        raise config_error(e, argv) from None
    return rest


def execute(flag_values=FLAGS, argv: list[str] | None = None) -> int:
    """Runs the parsed command line; returns its exit code (errors reported by
    :func:`report`). In a multi-process run a failed process exits at once (``os._exit``)
    instead of waiting for the peers it can no longer reach."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    try:
        config = flag_values.config
        for field in last_override_wins(config, sys.argv[1:] if argv is None else argv[1:]):
            logging.warning("--config.%s was given more than once: the last value is used",
                            field)
        mode = flag_values.mode or config.mode
        if mode not in MODES:
            raise errors.ConfigError(f"mode {mode!r} is invalid; valid choices: "
                                     f"{', '.join(MODES)}")
        result = run(config, flag_values.workdir, mode)
    except Exception as e:
        code = report(e)
        if code is None:
            raise
        if _multiprocess():
            _exit_now(code)
        return code
    if isinstance(result, dict):
        logging.info("result: %s", json.dumps(result, default=str, sort_keys=True))
    return 0


def cli(argv: list[str]) -> int:
    """The whole command line in this process (fresh flags each call: tests use it to check
    what a user sees without starting a process); returns the exit code."""
    argv = with_saved_config(argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values, argv)
    try:
        rest = parse_flags(argv, flag_values)
        if len(rest) > 1:
            raise errors.ConfigError(f"unexpected arguments: {rest[1:]}")
    except errors.ReportedError as e:
        return report(e)
    return execute(flag_values, argv)


def _exit_now(code: int) -> None:
    """Exits with ``code`` without the interpreter's shutdown: the error is reported, and
    library threads a failure left mid-work (orbax's pending reads) would otherwise print
    their own tracebacks while the interpreter tears down."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    code = execute(FLAGS)
    if code:
        sys.exit(code)


def entry():
    sys.argv = with_saved_config(sys.argv)

    def parser(argv):
        try:
            return parse_flags(argv, FLAGS)
        except errors.ReportedError as e:
            sys.exit(report(e))

    try:
        app.run(main, flags_parser=parser)
    except SystemExit as e:
        if isinstance(e.code, int) and e.code:
            _exit_now(e.code)
        raise


if __name__ == "__main__":
    entry()
