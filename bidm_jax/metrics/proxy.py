"""Proxy feature network: a small CIFAR-10 ResNet the project trains itself (methods.md §6).

Used when the FID Inception weights cannot be obtained (``eval.features = "proxy"``). It
gives the same three feature kinds as the Inception network, so every metric has a proxy
analogue, but the numbers are **not** comparable with published FID/IS values; every file and
log line that carries them says "proxy" and states the classifier's test accuracy.

Architecture (input uint8 32x32x3, scaled to [-1, 1]):
stem 3x3 conv (w) -> 2 basic blocks (w, 32x32) -> 2 blocks (2w, 16x16) -> 2 blocks (4w, 8x8)
-> global average -> Linear(4w, E) + ReLU = ``pool`` (E) -> Linear(E, 10) = ``is_logits``.
``spatial`` = the first ``s`` channels of the 16x16 stage-2 output, flattened (H, W, C): the
counterpart of Inception's 17x17 ``mixed_6/conv`` slice used by sFID.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bidm_jax.npzio import load_npz
from bidm_jax.metrics.features import data_mesh

NUM_CLASSES = 10


class BasicBlock(nnx.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus identity or 1x1 conv-BN shortcut, ReLU."""

    def __init__(self, cin, cout, stride, *, precision, rngs):
        conv = dict(use_bias=False, precision=precision, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), stride, padding=((1, 1), (1, 1)), **conv)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), 1, padding=((1, 1), (1, 1)), **conv)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.proj = nnx.Conv(cin, cout, (1, 1), stride, padding="VALID", **conv)
            self.proj_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)

    def __call__(self, x, train: bool):
        ura = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        s = self.proj_bn(self.proj(x), use_running_average=ura) if self.has_proj else x
        return jax.nn.relu(y + s)


class ProxyNet(nnx.Module):
    """Compact CIFAR-10 ResNet with ``pool`` / ``spatial`` / ``is_logits`` outputs."""

    def __init__(self, width: int = 64, embed_dim: int = 256, spatial_channels: int = 8,
                 precision=None, *, rngs: nnx.Rngs):
        if spatial_channels > 2 * width:
            raise ValueError(f"spatial_channels ({spatial_channels}) must be <= 2 * width")
        w = width
        c = dict(precision=precision, rngs=rngs)
        self.spatial_channels = spatial_channels
        self.stem = nnx.Conv(3, w, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, **c)
        self.stem_bn = nnx.BatchNorm(w, momentum=0.9, rngs=rngs)
        self.stage1 = nnx.List([BasicBlock(w, w, 1, **c), BasicBlock(w, w, 1, **c)])
        self.stage2 = nnx.List([BasicBlock(w, 2 * w, 2, **c), BasicBlock(2 * w, 2 * w, 1, **c)])
        self.stage3 = nnx.List([BasicBlock(2 * w, 4 * w, 2, **c),
                                BasicBlock(4 * w, 4 * w, 1, **c)])
        self.embed = nnx.Linear(4 * w, embed_dim, **c)
        self.head = nnx.Linear(embed_dim, NUM_CLASSES, **c)

    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """uint8 (B, 32, 32, 3) -> {"pool" (B, E), "spatial" (B, 256 s), "is_logits" (B, 10)}."""
        if images.shape[1:] != (32, 32, 3):
            raise ValueError(f"the proxy network takes (B, 32, 32, 3) images, got {images.shape}")
        x = images.astype(jnp.float32) / 127.5 - 1.0
        x = jax.nn.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        for blk in self.stage1:
            x = blk(x, train)
        for blk in self.stage2:
            x = blk(x, train)
        spatial = x[..., :self.spatial_channels].reshape(x.shape[0], -1)
        for blk in self.stage3:
            x = blk(x, train)
        pool = jax.nn.relu(self.embed(jnp.mean(x, axis=(1, 2))))
        return {"pool": pool, "spatial": spatial, "is_logits": self.head(pool)}


def augment(key, images):
    """Random 4-pixel reflect-pad crop and horizontal flip, per example; uint8 in, uint8 out."""
    b = images.shape[0]
    k1, k2 = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offs = jax.random.randint(k1, (b, 2), 0, 9)
    # Gathers along the batch-aligned axes (no vmap), so a batch-sharded input stays sharded.
    rows = (offs[:, :1] + jnp.arange(32))[:, :, None, None]
    out = jnp.take_along_axis(padded, rows, axis=1)
    cols = (offs[:, 1:] + jnp.arange(32))[:, None, :, None]
    out = jnp.take_along_axis(out, cols, axis=2)
    flip = jax.random.bernoulli(k2, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)


