"""The config a workdir remembers: ``{workdir}/config.json``.

``--mode train`` and ``--mode distill`` write their resolved config there (atomically, before
the first step, and again on every resume). Later runs on the same workdir follow one rule:

* **Without ``--config``** the saved config is the config (``main`` passes
  ``--config=<this file>:<workdir>``, :func:`bidm_jax.configargs.with_saved_config`);
  ``--config.F=V`` overrides still apply on top of it.
* **With ``--config FILE``** that file (and its overrides) is the config.
* **Either way**, an *architecture field* (what decides the tensors a checkpoint holds or
  what they compute: :func:`architecture`) that differs from the saved value is an error
  naming the field and both values (exit code 2): a workdir holds one model. Every other
  field (sampling, evaluation, training length, learning rate, ...) may differ.

``--mode distill`` also compares the model of ``distill.teacher`` with the teacher's own
saved config when it has one (``{teacher workdir}/config.json``), so a teacher of another
architecture is named field by field instead of failing on tensor shapes.

This file is also an ml_collections config file: ``--config bidm_jax/saved_config.py:DIR``
loads the config saved in ``DIR``.
"""
from __future__ import annotations

import json
import os

import ml_collections
from absl import logging
from ml_collections import config_dict

from bidm_jax import errors

FILE = "config.json"
FORMAT = 1
# Modes that never build the model: the workdir's model does not constrain them.
MODEL_FREE_MODES = ("eval", "ref_stats", "train_proxy")
# model.*: everything but the compute settings (dropout only acts in training; dtype is the
# compute precision, the parameters stay float32).
MODEL_COMPUTE_ONLY = ("dropout", "dtype")
# quant.*: everything but gradient estimators, loss weights, initial values and training
# schedules (the step a stage switches at lives in the checkpoint's auxiliary state).
QUANT_TRAINING_ONLY = ("xnor_weight_grad", "reste_o_end", "reste_threshold", "ebb_tau",
                       "ebb_switch_step", "shortcut_scale_init", "progressive",
                       "attn_quant_start")
# distill.* / diffusion.*: the TBS table (its rows follow the number of timesteps);
# first_stage.*: the latent space the model works in (its autoencoder's kind and shape).
OTHER_ARCHITECTURE = ("distill.tbs", "distill.tbs_topology", "distill.tbs_last_n",
                      "diffusion.num_timesteps", "first_stage.kind", "first_stage.ch",
                      "first_stage.ch_mult", "first_stage.num_res_blocks",
                      "first_stage.n_embed")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def path(workdir: str) -> str:
    return os.path.join(workdir, FILE)


