"""Checkpoints through orbax ``CheckpointManager``.

A checkpoint is a pytree ``{"params", "ema", ["aux"], ["opt"], "step", ["rng", "nonfinite"]}``
where params/ema are flat dicts keyed by dotted parameter names (``models.functional``) and
aux the model's auxiliary state, keyed the same way (present when the model has any). Training
checkpoints hold everything needed to resume; converted or exported models hold params/ema
only. Restores check every tensor's shape first and name the offending ones.

Failures are one clear error each (:mod:`bidm_jax.errors`): a save waits for its write, so a
failed write (a full disk) is reported at once as :class:`~bidm_jax.errors.WriteFailed`
naming the checkpoint, its partial directory is removed and the previous checkpoints are kept
(orbax writes ``{step}.orbax-checkpoint-tmp`` and renames it when complete, so a killed or
failed write never replaces a good checkpoint); a checkpoint that cannot be read (truncated,
corrupt) is a :class:`~bidm_jax.errors.CorruptFile` naming its path and the reason.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from bidm_jax import errors
from bidm_jax.models.functional import check_shapes

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step directory being written


def manager(directory: str, *, max_to_keep: int = 2, keep_period: int = 0,
            create: bool = True, cleanup: bool = False) -> ocp.CheckpointManager:
    """Keeps the ``max_to_keep`` latest steps plus every multiple of ``keep_period``.
    ``cleanup``: remove partial step directories a killed run left (only the run that
    writes the directory, holding its workdir's lock, may: a reader could otherwise delete a
    concurrent writer's checkpoint in progress)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           keep_period=keep_period or None, create=create,
                                           cleanup_tmp_directories=cleanup)
    # Naming the handler lets metadata (shapes) be read before any restore.
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _finished_steps(directory: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) \
        if os.path.isdir(directory) else []


def _remove_partial(directory: str, step: int, settle_s: float = 1.0) -> None:
    """Removes the partial directory of a failed save of ``step`` (on a full disk, its space
    is what the user needs back). Writes of that save still in flight when the failure was
    raised can recreate files for a moment, so it is removed until it stays gone."""
    pattern = os.path.join(directory, f"{step}{TMP_SUFFIX}*")
    deadline, quiet = time.time() + settle_s, 0
    while time.time() < deadline and quiet < 3:
        found = glob.glob(pattern)
        for partial in found:
            shutil.rmtree(partial, ignore_errors=True)
        quiet = 0 if found else quiet + 1
        time.sleep(0.05)


def save(mngr: ocp.CheckpointManager, step: int, state: dict, *, wait: bool = True) -> None:
    """Writes checkpoint ``step`` and (``wait``, the default) waits until it is complete, so
    that a failed write is reported here rather than at the next save. Raises
    :class:`~bidm_jax.errors.WriteFailed` naming the checkpoint and the reason; the partial
    directory is removed and the previous checkpoints are kept."""
    directory = str(mngr.directory)
    _quiet_orphaned_io()
    try:
        mngr.save(step, args=ocp.args.StandardSave(state))
        if wait:
            mngr.wait_until_finished()
    except Exception as e:  # orbax/tensorstore raise many types; each is one failed write
        _quiet_asyncio()
        if jax.process_index() == 0:
            _remove_partial(directory, step)
        kept = [s for s in _finished_steps(directory) if s != step]
        keep = (f"the previous checkpoint (step {kept[-1]}) is kept" if kept
                else "no earlier checkpoint exists")
        raise errors.WriteFailed(f"could not write checkpoint {directory}/{step}: "
                                 f"{errors.io_reason(e)}; {keep}") from e


_QUIET = {"installed": False}


def _quiet_orphaned_io() -> None:
    """When one read or write of a checkpoint fails, orbax's other reads/writes of it still
    finish on background threads and report into an event loop that is already closed
    ("Event loop is closed" tracebacks, "Task exception was never retrieved"): hundreds of
    lines around the one error that matters, which the caller reports. Those, and only
    those, are silenced; installed before the first read or write because they start before
    the failure reaches us."""
    import sys
    import threading

    if _QUIET["installed"]:
        return
    _QUIET["installed"] = True

    def closed_loop(value) -> bool:
        return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)

    # tensorstore reports a failed callback as "unraisable"; threads and C++ callers may use
    # the other two hooks.
    unraisable, excepthook, thread_hook = sys.unraisablehook, sys.excepthook, threading.excepthook
    sys.unraisablehook = lambda args: (None if closed_loop(args.exc_value)
                                       else unraisable(args))
    sys.excepthook = lambda kind, value, tb: (None if closed_loop(value)
                                              else excepthook(kind, value, tb))
    threading.excepthook = lambda args: (None if closed_loop(args.exc_value)
                                         else thread_hook(args))