def init_proxy(width: int, embed_dim: int, spatial_channels: int, seed: int = 0):
    """(graphdef, params, batch_stats) of a freshly initialised ProxyNet (He-normal kernels
    drawn with NumPy, see ``weights.numpy_init_flat``)."""
    from bidm_jax.metrics.weights import load_flat_npz, numpy_init_flat

    model = nnx.eval_shape(lambda: ProxyNet(width, embed_dim, spatial_channels,
                                            rngs=nnx.Rngs(0)))
    load_flat_npz(model, numpy_init_flat(model, seed))
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def _decay_mask(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def evaluate_accuracy(model: ProxyNet, images: np.ndarray, labels: np.ndarray,
                      batch_size: int = 1000) -> float:
    """Top-1 accuracy of the classifier head (eval mode) on uint8 images (N, 32, 32, 3)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(st, x):
        return jnp.argmax(nnx.merge(graphdef, st)(x)["is_logits"], axis=-1)

    correct = 0
    for s in range(0, len(images), batch_size):
        correct += int(np.sum(np.asarray(predict(state, images[s:s + batch_size]))
                              == labels[s:s + batch_size]))
    return correct / len(images)


def train_proxy(images: np.ndarray, labels: np.ndarray, cfg, seed: int = 0,
                mesh: jax.sharding.Mesh | None = None) -> tuple[ProxyNet, dict]:
    """Trains ``ProxyNet`` on uint8 images (N, 32, 32, 3) with int labels (N,).

    SGD (Nesterov momentum 0.9), linear warm-up then cosine decay of ``cfg.proxy_lr``,
    weight decay on kernels, cross-entropy; data parallel over ``mesh`` (axis ``data``).
    Returns the model (eval-ready) and {"steps", "train_seconds", "final_loss"}.
    """
    if len(images) != len(labels):  # else an IndexError deep in the loop
        raise ValueError(f"train_proxy: {len(images)} images but {len(labels)} labels; they "
                         "must pair up one to one")
    mesh = mesh or data_mesh()
    ndev = mesh.devices.size
    bs = -(-cfg.proxy_batch_size // ndev) * ndev
    if len(images) < bs:
        bs = max(ndev, (len(images) // ndev) * ndev)
    graphdef, params, stats = init_proxy(cfg.proxy_width, cfg.proxy_embed_dim,
                                         cfg.proxy_spatial_channels, seed)
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.proxy_lr, cfg.proxy_warmup_steps,
                                               max(cfg.proxy_steps, cfg.proxy_warmup_steps + 1))
    tx = optax.chain(optax.add_decayed_weights(cfg.proxy_weight_decay, _decay_mask),
                     optax.sgd(sched, momentum=0.9, nesterov=True))
    opt_state = tx.init(params)
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params, stats, opt_state = jax.device_put((params, stats, opt_state), repl)

    def step(params, stats, opt_state, x, y, key):
        x = augment(key, x)

        def loss_fn(p):
            # Fresh Variables in this trace: BatchNorm writes its running statistics to them.
            m = nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, stats))
            logits = m(x, train=True)["is_logits"]
            # One-hot rather than a gather: no sharding ambiguity on a batch-split input.
            loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, NUM_CLASSES)).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    jstep = jax.jit(step, in_shardings=(repl, repl, repl, data, data, repl),
                    out_shardings=(repl, repl, repl, repl), donate_argnums=(0, 1, 2))
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    order, pos = rng.permutation(len(images)), 0
    t0, loss = time.time(), None
    for i in range(cfg.proxy_steps):
        if pos + bs > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = order[pos:pos + bs]
        pos += bs
        params, stats, opt_state, loss = jstep(
            params, stats, opt_state, jax.device_put(images[idx], data),
            jax.device_put(labels[idx].astype(np.int32), data), jax.random.fold_in(key, i))
        if cfg.proxy_log_every and (i % cfg.proxy_log_every == 0 or i == cfg.proxy_steps - 1):
            el = time.time() - t0
            logging.info("proxy step %d/%d loss %.4f (%.1f steps/s, ETA %.0f s)", i + 1,
                         cfg.proxy_steps, float(loss), (i + 1) / el,
                         el / (i + 1) * (cfg.proxy_steps - i - 1))
    final_loss = float(loss)
    seconds = time.time() - t0
    model = nnx.merge(graphdef, params, stats)
    return model, {"steps": cfg.proxy_steps, "train_seconds": seconds, "final_loss": final_loss,
                   "batch_size": bs}


def save_proxy(model: ProxyNet, path: str, meta: dict) -> None:
    """Flat ``.npz``: one array per variable path plus a JSON ``__meta__`` (architecture,
    test accuracy, training data) so a loader can rebuild and label the network."""
    arrays = {}
    for kind in (nnx.Param, nnx.BatchStat):
        for p, var in nnx.to_flat_state(nnx.state(model, kind)):
            arrays["/".join(str(x) for x in p)] = np.asarray(var.get_value())
    arrays["__meta__"] = np.array(json.dumps(meta))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_proxy(path: str) -> tuple[ProxyNet, dict]:
    """Inverse of ``save_proxy``: (model in eval mode, meta dict)."""
    from bidm_jax.metrics.weights import load_flat_npz

    arrays = load_npz(path, "proxy feature network")
    if "__meta__" not in arrays:
        raise ValueError(f"{path} is not a proxy feature network file (no __meta__)")
    meta = json.loads(str(arrays.pop("__meta__")))
    model = nnx.eval_shape(lambda: ProxyNet(meta["width"], meta["embed_dim"],
                                            meta["spatial_channels"], rngs=nnx.Rngs(0)))
    load_flat_npz(model, arrays)
    return model, meta
