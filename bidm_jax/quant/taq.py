"""Q-DM's Timestep-aware Quantization (TaQ): normalise and smooth an attention operand before
its quantizer (methods.md §4.2 items 6–7, §4.4).

The paper's text is not available (methods.md §4.1): that TaQ sits in the attention blocks and
works as normalise → smooth → quantize is what secondary sources say; everything below the
mode names is this project's reading, each alternative behind ``quant.taq*`` (docs/qdm.md).

For an operand x (B, N, C) (N spatial positions, C channels) and per-channel statistics
(μ, σ²), TaQ returns x̃ = γ·(x − μ)/√(σ² + ε) + β with learnable γ, β (C,):

* ``batch_ema`` (default): in training μ, σ² are the **biased** moments over the whole
  minibatch (which mixes timesteps) and all positions, like BatchNorm; an EMA of them
  (momentum m: r ← (1−m)·r + m·batch) is auxiliary state and is what sampling uses, so a
  sample does not depend on the rest of its batch. The running variance tracks the biased
  (Flax) or unbiased (PyTorch BatchNorm, n/(n−1)) batch variance per ``variance``
  (methods.md §4.6 item 3: 1.025 vs 1.066667 after one step).
* ``per_t_bucket``: the same with one set of statistics per timestep group
  (bucket = ⌊t·buckets/T⌋, TDQ-like); in training each sample is normalised with the moments
  of the samples of its own bucket in the batch, and only the buckets present advance.
* ``online``: per-sample moments over the positions, in training and at sampling (no running
  statistics; Q-ViT's information rectification style).

A calibration pass (aux mode 'calibrate') normalises with the batch moments and *sets* the
running statistics to them (every bucket to the batch's), so sampling right after calibration
is consistent and the LSQ step calibrated after TaQ sees the normalised operand.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bidm_jax.models.functional import Aux, current_aux_mode, current_timestep

__all__ = ["TaQ", "TaQSpec", "TaQStats", "MODES", "VARIANCES", "AFFINE_INITS", "moments",
           "ema", "bucket_of"]

MODES = ("batch_ema", "online", "per_t_bucket", "off")
VARIANCES = ("biased", "unbiased")
AFFINE_INITS = ("unit", "calibrated")


class TaQStats(Aux):
    """TaQ running mean / variance (auxiliary state: checkpointed, resumed, used by sampling)."""


@dataclasses.dataclass(frozen=True)
class TaQSpec:
    """What a method asks of TaQ on one attention block (see the module docstring).

    operands: which of 'q', 'k', 'v' are normalised. num_timesteps: T of the diffusion (the
    bucket width is T/buckets). affine_init: 'unit' (γ = 1, β = 0, methods.md §4.4) or
    'calibrated' (γ = √(σ²+ε), β = μ of the calibration batch: TaQ starts as the identity on
    it, so the initialised student's attention equals the teacher's up to quantization).
    """

    mode: str = "batch_ema"
    operands: tuple = ("q", "k")
    buckets: int = 10
    momentum: float = 0.1
    variance: str = "biased"
    eps: float = 1e-5
    num_timesteps: int = 1000
    affine_init: str = "unit"

    def __post_init__(self):
        for field, choices in (("mode", MODES), ("variance", VARIANCES),
                               ("affine_init", AFFINE_INITS)):
            if getattr(self, field) not in choices:
                raise ValueError(f"TaQ {field}={getattr(self, field)!r} is invalid; valid "
                                 f"choices: {', '.join(choices)}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"TaQ momentum={self.momentum} must be in (0, 1]")
        if self.buckets < 1 or self.buckets > self.num_timesteps:
            raise ValueError(f"TaQ buckets={self.buckets} must be in [1, T={self.num_timesteps}]")

    @property
    def tracks_statistics(self) -> bool:
        return self.mode in ("batch_ema", "per_t_bucket")


def moments(x: jax.Array, axes) -> tuple[jax.Array, jax.Array]:
    """(mean, biased variance) of x over ``axes`` in float32 (two-pass: stable)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)
    return mean, var


def ema(running: jax.Array, batch: jax.Array, momentum: float) -> jax.Array:
    """r ← (1 − m)·r + m·batch (PyTorch momentum m = Flax momentum 1 − m)."""
    return (1.0 - momentum) * running + momentum * batch


