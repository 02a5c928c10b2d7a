"""Checkpoints through orbax ``CheckpointManager``.

A checkpoint is a pytree ``{"params", "ema", ["aux"], ["opt"], "step", ["rng", "nonfinite"]}``
where params/ema are flat dicts keyed by dotted parameter names (``models.functional``) and
aux the model's auxiliary state, keyed the same way (present when the model has any). Training
checkpoints hold everything needed to resume; converted or exported models hold params/ema
only. Restores check every tensor's shape first and name the offending ones.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from bidm_jax.models.functional import check_shapes


def manager(directory: str, *, max_to_keep: int = 2, keep_period: int = 0,
            create: bool = True) -> ocp.CheckpointManager:
    """Keeps the ``max_to_keep`` latest steps plus every multiple of ``keep_period``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           keep_period=keep_period or None, create=create)
    # Naming the handler lets metadata (shapes) be read before any restore.
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state: dict, *, wait: bool = False) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state))
    if wait:
        mngr.wait_until_finished()


def _metadata_tree(mngr: ocp.CheckpointManager, step: int):
    meta = mngr.item_metadata(step)
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
