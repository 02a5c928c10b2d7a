"""Pallas matmul kernels (interpret mode) against the jnp references on fresh random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.kernels import reference as ref
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import pack_signs
from bidm_jax.kernels.xnor import xnor_popcount_matmul

M, K, N = 20, 100, 40  # K not a multiple of 32; M, N not multiples of the tiles used


def _operands(seed, m=M, k=K, n=N):
    ka, kb, kr, kc = jax.random.split(jax.random.key(seed), 4)
    a = jax.random.normal(ka, (m, k))
    b = jax.random.normal(kb, (k, n))
    rs = jax.random.uniform(kr, (m,), minval=0.5, maxval=2.0)
    cs = jax.random.uniform(kc, (n,), minval=0.5, maxval=2.0)
    return a, b, rs, cs


def _pm1(x):
    return jnp.where(x < 0, -1.0, 1.0)


@jax.jit
def _refs_vs_float(a, b, rs, cs, valid):
    hi = jax.lax.Precision.HIGHEST
    scale = rs[:, None] * cs[None, :]
    aw, bw = pack_signs(a, 1), pack_signs(b, 0)
    x8 = _pm1(a).astype(jnp.int8)
    return dict(
        xnor=(ref.xnor_popcount_matmul_ref(aw, bw, K, rs, cs), jnp.dot(_pm1(a), _pm1(b), precision=hi) * scale),
        packed=(ref.packed_matmul_ref(x8, pack_signs(b, 0, group_words=2), K, 2, rs, cs),
                jnp.dot(_pm1(a), _pm1(b), precision=hi) * scale),
        # masked: masked-out positions contribute 0 and K_m counts valid bits.
        masked=(ref.xnor_popcount_matmul_ref(aw, bw, K, rs, cs, a_mask=pack_signs(jnp.where(valid, -1.0, 1.0), 1)),
                jnp.dot(_pm1(a) * valid, _pm1(b), precision=hi) * scale),
    )


def test_references_match_float_dot():
    a, b, rs, cs = _operands(0)
    valid = jax.random.bernoulli(jax.random.key(9), 0.7, (M, K))
    for name, (got, exact) in _refs_vs_float(a, b, rs, cs, valid).items():
        np.testing.assert_allclose(got, exact, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "backend,blocks",
    [("tpu", dict(block_m=8, block_n=128)), ("gpu", dict(block_m=16, block_n=16, block_k_words=3, k_splits=2))],
)
@pytest.mark.parametrize("masked", [False, True])
def test_xnor_kernel(backend, blocks, masked):
    a, b, rs, cs = _operands(1 + masked)
    aw, bw = pack_signs(a, 1), pack_signs(b, 0)
    mask = None
    if masked:
        valid = jax.random.bernoulli(jax.random.key(3), 0.6, (M, K))
        mask = pack_signs(jnp.where(valid, -1.0, 1.0), 1)
    want = jax.jit(ref.xnor_popcount_matmul_ref, static_argnums=2)(aw, bw, K, rs, cs, a_mask=mask)
    got = jax.jit(lambda a_, b_, r_, c_: xnor_popcount_matmul(
        a_, b_, K, r_, c_, a_mask=mask, backend=backend, interpret=True, **blocks))(aw, bw, rs, cs)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_xnor_kernel_tpu_multi_k_step():
    # Kw = 132 > 128 words: two K grid steps through the VMEM accumulator.
    a, b, rs, cs = _operands(4, m=8, k=4200, n=16)
    aw, bw = pack_signs(a, 1), pack_signs(b, 0)
    got = jax.jit(lambda a_, b_, r_, c_: xnor_popcount_matmul(a_, b_, 4200, r_, c_, backend="tpu",
                                                              interpret=True))(aw, bw, rs, cs)
    want = jax.jit(ref.xnor_popcount_matmul_ref, static_argnums=2)(aw, bw, 4200, rs, cs)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "backend,g,k,kw,act",
    [
        ("tpu", 8, 600, dict(block_m=16, block_n=128), "int8"),  # 3 groups (last one padded)
        ("tpu", 4, K, {}, "bf16"),  # single group: the whole (padded) K in one block
        ("gpu", 32, 600, dict(block_m=16, block_n=16), "int8"),  # tail planes only
        ("gpu", 16, 600, dict(block_m=16, block_n=16), "bf16"),  # 1 full group + 6 tail planes
        ("gpu", 32, 2148, dict(block_m=16, block_n=32, k_splits=2), "int8"),  # split-K + tail
    ],
)
def test_packed_matmul_kernel(backend, g, k, kw, act):
    a, b, rs, cs = _operands(5, k=k)
    x = _pm1(a).astype(jnp.int8) if act == "int8" else a.astype(jnp.bfloat16)
    ww = pack_signs(b, 0, group_words=g)
    want = jax.jit(ref.packed_matmul_ref, static_argnums=(2, 3))(x, ww, k, g, rs, cs)
    got = jax.jit(lambda x_, w_, r_, c_: packed_matmul(
        x_, w_, k, g, r_, c_, backend=backend, interpret=True, **kw))(x, ww, rs, cs)
    # int8 path is exact; bf16 path sums bf16 products in float32 (order differs).
    tol = dict(rtol=1e-6) if act == "int8" else dict(rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got, want, **tol)


def test_bad_arguments():
    a, b, rs, cs = _operands(6)
    aw, bw = pack_signs(a, 1), pack_signs(b, 0)
    with pytest.raises(ValueError, match="backend"):
        xnor_popcount_matmul(aw, bw, K, backend="cuda-ish")
    with pytest.raises(ValueError, match="int32"):
        xnor_popcount_matmul(aw.astype(jnp.uint32), bw, K)
    with pytest.raises(ValueError, match="words"):
        packed_matmul(_pm1(a).astype(jnp.int8), bw, K, 8)
    with pytest.raises(ValueError, match="power of two"):
        packed_matmul(_pm1(a).astype(jnp.int8), pack_signs(b, 0, group_words=16), K, 16, backend="gpu")
