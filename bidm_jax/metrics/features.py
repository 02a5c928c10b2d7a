"""Feature networks behind one interface, and batched feature extraction sharded over devices.

A ``FeatureNetwork`` maps uint8 images (B, H, W, 3) to a dict with

* ``pool``      (B, Dp): features for FID, precision/recall and KID,
* ``spatial``   (B, Ds): features for sFID,
* ``is_logits`` (B, C):  logits whose softmax the Inception Score uses.

Extraction is data parallel (design.md §3): ``jax.jit`` with a ``NamedSharding`` over a
``jax.make_mesh((n,), ('data',))`` mesh, variables replicated, the batch split; the last
batch is zero-padded to the fixed batch shape so there is a single compilation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

FEATURE_KEYS = ("pool", "spatial", "is_logits")
_PRECISION = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}


def to_precision(name: str):
    """Config string -> jax.lax.Precision."""
    if name not in _PRECISION:
        raise ValueError(f"precision must be one of {tuple(_PRECISION)}, got {name!r}")
    return _PRECISION[name]


@dataclasses.dataclass
class FeatureNetwork:
    """A feature network: NNX graphdef/state plus the function that reads its features.

    ``kind`` is "inception" or "proxy"; ``label`` is the human-readable description written
    next to every metric; ``metric_prefix`` is "" or "proxy_"; ``info`` holds extra fields
    (e.g. the proxy's test accuracy and weights fingerprint).
    """
    kind: str
    label: str
    graphdef: Any
    state: Any
    apply: Callable[[nnx.Module, jax.Array], dict]
    info: dict = dataclasses.field(default_factory=dict)
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)  # iter_features'

    @property
    def metric_prefix(self) -> str:
        return "proxy_" if self.kind == "proxy" else ""


def state_fingerprint(state) -> str:
    """Short SHA-256 of all variable values (identifies the weights a reference was built with)."""
    h = hashlib.sha256()
    for path, leaf in sorted(nnx.to_flat_state(state), key=lambda t: str(t[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf.get_value(), np.float32)).tobytes())
    return h.hexdigest()[:16]


def data_mesh() -> jax.sharding.Mesh:
    """1-D mesh over all devices with axis name ``data``.

    The axis type is ``Auto`` (sharding propagated by the compiler): recent JAX makes
    ``Explicit`` axes by default, under which gathers such as a label lookup in the loss
    need hand-written output shardings.
    """
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def image_batches(images, batch_size: int, limit: int = 0):
    """Consecutive uint8 blocks (<= ``batch_size``, 4-d) of the first ``limit`` images (0 = all)
    of ``images``: an array (or memory map), a lazy source (``len`` and ``take(indices)``:
    :mod:`bidm_jax.data.images`) or a reader with ``batches(size, limit)``
    (:class:`bidm_jax.npy_stream.NpzArrayReader`). A lazy source's next block is read in a
    thread while the current one is on the device."""
    if hasattr(images, "batches"):
        yield from images.batches(batch_size, limit)
        return
    n = min(limit, len(images)) if limit else len(images)
    if isinstance(images, np.ndarray):
        for start in range(0, n, batch_size):
            yield np.asarray(images[start:start + batch_size])
        return
    from concurrent.futures import ThreadPoolExecutor

    def take(start):
        return images.take(np.arange(start, min(start + batch_size, n)))

    starts = list(range(0, n, batch_size))
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(take, starts[0]) if starts else None
        for i in range(len(starts)):
            block = nxt.result()
            nxt = pool.submit(take, starts[i + 1]) if i + 1 < len(starts) else None
            yield block


def iter_features(net: FeatureNetwork, batches, batch_size: int = 256,
                  mesh: jax.sharding.Mesh | None = None, log_every: int = 50, total: int = 0):
    """Features of a stream of uint8 blocks (each (b <= batch_size, H, W, 3)): yields one
    dict {"pool", "spatial", "is_logits"} of float32 (b, ·) numpy arrays per block, in order.

    ``batch_size`` is the global batch; it is rounded up to a multiple of the device count and
    every block is zero-padded to it (one compilation). Results are read back one block late
    so that the device works while the host reads. ``total``: for the progress log only.
    """
    mesh = mesh or data_mesh()
    ndev = mesh.devices.size
    bs = -(-batch_size // ndev) * ndev
    data = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    # One jitted function per network and mesh: a reference and the samples (or several
    # evaluations in one process) reuse its compilation.
    key = tuple(d.id for d in mesh.devices.flat)
    if key not in net.compiled:
        graphdef, apply = net.graphdef, net.apply

        def fn(st, x):
            out = apply(nnx.merge(graphdef, st), x)
            return {k: out[k].astype(jnp.float32) for k in FEATURE_KEYS}

        net.compiled[key] = (jax.jit(fn, in_shardings=(repl, data), out_shardings=data),
                             jax.device_put(net.state, repl))
    jfn, state = net.compiled[key]
    pending = None  # (device outputs, valid rows)
    t0, done = time.time(), 0
    for i, chunk in enumerate(batches):
        if chunk.ndim != 4 or chunk.shape[-1] != 3 or chunk.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {chunk.dtype} "
                             f"{chunk.shape}")
        valid = chunk.shape[0]
        if valid > bs:
            raise ValueError(f"a block of {valid} images exceeds the batch of {bs}")
        if valid < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - valid,) + chunk.shape[1:], np.uint8)])
        out = jfn(state, jax.device_put(chunk, data))
        if pending is not None:
            yield {k: np.asarray(pending[0][k])[:pending[1]] for k in FEATURE_KEYS}
        pending = (out, valid)
        if log_every and i % log_every == 0:
            logging.info("%s features: %d / %s images (%.1f s)", net.kind, done,
                         total or "?", time.time() - t0)
        done += valid
    if pending is not None:
        yield {k: np.asarray(pending[0][k])[:pending[1]] for k in FEATURE_KEYS}


def extract_features(net: FeatureNetwork, images: np.ndarray, batch_size: int = 256,
                     mesh: jax.sharding.Mesh | None = None, log_every: int = 50
                     ) -> dict[str, np.ndarray]:
    """images uint8 (N, H, W, 3) -> {"pool", "spatial", "is_logits"} float32 arrays (N, ·).

    ``batch_size`` is the global batch; it is rounded up to a multiple of the device count.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    ndev = (mesh or data_mesh()).devices.size
    bs = -(-batch_size // ndev) * ndev
    results = {k: [] for k in FEATURE_KEYS}
    for out in iter_features(net, image_batches(images, bs), bs, mesh, log_every,
                             total=images.shape[0]):
        for k in FEATURE_KEYS:
            results[k].append(out[k])
    if not results["pool"]:
        raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in results.items()}
