"""The ``--config`` argument's errors, each as one :class:`~bidm_jax.errors.ConfigError` line.

ml_collections loads the config file and applies ``--config.F=V`` overrides while absl parses
the flags, where its errors are tracebacks (a syntax error, an unknown field) or a deferred
``IOError`` (a missing file). ``main`` checks the argument before parsing
(:func:`check_config_arg`) and turns a parse failure into the line a user needs
(:func:`config_error`): the file and line of an error in the config file, the unknown field
with the fields its section has, the override that does not parse.
"""
from __future__ import annotations

import difflib
import os
import re
import traceback

from bidm_jax import errors, saved_config

_CONFIG_ARG = re.compile(r"^--?config(=|$)")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=V`` / ``--name V`` in ``argv`` (the last one given), else None."""
    value = None
    for i, arg in enumerate(argv):
        for prefix in (f"--{name}", f"-{name}"):
            if arg == prefix and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1:]
    return value


def config_file(argv: list[str]) -> str | None:
    """The file part of ``--config FILE[:ARG]``, or None when no config is given."""
    value = flag_value(argv[1:], "config")
    return None if value is None else value.split(":", 1)[0]


def with_saved_config(argv: list[str]) -> list[str]:
    """``argv`` with ``--config=<saved_config.py>:<workdir>`` inserted when it names no
    config and its ``--workdir`` has a saved one (so that ``--config.F=V`` overrides apply
    to the saved config)."""
    if any(_CONFIG_ARG.match(a) for a in argv[1:]):
        return list(argv)
    workdir = flag_value(argv[1:], "workdir")
    if workdir and os.path.isfile(saved_config.path(workdir)):
        loader = os.path.abspath(saved_config.__file__)
        return [argv[0], f"--config={loader}:{workdir}", *argv[1:]]
    return list(argv)


def check_config_arg(argv: list[str]) -> None:
    """Raises ConfigError when no config is given (and the workdir has none saved) or the
    config file does not exist."""
    path = config_file(argv)
    if path is None:
        workdir = flag_value(argv[1:], "workdir")
        where = (f": --workdir {workdir!r} has no saved config ({saved_config.FILE}; --mode train "
                 "and --mode distill write it)" if workdir else "")
        raise errors.ConfigError(f"--config is required{where}")
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
        raise errors.ConfigError(f"config file {path!r} not found{where}")


def _beside(filename: str, path: str) -> bool:
    """Whether ``filename`` is the config file ``path`` or a file beside it (the
    ``default.py`` an override file loads)."""
    return os.path.dirname(os.path.abspath(filename)) == os.path.dirname(os.path.abspath(path))


def _config_frame(e: BaseException, path: str):
    """The innermost (file, line) of ``e``'s chain inside the config file or a file beside
    it, else None."""
    found = None
    for cause in errors.chain(e):
        for frame in traceback.extract_tb(cause.__traceback__):
            if _beside(frame.filename, path):
                found = (frame.filename, frame.lineno)
        if found:
            return found
    return None


def _load(path: str, arg: str | None):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bidm_jax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg is not None else []))


def unknown_field(argv: list[str]) -> str | None:
    """A message for the first ``--config.F=V`` whose field the config lacks, or None (the
    config is loaded again here: the parse that failed kept no config)."""
    import ml_collections

    value = flag_value(argv[1:], "config")
    file, _, arg = value.partition(":")
    try:
        config = _load(file, arg or None)
    except Exception:  # the parse error itself is reported then
        return None
    for a in argv[1:]:
        m = _OVERRIDE.match(a)
        if not m:
            continue
        node, walked = config, []
        for part in m.group(1).split("."):
            if isinstance(node, ml_collections.ConfigDict) and part in node:
                node = node[part]
                walked.append(part)
                continue
            section = ".".join(walked) or "the config"
            keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, keys, n=3)
            hint = (f"; did you mean {', '.join(close)}?" if close
                    else f"; {section} has: {', '.join(keys)}" if keys
                    else f"; {section} is a value, not a section")
            return f"unknown config field {m.group(1)} ({a.split('=')[0]}){hint}"
    return None


def config_error(e: BaseException, argv: list[str]) -> errors.ConfigError:
    """One line for an exception of flag parsing (see the module docstring)."""
    from absl import flags

    path = config_file(argv) or "?"
    for cause in errors.chain(e):
        if isinstance(cause, SyntaxError):
            text = f": {cause.text.strip()}" if cause.text else ""
            where = f"{cause.filename}, line {cause.lineno}: {cause.msg}{text}"
            if _beside(cause.filename or "", path):
                return errors.ConfigError(f"config file {where}")
            # A module the config imports: not the user's file, but still where to look.
            return errors.ConfigError(f"could not load config {path}: SyntaxError in {where}")
    if any(isinstance(c, (AttributeError, KeyError)) for c in errors.chain(e)):
        message = unknown_field(argv)
        if message:
            return errors.ConfigError(message)
    frame = _config_frame(e, path) if path != "?" else None
    root = errors.chain(e)[-1]
    if frame:
        return errors.ConfigError(f"config file {frame[0]}, line {frame[1]}: "
                                  f"{type(root).__name__}: {errors.one_line(root, 300)}")
    if isinstance(e, flags.Error):
        return errors.ConfigError(errors.one_line(e, 300))
    return errors.ConfigError(f"could not load config {path}: {type(root).__name__}: "
                              f"{errors.one_line(root, 300)}")