def _quiet_asyncio() -> None:
    """After a failed read or write, the operations left behind fail as unretrieved asyncio
    tasks: noise from here on (the project runs no asyncio code of its own)."""
    import logging as py_logging

    py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)


@contextlib.contextmanager
def _reading(directory, step):
    """Turns a failed read of checkpoint ``step`` (orbax, tensorstore, JSON and OS errors:
    a truncated or corrupt file) into one CorruptFile naming it; bad input found by this
    module's own checks passes through."""
    _quiet_orphaned_io()
    try:
        yield
    except errors.ReportedError:
        raise
    except Exception as e:
        _quiet_asyncio()
        path = f"{directory}/{step}"
        others = [s for s in _finished_steps(str(directory)) if s != step]
        hint = (f"; delete {path} to use step {others[-1]} instead" if others else "")
        raise errors.CorruptFile(f"checkpoint {path} is unreadable (truncated or corrupt): "
                                 f"{errors.root_message(e)}{hint}") from e


def _metadata_tree(mngr: ocp.CheckpointManager, step: int):
    with _reading(mngr.directory, step):
        meta = mngr.item_metadata(step)
        if meta is None:
            raise ValueError("it has no item metadata")
    tree = getattr(meta, "tree", meta)
    return tree


def _abstract_from_metadata(tree, sharding=None):
    def leaf(m):
        sh = sharding if sharding is not None else getattr(m, "sharding", None)
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sh)
    return jax.tree_util.tree_map(leaf, tree, is_leaf=lambda m: hasattr(m, "shape"))


def restore(mngr: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Restores ``step`` into the structure/shardings of ``target`` (arrays or
    ShapeDtypeStructs). Mismatched parameter shapes raise a ValueError naming the tensors."""
    tree = _metadata_tree(mngr, step)
    for key in ("params", "ema", "aux"):
        if key in target and key in tree:
            check_shapes(target[key], tree[key], f"checkpoint {mngr.directory}/{step} [{key}]")
    missing = [k for k in target if k not in tree]
    if missing:
        raise ValueError(f"checkpoint {mngr.directory}/{step} lacks entries {missing}; "
                         f"it has {sorted(tree)}")
    abstract = jax.tree_util.tree_map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
        else jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
        target)
    with _reading(mngr.directory, step):
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def has_entry(mngr: ocp.CheckpointManager, step: int, key: str) -> bool:
    """Whether checkpoint ``step`` holds top-level entry ``key`` (e.g. 'aux')."""
    return key in _metadata_tree(mngr, step)


def load_params(directory: str, *, use_ema: bool = True, step: int | None = None,
                sharding=None, with_aux: bool = False):
    """Reads only the (EMA) parameters of a checkpoint directory: how a frozen teacher or a
    sampler loads a model. Returns a flat dict name -> array; with ``with_aux`` the pair
    (params, aux), aux {} for a checkpoint without auxiliary state."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory at {directory!r}")
    mngr = manager(directory, create=False)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory!r} holds no checkpoint steps")
    tree = _metadata_tree(mngr, step)
    key = "ema" if use_ema and "ema" in tree else "params"
    # orbax's StandardRestore rejects a partial item, so the whole tree is restored and the
    # wanted entry picked; stored sharding metadata is not a Sharding, so default to one device.
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = _abstract_from_metadata(dict(tree), sharding)
    with _reading(mngr.directory, step):
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    mngr.close()
    if with_aux:
        return restored[key], dict(restored.get("aux", {}))
    return restored[key]


def write_params(directory: str, params: dict, *, ema: dict | None = None, step: int = 0,
                 meta: dict | None = None) -> None:
    """Writes a params-only checkpoint (converted teachers, exported students)."""
    mngr = manager(directory)
    state = {"params": params, "ema": ema if ema is not None else params,
             "step": np.asarray(step, np.int32)}
    save(mngr, step, state, wait=True)
    mngr.close()
    if meta is not None and jax.process_index() == 0:
        with open(os.path.join(directory, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