def bucket_of(t: jax.Array, buckets: int, num_timesteps: int) -> jax.Array:
    """Timestep group ⌊t·buckets/T⌋ of timesteps t (B,), clipped to [0, buckets)."""
    b = (jnp.asarray(t, jnp.int32) * buckets) // num_timesteps
    return jnp.clip(b, 0, buckets - 1)


def _bucket_moments(x, onehot):
    """Per-bucket (mean, biased var, element count) of x (B, N, C) under onehot (B, K)."""
    n = x.shape[1]
    count = jnp.sum(onehot, axis=0) * n                                     # (K,)
    safe = jnp.maximum(count, 1.0)[:, None]
    mean = jnp.einsum("bk,bnc->kc", onehot, x) / safe                       # (K, C)
    centred = x - jnp.einsum("bk,kc->bc", onehot, mean)[:, None, :]
    var = jnp.einsum("bk,bnc->kc", onehot, jnp.square(centred)) / safe
    return mean, var, count


class TaQ(nnx.Module):
    """TaQ on one operand with C channels (see the module docstring); called on (B, N, C)."""

    def __init__(self, channels: int, spec: TaQSpec):
        self.spec = spec
        self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))
        if spec.tracks_statistics:
            k = spec.buckets if spec.mode == "per_t_bucket" else 1
            self.running_mean = TaQStats(jnp.zeros((k, channels), jnp.float32))
            self.running_var = TaQStats(jnp.ones((k, channels), jnp.float32))

    def _unbias(self, var, count):
        if self.spec.variance == "biased":
            return var
        return var * count / jnp.maximum(count - 1.0, 1.0)

    def _statistics(self, x):
        """(mean, var) broadcastable to x (B, N, C), advancing/setting the running ones."""
        spec, mode = self.spec, current_aux_mode()
        if spec.mode == "online":
            mean, var = moments(x, 1)
            return mean[:, None], var[:, None]
        learning = mode in ("train", "calibrate")
        if spec.mode == "batch_ema":
            if not learning:
                return self.running_mean[...][0], self.running_var[...][0]
            mean, var = moments(x, (0, 1))
            count = jnp.float32(x.shape[0] * x.shape[1])
            present = jnp.ones((1,), bool)
            batch_mean, batch_var = mean[None], self._unbias(var, count)[None]
            per_sample = (mean, var)
        else:  # per_t_bucket
            bucket = bucket_of(current_timestep(), spec.buckets, spec.num_timesteps)
            if not learning:
                return (self.running_mean[...][bucket][:, None],
                        self.running_var[...][bucket][:, None])
            onehot = jax.nn.one_hot(bucket, spec.buckets, dtype=jnp.float32)
            bmean, bvar, count = _bucket_moments(x.astype(jnp.float32), onehot)
            present = count > 0
            batch_mean, batch_var = bmean, self._unbias(bvar, count[:, None])
            per_sample = (bmean[bucket][:, None], bvar[bucket][:, None])
        if mode == "calibrate":
            # Every bucket starts from the calibration batch's overall moments.
            mean_all, var_all = moments(x, (0, 1))
            k = self.running_mean[...].shape[0]
            self.running_mean[...] = jnp.broadcast_to(mean_all, (k, mean_all.shape[0]))
            self.running_var[...] = jnp.broadcast_to(var_all, (k, var_all.shape[0]))
            if spec.affine_init == "calibrated":
                self.gamma[...] = jnp.sqrt(var_all + spec.eps)
                self.beta[...] = mean_all
        else:
            stop = jax.lax.stop_gradient
            keep = present[:, None]
            self.running_mean[...] = jnp.where(
                keep, ema(self.running_mean[...], stop(batch_mean), spec.momentum),
                self.running_mean[...])
            self.running_var[...] = jnp.where(
                keep, ema(self.running_var[...], stop(batch_var), spec.momentum),
                self.running_var[...])
        return per_sample

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.spec.mode == "off":
            return x
        mean, var = self._statistics(x)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.spec.eps)
        return (y * self.gamma[...] + self.beta[...]).astype(x.dtype)
