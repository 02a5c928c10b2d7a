"""Model families: each owns how it is built, which of its layers stay full precision by
default, its feature taps, and the shape of its input.

A family is what a new backbone adds (design.md §2): the DDIM pixel UNet today; the latent
UNet and its autoencoders plug in the same way. Everything outside ``models/`` asks the
family instead of assuming DDIM names:

* ``fp_layers`` / ``binary_layers``: fnmatch patterns on the layer paths (the official
  state-dict names); ``quant.fp_layers`` / ``quant.binary_layers`` left empty resolve to these;
* ``skip_patterns``: the FP 1×1 skip convs the papers leave out of their FLOPs;
* ``edge_layers``: the first and last convs (8-bit in BinaryDM's paper);
* ``conv1d_layers``: the layers that are Conv1d in the official code (LDM attention qkv and
  proj_out): BiDM's ``BNNConv1d`` has no input scale map and no per-conv shortcut, so
  ``quant.conv1d='code'`` builds them without (methods.md §2.3);
* ``block_group(path, model_config)``: the block group of a layer in BinaryDM's grouping of
  the TimestepEmbed blocks (0 = the highest-resolution head/tail blocks ... L−1, the middle
  block L; None outside the blocks), which decides its two bases and when progressive
  binarization reaches it (methods.md §3.2, §3.5); ``num_groups(model_config)`` their count;
* ``timestep_outputs(model)``: the tap names of the TimestepEmbed block outputs (LRM's
  features, methods.md §3.4);
* ``spd_features(model)``: the tap names distilled by SPD/L2 (BiDM's hooked features);
* ``tbs_mix(model, kind, last_n)``: TBS mixing points ``((point, source, column), ...)`` and
  the number of coefficient columns, for the ``code`` and ``paper`` wirings;
* ``preset(model_config)``: the name of the paper model it equals ('ldm4', ...), or None
  (the summary sets the papers' printed efficiency totals beside its own for these);
* ``input_shape(config)``: (H, W, C) of the diffusion model's input (a latent family's differs
  from ``data.image_size``);
* ``validate(config)``: raises ValueError on model fields the family cannot build.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """``model.dtype`` -> the jnp compute dtype (parameters stay float32)."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is invalid; valid choices: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family (see the module docstring). ``build(model_config, *, rngs, factory,
    dtype)`` returns the NNX module, called as ``eps, carry = model(x, t, carry, *,
    dropout_rng, mixer, features)``."""

    name: str
    build: Callable
    fp_layers: tuple[str, ...]
    binary_layers: tuple[str, ...]
    input_shape: Callable
    validate: Callable
    spd_features: Callable
    tbs_mix: Callable
    skip_patterns: tuple[str, ...] = ()
    edge_layers: tuple[str, ...] = ()
    conv1d_layers: tuple[str, ...] = ()
    block_group: Callable | None = None
    num_groups: Callable | None = None
    timestep_outputs: Callable | None = None
    preset: Callable | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"model.name={name!r} is invalid; valid choices: "
                         f"{', '.join(list_families())}") from None
