"""BiDM's cross-timestep connection (TBS part 2, methods.md §2.5).

A feature h at a mixing point is blended with a cached feature of the previous call:

    h ← (1 − c)·h + c·stopgrad(h_prev),   c = table[⌊t/10⌋, column]   (BiDM Eq. 12)

with a learnable coefficient table (``n_rows × n_columns``, rows ⌊t/10⌋, an ``nnx.Param``
attached to the student as ``tbs.coefficients``, so it trains, EMAs and checkpoints).

Topologies (``distill.tbs_topology``) are the model family's (``Family.tbs_mix``); for the
DDIM UNet (:mod:`bidm_jax.models.ddim_family`):

* ``code`` (BiDM's released CIFAR code): only up-level 1 mixes, one column. Each of its block
  outputs (its attention outputs when the level has attention) mixes with the previous call's
  *input of the level* (``up.2.upsample``, or ``mid.block_2`` when the UNet has 2 levels), and
  ``up.1.upsample`` mixes with its own previous output. DDIM CIFAR-10: 3 attention outputs
  256×16×16 + the upsample 256×32×32.
* ``paper`` (BiDM App. A): the last ``n`` up-path block outputs (LDM TimestepEmbedSequential
  equivalents: ResBlock, then its attention, then the level's upsample for the last block of
  a level), each with its own previous output and its own column; CIFAR n = 2.

The carry of the sampler is ``{"valid": bool[], "feats": {source: (B, H, W, C)}}``: zeros and
``valid=False`` at the first DDIM step (no mixing), then the previous step's mixed features.
Training caches the unmixed features of a stop-gradient student pass at t+1 (see
``bidm_jax.distill.objective``).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.functional import tap_shapes

ROW_WIDTH = 10  # timesteps per coefficient row: row = ⌊t/10⌋ (methods.md §2.5, §8 item 7)
TABLE_NAME = "tbs.coefficients"


@dataclasses.dataclass(frozen=True)
class Topology:
    """Which tap points mix with which cached feature.

    mix: ((point, source, column), ...) in execution order; point and source are tap names of
    the model's ``__call__``. ``sources`` are the features the carry holds.
    """

    kind: str
    mix: tuple[tuple[str, str, int], ...]
    n_columns: int

    @property
    def plan(self) -> dict[str, tuple[str, int]]:
        return {p: (s, c) for p, s, c in self.mix}

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for _, s, _ in self.mix))


def make_topology(family, model, kind: str, last_n: int = 2) -> Topology:
    """The mixing points of ``family`` (its ``tbs_mix``) for ``kind`` 'code' or 'paper'
    (``distill.tbs_topology``) on ``model``."""
    mix, n_columns = family.tbs_mix(model, kind, last_n)
    return Topology(kind, tuple(tuple(m) for m in mix), n_columns)


class TBSCoefficients(nnx.Module):
    """The learnable table c[row, column], rows = ⌈T/10⌉ (100 for T = 1000)."""

    def __init__(self, n_rows: int, n_columns: int, init: float):
        self.coefficients = nnx.Param(jnp.full((n_rows, n_columns), init, jnp.float32))


def num_rows(num_timesteps: int) -> int:
    return math.ceil(num_timesteps / ROW_WIDTH)


def attach_tbs(student: nnx.Module, topology: Topology, init: float,
               num_timesteps: int = 1000) -> nnx.Module:
    """Adds ``student.tbs`` (parameter ``tbs.coefficients``, shape (⌈T/10⌉, n_columns), all
    ``init``: paper 0.3, code 0.0) in place; returns the student."""
    student.tbs = TBSCoefficients(num_rows(num_timesteps), topology.n_columns, float(init))
    return student


def coefficient_rows(t: jax.Array, n_rows: int) -> jax.Array:
    """Row index ⌊t/10⌋ per sample: t (B,) int → (B,) int32, clipped to the table."""
    return jnp.clip(t.astype(jnp.int32) // ROW_WIDTH, 0, n_rows - 1)


def mix(h: jax.Array, prev: jax.Array, c: jax.Array, valid) -> jax.Array:
    """h ← (1 − c)·h + c·stopgrad(prev) where ``valid``, else h (Eq. 12).
    h, prev (B, H, W, C); c (B,); valid: bool scalar or (B,)."""
    if h.shape != prev.shape:
        raise ValueError(f"TBS mixes features of equal shape, got {h.shape} and {prev.shape}")
    cb = c.astype(h.dtype)[:, None, None, None]
    mixed = (1 - cb) * h + cb * jax.lax.stop_gradient(prev).astype(h.dtype)
    valid = jnp.asarray(valid)
    if valid.ndim:
        valid = valid[:, None, None, None]
    return jnp.where(valid, mixed, h)


class Mixer:
    """The UNet's ``mixer(name, h, carry, t)`` hook for one forward pass.

    ``carry`` is the cache {"valid", "feats"} (None: record only, no mixing, as the
    training cache pass). Tap outputs named in ``topology.sources`` are recorded *after*
    mixing in ``recorded`` (stop-gradient): the next call's cache. The carry passed through
    the UNet is read, never written, so later taps see the previous call's features.
    """

    def __init__(self, topology: Topology, table: jax.Array):
        self.plan, self.sources = topology.plan, set(topology.sources)
        self.table = table
        self.recorded: dict[str, jax.Array] = {}

    def __call__(self, name, h, carry, t):
        if carry is not None and name in self.plan:
            src, col = self.plan[name]
            c = self.table[coefficient_rows(t, self.table.shape[0]), col]
            h = mix(h, carry["feats"][src], c, carry["valid"])
        if name in self.sources:
            self.recorded[name] = jax.lax.stop_gradient(h)
        return h, carry


def tbs_apply(module, topology: Topology, x, t, cache, *, dropout_rng=None, features=None):
    """One TBS forward of a student ``module`` carrying ``tbs.coefficients``.

    cache: {"valid", "feats"} or None (no mixing). Returns (eps, new cache) where the new
    cache holds the (mixed) source features of this call with ``valid=True``.
    """
    mixer = Mixer(topology, module.tbs.coefficients[...])
    eps, _ = module(x, t, cache, dropout_rng=dropout_rng, mixer=mixer, features=features)
    missing = set(topology.sources) - set(mixer.recorded)
    if missing:
        raise ValueError(f"TBS source features {sorted(missing)} were never produced by the UNet")
    return eps, {"valid": jnp.ones((), bool), "feats": dict(mixer.recorded)}


def feature_shapes(module, topology: Topology, input_shape) -> dict[str, jax.ShapeDtypeStruct]:
    """Per-sample shapes/dtypes of the carried features, from an abstract trace of ``module``
    at ``input_shape`` = (H, W, C). Checks that every mixing point matches its source."""
    feats = tap_shapes(module, input_shape)
    for point, src, _ in topology.mix:
        for name in (point, src):
            if name not in feats:
                raise ValueError(f"TBS tap point {name!r} does not exist in this UNet")
        if feats[point].shape != feats[src].shape:
            raise ValueError(f"TBS point {point} {feats[point].shape[1:]} cannot mix with "
                             f"{src} {feats[src].shape[1:]}")
    return {s: jax.ShapeDtypeStruct(feats[s].shape[1:], feats[s].dtype) for s in topology.sources}


def init_carry(shapes: dict, batch: int) -> dict:
    """The first sampling step's carry: zero features, ``valid=False`` (no mixing)."""
    return {"valid": jnp.zeros((), bool),
            "feats": {k: jnp.zeros((batch,) + tuple(s.shape), s.dtype) for k, s in shapes.items()}}


def carry_floats(shapes: dict) -> int:
    """Floats carried per sample (methods.md §2.5 state; §8 item 14 for LDM-4)."""
    return int(sum(math.prod(s.shape) for s in shapes.values()))
