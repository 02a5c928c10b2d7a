"""Backend choice and shape padding shared by the Pallas kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("tpu", "gpu", "reference")


def resolve_backend(backend: str | None) -> str:
    """``None`` picks from the default device: TPU -> Mosaic, GPU -> Triton, CPU -> jnp."""
    if backend is None:
        platform = jax.default_backend()
        backend = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}.get(platform, "reference")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def pad_to(x: jax.Array, shape: tuple[int, ...], value=0) -> jax.Array:
    """Pads ``x`` at the end of each axis up to ``shape``."""
    pads = [(0, s - d) for d, s in zip(x.shape, shape)]
    if any(p < 0 for _, p in pads):
        raise ValueError(f"cannot pad shape {x.shape} down to {shape}")
    if all(p == 0 for _, p in pads):
        return x
    return jnp.pad(x, pads, constant_values=value)


def next_pow2(x: int) -> int:
    p = 1
    while p < x:
        p *= 2
    return p
