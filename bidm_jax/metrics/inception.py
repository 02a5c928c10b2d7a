"""The FID variant of InceptionV3 in Flax NNX (methods.md §6).

This is the network of the TensorFlow graph ``inception-2015-12-05`` that FID, sFID, IS and
precision/recall were defined on, in the layer naming of pytorch-fid's port (so the
pytorch-fid weights file converts by name, see ``weights.py``). It differs from the usual
torchvision InceptionV3 in three places, all reproduced here:

* the average-pool branches of the A, C and first E blocks do not count padded zeros
  (TensorFlow's ``AvgPool`` with SAME padding);
* the last E block (``Mixed_7c``) uses a 3x3 *max* pool in its pool branch;
* the classifier is 1008-way (``fc``), with weights and bias.

Outputs (all float32; ``B`` = batch):

* ``pool``  (B, 2048): global average of ``Mixed_7c``; TF ``pool_3`` (FID, precision/recall, KID).
* ``logits`` (B, 1008): ``pool @ fc.kernel + fc.bias``; pytorch-fid's ``fc``.
* ``logits_unbiased`` (B, 1008): ``pool @ fc.kernel``. ADM's IS uses exactly this (it reads
  the ``softmax/logits/MatMul`` weight and skips the bias), so IS uses it too.
* ``spatial`` (B, 2023): TF ``mixed_6/conv`` = pytorch-fid ``Mixed_6d.branch1x1`` (1x1 conv,
  BN, ReLU; 17x17x192), first 7 channels, flattened in (H, W, C) order as ADM's NHWC reshape.
  The TF scopes ``mixed``, ``mixed_1`` ... ``mixed_10`` are pytorch-fid's Mixed_5b, 5c, 5d,
  6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c, and ``conv`` inside a C block is its 1x1 branch.

Inputs are preprocessed by :func:`preprocess` (uint8 -> 299x299 in [-1, 1]).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PREPROCESS_MODES = ("adm", "pytorch_fid")
INPUT_SIZE = 299
NUM_LOGITS = 1008
POOL_DIM = 2048
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023


# ----------------------------------------------------------------------------- preprocessing

def bilinear_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """(out_size, in_size) float64 matrix M with ``resized = M @ signal`` along one axis.

    ``mode="pytorch_fid"``: ``F.interpolate(..., mode="bilinear", align_corners=False)``
    (half-pixel centres, source coordinate clamped at 0, no antialiasing).
    ``mode="adm"``: TensorFlow 1.x ``ResizeBilinear`` with align_corners=False and no
    half-pixel centres (source = dst * in/out), which the TF graph used by ADM applies.
    """
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    if mode == "pytorch_fid":
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    else:
        src = dst * scale
    lo = np.floor(src).astype(np.int64)
    lo = np.minimum(lo, in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def preprocess(images: jax.Array, mode: str = "adm", precision=jax.lax.Precision.HIGHEST
               ) -> jax.Array:
    """uint8 (or float in [0, 255]) images (B, H, W, 3) -> float32 (B, 299, 299, 3) in [-1, 1].

    ``adm``: TF1 resize of the [0, 255] values, then ``(x - 128) / 128`` (the TF graph's own
    ``Sub``/``Mul`` nodes). ``pytorch_fid``: ``x / 255``, PyTorch bilinear resize, ``2x - 1``.
    The resize is separable, so it is two small matmuls with fixed interpolation matrices.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    _, h, w, _ = images.shape
    mh = jnp.asarray(bilinear_matrix(h, INPUT_SIZE, mode), jnp.float32)
    mw = jnp.asarray(bilinear_matrix(w, INPUT_SIZE, mode), jnp.float32)
    x = images.astype(jnp.float32)
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=precision)
    x = jnp.einsum("pw,bowc->bopc", mw, x, precision=precision)
    if mode == "adm":
        return (x - 128.0) / 128.0
    return 2.0 * (x / 255.0) - 1.0


# ----------------------------------------------------------------------------- layers

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *, precision, rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(cin, cout, _pair(kernel), _pair(stride), padding=((ph, ph), (pw, pw)),
                             use_bias=False, precision=precision, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x):
    # TF's SAME average pool divides by the number of real (unpadded) inputs in each window.
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                        count_include_pad=False)


