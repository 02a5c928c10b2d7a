"""Errors the command line reports as one clear line with their own exit code (no traceback).

Kept free of heavy imports: ``bidm_jax.main`` imports it before anything else. Exit codes
(docs/reliability.md lists every case):

    2  bad input: config, data, checkpoint or workdir (:class:`BadInput` and its kinds, and
       any ``ValueError`` / ``FileNotFoundError`` of a mode)
    3  training diverged (:class:`TrainingDiverged`)
    4  a file could not be written: full disk, quota, I/O error (:class:`WriteFailed`)
    5  a process of a multi-process run failed (:class:`PeerFailed`)
"""
from __future__ import annotations

import errno as errno_lib
import os
import re


class ReportedError(Exception):
    """An error the command line prints as ``bidm_jax: error: <message>`` (one line) before
    exiting with ``exit_code``."""

    exit_code = 1


class BadInput(ReportedError, ValueError):
    """A config, data file, checkpoint or workdir the run cannot use. A ``ValueError``, so
    callers that catch bad values keep working. Exit code 2."""

    exit_code = 2


class ConfigError(BadInput):
    """A config file that is missing or does not load, an unknown field, a bad override, or
    a config that contradicts the one its workdir remembers."""


class CorruptFile(BadInput):
    """A file that exists but cannot be read: truncated, corrupt, or inconsistent."""


class TrainingDiverged(ReportedError, RuntimeError):
    """Training stopped because its updates stayed non-finite (``train.max_nonfinite_streak``
    in a row) or its last loss was non-finite; the last good checkpoint is kept and no final
    samples are written. Exit code 3."""

    exit_code = 3


class WriteFailed(ReportedError, RuntimeError):
    """A file (a checkpoint) could not be written; what was there before is kept. Exit
    code 4."""

    exit_code = 4


class PeerFailed(ReportedError, RuntimeError):
    """A collective of a multi-process run failed: another process died or was killed.
    Exit code 5."""

    exit_code = 5


def one_line(text: str, limit: int = 500) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut to ``limit``."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from (``__cause__``, else ``__context__``),
    outermost first."""
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        out.append(e)
        seen.add(id(e))
        # ``raise X from None`` hides the context it replaced: so does this chain.
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
    return out


def root_message(e: BaseException) -> str:
    """One line saying what went wrong at the bottom of ``e``'s chain (where libraries such
    as orbax/tensorstore put the actual reason: the file, the byte range, the OS error)."""
    for cause in reversed(chain(e)):
        text = one_line(str(cause))
        if text:
            # Generic types add nothing; a specific one (JSONDecodeError, EOFError) does.
            generic = type(cause) in (Exception, ValueError, RuntimeError, OSError)
            return text if generic else f"{type(cause).__name__}: {text}"
    return type(e).__name__


_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_NO_SPACE = (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EFBIG)


def os_errno(e: BaseException) -> int | None:
    """The OS error number behind ``e``, from an ``OSError`` in its chain or from the
    ``os_error_code`` tensorstore writes into its messages; None if there is none."""
    for cause in chain(e):
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        m = _OS_CODE.search(str(cause))
        if m:
            return int(m.group(1))
    return None


def io_reason(e: BaseException) -> str:
    """Why a write failed, in one line: the OS error's text (``No space left on device``) with
    a hint when the disk or quota is full, else the root message."""
    code = os_errno(e)
    if code is None:
        return root_message(e)
    reason = os.strerror(code)
    if code in _NO_SPACE:
        reason += " (the disk, quota or file-size limit is full: free space and resume)"
    return reason
