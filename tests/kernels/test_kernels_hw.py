"""Compiled kernels on real hardware against the references (skipped without the device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.kernels import reference as ref
from bidm_jax.kernels.conv import binary_conv2d, binary_conv2d_reference, pack_conv_weights
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.packing import pack_signs
from bidm_jax.kernels.xnor import xnor_popcount_matmul


def _check_matmuls(backend, g):
    ka, kb, kr, kc, km = jax.random.split(jax.random.key(0), 5)
    m, k, n = 200, 2148, 300  # two full groups of 1024 plus tail planes at g = 32
    a, b = jax.random.normal(ka, (m, k)), jax.random.normal(kb, (k, n))
    rs = jax.random.uniform(kr, (m,), minval=0.5, maxval=2)
    cs = jax.random.uniform(kc, (n,), minval=0.5, maxval=2)
    aw, bw = pack_signs(a, 1), pack_signs(b, 0)
    mask = pack_signs(jnp.where(jax.random.bernoulli(km, 0.8, (m, k)), -1.0, 1.0), 1)
    for msk, splits in ((None, 1), (mask, 1), (mask, 3)):
        got = jax.jit(lambda a_, b_, r_, c_: xnor_popcount_matmul(
            a_, b_, k, r_, c_, a_mask=msk, backend=backend, k_splits=splits))(aw, bw, rs, cs)
        np.testing.assert_allclose(got, ref.xnor_popcount_matmul_ref(aw, bw, k, rs, cs, a_mask=msk), rtol=1e-6)
    ww = pack_signs(b, 0, group_words=g)
    for x in (jnp.where(a < 0, -1, 1).astype(jnp.int8), a.astype(jnp.bfloat16)):
        for splits in (1, 2) if backend == "gpu" else (1,):
            got = jax.jit(lambda x, w: packed_matmul(x, w, k, g, rs, cs, backend=backend, k_splits=splits))(x, ww)
            want = ref.packed_matmul_ref(x, ww, k, g, rs, cs)
            tol = dict(rtol=1e-6) if x.dtype == jnp.int8 else dict(rtol=2e-3, atol=2e-2)
            np.testing.assert_allclose(got, want, **tol)


def _check_conv(backend):
    ks = jax.random.split(jax.random.key(1), 6)
    cin, cout = 32, 64
    x = jax.random.normal(ks[0], (4, 8, 8, cin))
    w = 0.05 * jax.random.normal(ks[1], (3, 3, cin, cout))
    p = dict(tau=0.1 * jax.random.normal(ks[2], (cin,)), k_kernel=jnp.full((3, 3, 1, 1), 1 / 9),
             k_bias=0.1, shortcut_scale=0.3, shortcut_kernel=0.1 * jax.random.normal(ks[3], (1, 1, cin, cout)),
             shortcut_bias=jnp.zeros((cout,)))
    packed = pack_conv_weights(w, backend=backend)
    want = binary_conv2d_reference(x, w, stride=1, padding=1, **p)
    for path in ("mxu", "popcount"):
        got = jax.jit(lambda x: binary_conv2d(x, packed, stride=1, padding=1, path=path, backend=backend, **p))(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu_only
def test_gpu_kernels():
    _check_matmuls("gpu", 32)
    _check_conv("gpu")


@pytest.mark.tpu_only
def test_tpu_kernels():
    _check_matmuls("tpu", 8)
    _check_conv("tpu")
