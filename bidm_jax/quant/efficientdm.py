"""EfficientDM's quantizers (He et al., ICLR 2024; methods.md §5) in the quantizer registry.

* ``affine{b}_lora{r}`` (weights): QALoRA, the channel-wise asymmetric uniform quantizer of
  W + B·A (:mod:`bidm_jax.quant.affine`, offset form): per output channel a step Δ
  (``weight_delta``, (O,)) and zero point (``weight_zp``, (O,)) initialised by the clipping
  search on the loaded teacher kernel, and the LoRA factors ``lora_a`` ((kh, kw, I, r) /
  (I, r); PyTorch's kaiming-uniform(a=√5) = U(±1/√fan_in)) and ``lora_b`` ((r, O), zeros), so
  the initial quantized weight is the plain quantized W. For a conv, A is a kh×kw conv to r
  channels and B a 1×1 conv (the code's ``QuantModule_intnlora``), i.e. ΔW = A·B over r.
  ``affine{b}`` is the same without LoRA (8-bit first/last layers; ``quant.lora_rank=0``).
* ``talsq{b}_{S}x{stride}[+{first}]`` (activations): TALSQ, a per-layer asymmetric uniform
  quantizer with one (Δ, z) per sampling step (``talsq_delta``, ``talsq_zp``: (S,)). The
  step of a sample is the position of its timestep t in the sampler's ascending grid
  {first, first + stride, …}: (t − first) // stride clipped to [0, S − 1]
  (:func:`bidm_jax.diffusion.samplers.ddim_timesteps`; t between grid points, as in 1000-step
  DDPM sampling, uses the grid step below it). t is the enclosing model call's
  (:func:`bidm_jax.models.functional.current_timestep`). The values are set by calibration
  (every step from one batch, or each step from its own trajectory states: the method's
  ``quant.talsq_init``) and trained.
* ``affine{b}`` (activations): one (Δ, z) per layer (``act_delta``, ``act_zp``), calibrated:
  the code's 8-bit first and last layers.

A ``_code`` suffix on an activation quantizer selects the code form of the zero point
(``quant.zp_form='code'``; no integer export). Names carry their static settings (bits,
rank, step grid), so :func:`weight_name` / :func:`act_name` register them on first use.
Every multi-bit entry has ``levels`` with ``zero_point=True``: (signed levels, Δ, z − 2^(b−1))
with fn(x) = Δ·(levels − z'), what the packed integer core runs (:mod:`bidm_jax.quant.packed`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bidm_jax.models.functional import current_timestep
from bidm_jax.models.layers import torch_uniform
from bidm_jax.quant import registry
from bidm_jax.quant.affine import affine_levels, affine_quantize, mse_search
from bidm_jax.quant.registry import QVar, Quantizer

__all__ = ["WEIGHT_DELTA", "WEIGHT_ZP", "LORA_A", "LORA_B", "TALSQ_DELTA", "TALSQ_ZP",
           "ACT_DELTA", "ACT_ZP", "weight_name", "act_name", "talsq_name", "lora_delta",
           "step_index"]

# Layer attributes (checkpoint names {layer}.{attr}); the method's learning rates key on them.
WEIGHT_DELTA, WEIGHT_ZP, LORA_A, LORA_B = "weight_delta", "weight_zp", "lora_a", "lora_b"
TALSQ_DELTA, TALSQ_ZP = "talsq_delta", "talsq_zp"
ACT_DELTA, ACT_ZP = "act_delta", "act_zp"
PLACEHOLDER_STEP = 1.0  # activation steps before calibration (always calibrated before use)


def lora_delta(shape: tuple, lora_a: jax.Array, lora_b: jax.Array) -> jax.Array:
    """ΔW = A·B as a kernel of ``shape`` ((kh, kw, I, O) / (I, O)): A (..., r), B (r, O)."""
    k = math.prod(shape[:-1])
    return (lora_a.reshape(k, -1) @ lora_b).reshape(shape)


def _lora_a_init(rank: int):
    def init(w, in_features):
        shape = tuple(w.shape[:-1]) + (rank,)
        if isinstance(w, jax.core.Tracer):  # an abstract build: only the shape matters
            key = jax.random.key(0)
        else:
            # A per-layer key without an rng argument: the bits of the layer's initial
            # (seeded, random) kernel sum, so A differs per layer and follows config.seed.
            seed = np.float32(np.sum(np.asarray(w, np.float32))).view(np.uint32)
            key = jax.random.key(int(seed))
        return torch_uniform(math.prod(shape[:-1]))(key, shape)
    return init


def _weight_vars(bits: int, rank: int) -> tuple[QVar, ...]:
    # W + B·A with B = 0 is W: the search runs on the loaded teacher kernel (from_kernel).
    out = (QVar("delta", WEIGHT_DELTA, lambda w, i: mse_search(w, bits, True)[0],
                from_kernel=True),
           QVar("zp", WEIGHT_ZP, lambda w, i: mse_search(w, bits, True)[1], from_kernel=True))
    if rank:
        out += (QVar("lora_a", LORA_A, _lora_a_init(rank)),
                QVar("lora_b", LORA_B, lambda w, i: jnp.zeros((rank, w.shape[-1]), jnp.float32)))
    return out


def _weight(bits: int, rank: int) -> Quantizer:
    def merged(w, lora_a=None, lora_b=None):
        return w if lora_a is None else w + lora_delta(w.shape, lora_a, lora_b).astype(w.dtype)

    def fn(w, delta, zp, **lora):
        return affine_quantize(merged(w, **lora), delta, zp, bits)

    def levels(w, delta, zp, **lora):  # the export merges the LoRA into W once
        return affine_levels(merged(w, **lora), delta, zp, bits)

    lora = f" + LoRA rank {rank} (W + B·A quantized)" if rank else ""
    return Quantizer(weight_name(bits, rank, register=False), "weight", bits, fn,
                     _weight_vars(bits, rank),
                     f"asymmetric {bits}-bit, per-output-channel step and zero point "
                     f"(clipping-search init){lora}, STE", levels=levels, zero_point=True)


def step_index(t: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """Position of each timestep t (B,) in the ascending grid (first, stride, count)."""
    first, stride, count = grid
    return jnp.clip((t.astype(jnp.int32) - first) // stride, 0, count - 1)


def _per_sample(values: jax.Array, idx: jax.Array, ndim: int) -> jax.Array:
    """values[idx] (B,) shaped (B, 1, …) to broadcast over a (B, …) input of rank ``ndim``."""
    return jnp.asarray(values)[idx].reshape((-1,) + (1,) * (ndim - 1))


def _act(bits: int, form: str, grid: tuple[int, int, int] | None) -> Quantizer:
    per_step = grid is not None
    n = grid[2] if per_step else None
    fill = (lambda v: jnp.full((n,), v, jnp.float32)) if per_step else (lambda v: v)
    names = (TALSQ_DELTA, TALSQ_ZP) if per_step else (ACT_DELTA, ACT_ZP)
    # Calibration: the clipping search on the layer input. Per step, it fills every entry;
    # the method keeps the entry of the step the batch came from (quant.talsq_init).
    init = lambda v: (lambda w, i: fill(jnp.asarray(v, jnp.float32)))
    variables = (QVar("delta", names[0], init(PLACEHOLDER_STEP),
                      calibrate=lambda x: fill(mse_search(x, bits)[0])),
                 QVar("zp", names[1], init(0.0), calibrate=lambda x: fill(mse_search(x, bits)[1])))

    def pick(x, delta, zp):
        if not per_step:
            return delta, zp
        idx = step_index(current_timestep(), grid)
        return _per_sample(delta, idx, x.ndim), _per_sample(zp, idx, x.ndim)

    def fn(x, delta, zp):
        return affine_quantize(x, *pick(x, delta, zp), bits, form)

    levels = None
    if form == "offset":
        levels = lambda x, delta, zp: affine_levels(x, *pick(x, delta, zp), bits)
    what = (f"one step and zero point per sampling step ({n} steps)" if per_step
            else "one step and zero point per layer")
    name = talsq_name(bits, grid, form, register=False) if per_step else act_name(
        bits, form, register=False)
    return Quantizer(name, "activation", bits, fn, variables,
                     f"asymmetric {bits}-bit, {what}, calibrated by clipping search, STE",
                     levels=levels, zero_point=levels is not None)


def _ensure(kind: str, name: str, build) -> str:
    if name not in registry.list_quantizers(kind):
        registry.register(build())
    return name


def weight_name(bits: int, rank: int, register: bool = True) -> str:
    """Registry name of the asymmetric weight quantizer (registered on first use)."""
    name = f"affine{bits}" + (f"_lora{rank}" if rank else "")
    return _ensure("weight", name, lambda: _weight(bits, rank)) if register else name


def act_name(bits: int, form: str = "offset", register: bool = True) -> str:
    """Registry name of the per-layer asymmetric activation quantizer."""
    name = f"affine{bits}" + ("_code" if form == "code" else "")
    return _ensure("activation", name, lambda: _act(bits, form, None)) if register else name


def talsq_name(bits: int, grid: tuple[int, int, int], form: str = "offset",
               register: bool = True) -> str:
    """Registry name of the TALSQ quantizer over the timestep grid (first, stride, count)."""
    first, stride, count = (int(v) for v in grid)
    name = (f"talsq{bits}_{count}x{stride}" + (f"+{first}" if first else "")
            + ("_code" if form == "code" else ""))
    grid = (first, stride, count)
    return (_ensure("activation", name, lambda: _act(bits, form, grid)) if register
            else name)


# The defaults of the registered method (W4A4, rank 32, DDIM 100 of 1000 steps, ermongroup).
DEFAULT_WEIGHT = weight_name(4, 32)
DEFAULT_ACT = talsq_name(4, (0, 10, 100))
