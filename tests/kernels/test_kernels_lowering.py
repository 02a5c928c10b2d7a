"""The kernels lower for TPU (Mosaic, via jax.export) and GPU (Triton) without the hardware.

This runs the Pallas -> Mosaic / Triton-IR lowering.  The device compilers' own passes
(Mosaic layout/LLO, Triton -> PTX) run only on the hardware and are covered by the
tpu_only / gpu_only tests in test_kernels_hw.py.
"""

import jax
import jax.numpy as jnp
import pytest

from bidm_jax.kernels.conv import binary_conv2d, pack_conv_weights
from bidm_jax.kernels.packed_matmul import packed_matmul
from bidm_jax.kernels.xnor import xnor_popcount_matmul

S = jax.ShapeDtypeStruct
F32, I32 = jnp.float32, jnp.int32


def _export_text(fn, *specs):
    exp = jax.export.export(jax.jit(fn), platforms=["tpu"])(*specs)
    return exp.mlir_module()


@pytest.mark.parametrize("k,masked", [(1000, False), (8192, True)])
def test_xnor_lowers_for_tpu(k, masked):
    kw = -(-k // 32)
    specs = [S((256, kw), I32), S((kw, 256), I32), S((256,), F32), S((256,), F32)]
    if masked:
        fn = lambda a, b, r, c, m: xnor_popcount_matmul(a, b, k, r, c, a_mask=m, backend="tpu")
        specs.append(S((256, kw), I32))
    else:
        fn = lambda a, b, r, c: xnor_popcount_matmul(a, b, k, r, c, backend="tpu")
    assert "tpu_custom_call" in _export_text(fn, *specs)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.bfloat16])
@pytest.mark.parametrize("k,g", [(1152, 36), (8192, 128)])
def test_packed_matmul_lowers_for_tpu(dtype, k, g):
    fn = lambda x, w, r, c: packed_matmul(x, w, k, g, r, c, backend="tpu")
    text = _export_text(fn, S((512, k), dtype), S((k // 32, 256), I32), S((512,), F32), S((256,), F32))
    assert "tpu_custom_call" in text


@pytest.mark.parametrize("path", ["mxu", "popcount"])
def test_binary_conv_lowers_for_tpu(path):
    packed = pack_conv_weights(jnp.ones((3, 3, 128, 128)), backend="tpu")
    p = dict(tau=jnp.zeros((128,)), k_kernel=jnp.full((3, 3, 1, 1), 1 / 9), shortcut_scale=0.3)
    fn = lambda x: binary_conv2d(x, packed, padding=1, path=path, backend="tpu", **p)
    assert "tpu_custom_call" in _export_text(fn, S((2, 8, 8, 128), F32))


def _lower_for_cuda(fn, *specs):
    # jax.export refuses to serialize Triton custom calls (no compatibility guarantee), so
    # lower without serializing; this still runs the full Pallas -> Triton IR lowering.
    return jax.jit(fn).trace(*specs).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("masked,splits", [(False, 1), (True, 3)])
def test_xnor_lowers_for_gpu(masked, splits):
    k, kw = 2148, 68
    specs = [S((96, kw), I32), S((kw, 128), I32)] + ([S((96, kw), I32)] if masked else [])
    fn = lambda a, b, *m: xnor_popcount_matmul(a, b, k, a_mask=m[0] if m else None, backend="gpu",
                                               k_splits=splits)
    assert "triton" in _lower_for_cuda(fn, *specs)


@pytest.mark.parametrize("dtype,g", [(jnp.int8, 32), (jnp.bfloat16, 16)])
@pytest.mark.parametrize("splits,pps", [(1, 32), (2, 8)])
def test_packed_matmul_lowers_for_gpu(dtype, g, splits, pps):
    k = 2148
    fn = lambda x, w: packed_matmul(x, w, k, g, backend="gpu", k_splits=splits, planes_per_step=pps)
    nw = -(-k // (32 * g)) * g
    assert "triton" in _lower_for_cuda(fn, S((96, k), dtype), S((nw, 128), I32))
