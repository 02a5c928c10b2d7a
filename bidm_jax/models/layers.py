"""Layer factories: the single place where the UNet's convs and linears are made.

The UNet never instantiates ``nnx.Conv``/``nnx.Linear`` itself; it asks a factory for each
layer by its *path* (the official state-dict name, e.g. ``down.1.block.0.conv1``). The FP
factory below gives plain layers; a quantization policy gives binary ones for the same paths,
so students are built without editing the model (design.md §3 "one UNet, many precisions").

Contract (every factory implements it):
  ``conv(path, in_features, out_features, kernel_size, *, stride=1, padding=0, rngs)``
      -> module called as ``y = layer(x)``, x NHWC; ``padding`` is a symmetric integer pad as
      in PyTorch (the Downsample conv uses 0 and the model pads (0,1,0,1) itself).
  ``dense(path, in_features, out_features, *, rngs)`` -> module, x (B, F).
  ``attention(path, channels, *, rngs)`` -> None, or a module ``ops(operand, x) -> x`` applied
      to the attention operands 'q', 'k', 'weights' (after the softmax) and 'v' (a method's
      activation quantizers there; see :func:`attention`).
Parameters are named ``kernel`` ((kh, kw, I, O) or (I, O)) and ``bias`` (O,).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def torch_uniform(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default init for conv/linear weights and
    biases, which the official DDIM code trains with (kaiming_uniform with a=sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):  # inside eval_shape/jit
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        # Eager: draw on the host from the key's bits. XLA's CPU compile of one threefry
        # sampler per parameter shape costs tens of seconds; NumPy costs milliseconds.
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
        return jnp.asarray(np.random.default_rng(seed).uniform(-bound, bound, shape), dtype)

    return init


class FPFactory:
    """Full-precision layers. ``dtype`` is the compute dtype (params stay float32)."""

    def __init__(self, dtype=None):
        self.dtype = dtype
        self.paths: list[str] = []

    def conv(self, path: str, in_features: int, out_features: int, kernel_size: int, *,
             stride: int = 1, padding: int = 0, rngs: nnx.Rngs) -> nnx.Module:
        self.paths.append(path)
        init = torch_uniform(in_features * kernel_size * kernel_size)
        return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride,
                        padding=((padding, padding), (padding, padding)), kernel_init=init,
                        bias_init=init, dtype=self.dtype, rngs=rngs)

    def dense(self, path: str, in_features: int, out_features: int, *,
              rngs: nnx.Rngs) -> nnx.Module:
        self.paths.append(path)
        init = torch_uniform(in_features)
        return nnx.Linear(in_features, out_features, kernel_init=init, bias_init=init,
                          dtype=self.dtype, rngs=rngs)

    def attention(self, path: str, channels: int, *, rngs: nnx.Rngs):
        return None  # FP attention: no operand hook


def attention(q: jax.Array, k: jax.Array, v: jax.Array, ops=None, *, heads: int = 1,
              split_scale: bool = False) -> jax.Array:
    """softmax(q·kᵀ/√ch)·v per head for q, k, v (B, N, C) -> (B, N, C); the softmax in float32.

    ``heads``: head h owns channels [h·ch, (h+1)·ch) of q, k and v, ch = C / heads.
    ``split_scale``: scale q and k each by ch^(-1/4) before their product instead of the
    product by ch^(-1/2) (CompVis ``QKVAttentionLegacy``; the same value, other rounding).
    ops(operand, x) (the factory's attention hook, may be None) sees q and k (B, N, C) before
    their product (after the split scale), the softmax weights ((B, N, N) with one head,
    (B, heads, N, N) with more) and v before theirs."""
    b, n, c = q.shape
    ch = c // heads
    if split_scale:
        q, k = q * ch ** -0.25, k * ch ** -0.25
    if ops is not None:
        q, k, v = ops("q", q), ops("k", k), ops("v", v)
    post_scale = 1.0 if split_scale else ch ** -0.5
    if heads == 1:  # the DDIM UNet's single head, kept as its 3-D products
        w = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * post_scale
        w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
        if ops is not None:
            w = ops("weights", w)
        return jnp.einsum("bij,bjc->bic", w, v)
    q, k, v = (a.reshape(b, n, heads, ch) for a in (q, k, v))
    w = jnp.einsum("bihc,bjhc->bhij", q, k).astype(jnp.float32) * post_scale
    w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
    if ops is not None:
        w = ops("weights", w)
    return jnp.einsum("bhij,bjhc->bihc", w, v).reshape(b, n, c)