def _max_pool(x, stride=2, padding="VALID"):
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nnx.Module):
    """pytorch-fid FIDInceptionA (35x35 blocks Mixed_5b/5c/5d)."""

    def __init__(self, cin, pool_features, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch1x1 = BasicConv2d(cin, 64, 1, **c)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, **c)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **c)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **c)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, **c)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, **c)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **c)

    def __call__(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
    """pytorch-fid FIDInceptionC (17x17 blocks Mixed_6b..6e); ``c7`` = channels_7x7."""

    def __init__(self, cin, c7, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch1x1 = BasicConv2d(cin, 192, 1, **c)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, **c)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, **c)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **c)
        self.branch_pool = BasicConv2d(cin, 192, 1, **c)

    def __call__(self, x, return_1x1: bool = False):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        out = jnp.concatenate([b1, b7, bd, bp], axis=-1)
        return (out, b1) if return_1x1 else out


class InceptionD(nnx.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, **c)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **c)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, **c)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **c)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **c)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
    """pytorch-fid FIDInceptionE_1 (``max_pool=False``) / FIDInceptionE_2 (``max_pool=True``)."""

    def __init__(self, cin, max_pool: bool, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, **c)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, **c)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, **c)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **c)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch_pool = BasicConv2d(cin, 192, 1, **c)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(t), self.branch3x3_2b(t)], axis=-1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], axis=-1)
        # The FID graph's last block max-pools here (pytorch-fid FIDInceptionE_2).
        pooled = _max_pool(x, 1, ((1, 1), (1, 1))) if self.max_pool else _avg_pool_no_pad(x)
        bp = self.branch_pool(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nnx.Module):
    """FID InceptionV3 (23,850,960 parameters: 94 conv+BN layers and a 2048->1008 fc).

    ``precision`` is passed to every conv: ``HIGHEST`` (default) keeps full float32 on GPUs
    whose default would be TF32, which matters when comparing against a reference evaluator.
    """

    def __init__(self, *, precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs):
        c = dict(precision=precision, rngs=rngs)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **c)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **c)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **c)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **c)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **c)
        self.Mixed_5b = InceptionA(192, 32, **c)
        self.Mixed_5c = InceptionA(256, 64, **c)
        self.Mixed_5d = InceptionA(288, 64, **c)
        self.Mixed_6a = InceptionB(288, **c)
        self.Mixed_6b = InceptionC(768, 128, **c)
        self.Mixed_6c = InceptionC(768, 160, **c)
        self.Mixed_6d = InceptionC(768, 160, **c)
        self.Mixed_6e = InceptionC(768, 192, **c)
        self.Mixed_7a = InceptionD(768, **c)
        self.Mixed_7b = InceptionE(1280, max_pool=False, **c)
        self.Mixed_7c = InceptionE(2048, max_pool=True, **c)
        self.fc = nnx.Linear(POOL_DIM, NUM_LOGITS, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """x: preprocessed (B, 299, 299, 3) float32 in [-1, 1] -> dict of features (see module)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x)
        x = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, mixed_6_conv = self.Mixed_6d(x, return_1x1=True)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = jnp.mean(x, axis=(1, 2))
        spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
        w = self.fc.kernel[...]
        unbiased = jnp.dot(pool, w, precision=self.fc.precision)
        return {"pool": pool, "logits": unbiased + self.fc.bias[...],
                "logits_unbiased": unbiased, "spatial": spatial}


def inception_features(model: FIDInceptionV3, images: jax.Array, mode: str = "adm"
                       ) -> dict[str, jax.Array]:
    """uint8 images (B, H, W, 3) -> the model's feature dict (preprocessing included)."""
    return model(preprocess(images, mode))


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param leaves; BN running statistics excluded)."""
    state = nnx.state(model, nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def param_shapes(model: nnx.Module, kinds: Sequence[type] = (nnx.Param, nnx.BatchStat)
                 ) -> dict[str, tuple[int, ...]]:
    """Flat ``'a/b/c' -> shape`` of the model's variables (used by the weight loader)."""
    out = {}
    for kind in kinds:
        for path, leaf in nnx.to_flat_state(nnx.state(model, kind)):
            out["/".join(str(p) for p in path)] = tuple(leaf.shape)
    return out