def _flat(cfg, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        name = prefix + key
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _placeholder_types(cfg, prefix: str = "") -> dict:
    """Types of the None-valued fields that have one (``config_dict.placeholder``), so that a
    reloaded config still accepts ``--config.F=V`` for them."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_placeholder_types(value, f"{prefix}{key}."))
        elif value is None:
            try:
                kind = cfg.get_ref(key).get_type()
            except ValueError:  # a plain None: no type to keep
                continue
            if kind.__name__ in _TYPES:
                out[prefix + key] = kind.__name__
    return out


def save(workdir: str, config, mode: str) -> str:
    """Writes ``config`` (resolved) with ``mode`` (the mode that trained) as the workdir's
    config; process 0 only. Returns the path."""
    import jax

    target = path(workdir)
    if jax.process_index() != 0:
        return target
    data = config.to_dict()
    data["mode"] = mode
    doc = {"format": FORMAT, "written_by": mode, "config": data,
           "placeholder_types": _placeholder_types(config)}
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, target)  # a reader never sees half a file
    return target


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _build(data: dict, types: dict, prefix: str = "") -> ml_collections.ConfigDict:
    fields = {}
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict):
            fields[key] = _build(value, types, name + ".")
        elif value is None and name in types:
            fields[key] = config_dict.placeholder(_TYPES[types[name]])
        else:
            fields[key] = _tuples(value)
    return ml_collections.ConfigDict(fields)


def _default_config():
    """``configs/default.py``'s config beside the package (a source checkout or an editable
    install), or None where it is not there."""
    import importlib.util

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = os.path.join(here, "configs", "default.py")
    if not os.path.isfile(default):
        return None
    spec = importlib.util.spec_from_file_location("_bidm_jax_saved_config_default", default)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _overlay(base, data: dict, types: dict, prefix: str = "") -> None:
    """Sets the saved values ``data`` into ``base`` (unlocked): a field the code added after
    the run keeps its default, a field it no longer has is kept as saved."""
    for key, value in data.items():
        name = prefix + key
        if key in base and isinstance(base[key], ml_collections.ConfigDict) \
                and isinstance(value, dict):
            _overlay(base[key], value, types, name + ".")
        elif key in base:
            try:
                base[key] = _tuples(value)
            except TypeError:  # the field changed type since: its current default stands
                logging.warning("saved config field %s=%r no longer fits that field; its "
                                "default is used", name, value)
        else:
            base[key] = (_build(value, types, name + ".") if isinstance(value, dict)
                         else _tuples(value))


def load(workdir: str):
    """(config, written_by) saved in ``workdir``, or None when it has none. The saved values
    are set into the current default config (so fields added to the code since the run exist
    with their defaults). A file that does not parse is a CorruptFile naming it."""
    target = path(workdir)
    if not os.path.isfile(target):
        return None
    try:
        with open(target) as f:
            doc = json.load(f)
        data, types = doc["config"], doc.get("placeholder_types", {})
        written_by = doc.get("written_by", data.get("mode", "?"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise errors.CorruptFile(f"{target} (the workdir's saved config) is unreadable: "
                                 f"{errors.one_line(e)}; delete it and pass --config") from None
    config = _default_config()
    if config is None:
        return _build(data, types), written_by
    with config.unlocked():
        _overlay(config, data, types)
    return config, written_by


def get_config(workdir: str):
    """ml_collections entry point: the config saved in ``workdir``."""
    loaded = load(workdir)
    if loaded is None:
        raise errors.ConfigError(f"--workdir {workdir!r} has no saved config ({FILE}); "
                                 "pass --config")
    return loaded[0]


def architecture(config) -> dict:
    """The architecture fields of ``config`` (dotted name -> value): ``model.*`` but
    ``MODEL_COMPUTE_ONLY``, ``quant.*`` but ``QUANT_TRAINING_ONLY``, and
    ``OTHER_ARCHITECTURE``. Fields added to ``model`` or ``quant`` later count by default."""
    flat = _flat(config)
    out = {}
    for name, value in flat.items():
        section, _, field = name.partition(".")
        if ((section == "model" and field not in MODEL_COMPUTE_ONLY)
                or (section == "quant" and field not in QUANT_TRAINING_ONLY)
                or name in OTHER_ARCHITECTURE):
            out[name] = value
    return out


def _differences(given: dict, saved: dict) -> list[tuple[str, object, object]]:
    return [(k, given[k], saved[k]) for k in sorted(set(given) & set(saved))
            if given[k] != saved[k]]


def check(config, workdir: str, mode: str) -> None:
    """Raises ConfigError when ``config`` (resolved) differs from the config saved in
    ``workdir`` in an architecture field; nothing to check without a saved config or in a
    mode that does not build the model."""
    if mode in MODEL_FREE_MODES:
        return
    loaded = load(workdir)
    if loaded is None:
        return
    saved, written_by = loaded
    diffs = _differences(architecture(config), architecture(saved))
    if not diffs:
        return
    field, given, was = diffs[0]
    more = (f" (also {', '.join(d[0] for d in diffs[1:4])}"
            f"{', ...' if len(diffs) > 4 else ''})" if len(diffs) > 1 else "")
    raise errors.ConfigError(
        f"{field}={given!r} differs from the model --workdir {workdir} holds ({field}={was!r} "
        f"in {path(workdir)}, written by --mode {written_by}){more}; a workdir holds one model: "
        f"pass --config.{field}={_literal(was)} or omit --config (the saved config is then "
        "used), or use another --workdir")


def _literal(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def teacher_workdir(teacher: str) -> str:
    """The workdir of a teacher checkpoint directory (``.../checkpoints`` -> ``...``)."""
    teacher = os.path.normpath(teacher)
    return os.path.dirname(teacher) if os.path.basename(teacher) == "checkpoints" else teacher


def check_teacher(config) -> None:
    """In ``--mode distill``: raises ConfigError when the config saved with
    ``distill.teacher`` (if any) has another FP model than ``config.model``."""
    teacher = config.distill.teacher
    if not teacher:
        return
    loaded = load(teacher_workdir(teacher))
    if loaded is None:
        return
    model = lambda c: {k: v for k, v in architecture(c).items() if k.startswith("model.")}
    diffs = _differences(model(config), model(loaded[0]))
    if diffs:
        field, given, was = diffs[0]
        raise errors.ConfigError(
            f"distill.teacher={teacher} was trained with {field}={was!r} "
            f"({path(teacher_workdir(teacher))}) but this config has {field}={given!r}: the "
            f"student is built from the teacher's model; set --config.{field}={_literal(was)}")
