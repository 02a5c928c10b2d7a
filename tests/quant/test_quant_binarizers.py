"""Weight/activation binarizers and LSQ: unit facts and analytic gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.quant import binarizers as B
from bidm_jax.quant import get_quantizer, list_quantizers


def test_weight_binarizer_unit_fact():
    # methods.md §8 item 8: one output row -> dense kernel (I=4, O=1).
    w = jnp.asarray([[0.5], [-0.2], [0.1], [-0.4]])
    np.testing.assert_allclose(np.asarray(B.per_channel_abs_mean(w)), [0.3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(B.weight_channel_detached(w))[:, 0],
                               [0.3, -0.3, 0.3, -0.3], rtol=1e-6)


def test_weight_binarizer_gradient_mask_and_detached_alpha():
    w = jnp.asarray([[1.5], [-0.2], [0.1], [-1.4], [0.9]])
    c = jnp.asarray([[1.0], [2.0], [3.0], [4.0], [5.0]])
    g = jax.grad(lambda w: jnp.sum(B.weight_channel_detached(w) * c))(w)
    # alpha is detached: only the STE mask 1[|W| <= 1] remains.
    np.testing.assert_allclose(np.asarray(g)[:, 0], [0, 2, 3, 0, 5])


def test_per_output_channel_reduces_all_but_last_axis():
    w = np.random.RandomState(0).randn(3, 3, 4, 5).astype(np.float32)
    alpha = np.abs(w).reshape(-1, 5).mean(0)
    wb = np.asarray(B.weight_channel_detached(jnp.asarray(w)))
    np.testing.assert_allclose(wb, alpha * np.sign(w), rtol=1e-6)


def test_xnor_exact_gradient():
    w = np.array([[0.5, 1.2], [-0.2, -0.3], [0.1, 2.0], [-0.4, 0.7]], np.float32)
    c = np.random.RandomState(1).randn(*w.shape).astype(np.float32)
    g = np.asarray(jax.grad(lambda w: jnp.sum(B.weight_xnor_exact(w) * c))(jnp.asarray(w)))
    alpha = np.abs(w).mean(0)
    np.testing.assert_allclose(g, c * (1 / 4 + alpha * (np.abs(w) <= 1)), rtol=1e-6)


def test_learnable_scale_gradients():
    w = jnp.asarray([[0.5, -1.5], [-0.2, 0.3]])
    sigma = jnp.asarray([0.7, 0.2])
    c = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    gw, gs = jax.grad(lambda w, s: jnp.sum(B.weight_learnable_scale(w, s) * c), (0, 1))(w, sigma)
    np.testing.assert_allclose(np.asarray(gs), [1.0 - 3.0, -2.0 + 4.0])
    np.testing.assert_allclose(np.asarray(gw), [[0.7, 0.0], [2.1, 0.8]], rtol=1e-6)


def test_dorefa_weight_layer_mean_and_identity_grad():
    w = jnp.asarray([[0.5, -0.1], [-0.2, 0.8]])
    np.testing.assert_allclose(np.asarray(B.weight_dorefa(w)), 0.4 * np.sign(np.asarray(w)),
                               rtol=1e-6)
    g = jax.grad(lambda w: jnp.sum(B.weight_dorefa(w) * jnp.asarray([[1.0, 2.0], [3.0, 4.0]])))(w)
    np.testing.assert_allclose(np.asarray(g), [[1.0, 2.0], [3.0, 4.0]], rtol=1e-6)


def test_reste_weight_gradient_includes_scale_path():
    w = np.array([[0.5, -0.3], [0.2, -1.2], [1.7, 0.4]], np.float32)
    c = np.random.RandomState(2).randn(*w.shape).astype(np.float32)
    o = 2.0
    g = np.asarray(jax.grad(lambda w: jnp.sum(B.weight_reste(w, o) * c))(jnp.asarray(w)))
    m, n = np.abs(w).mean(), w.size
    ax = np.abs(w)
    d = np.where(ax <= 1.5, (1 / o) * ax ** ((1 - o) / o), 0.0)
    expected = m * c * d + np.sign(w) / n * np.sum(c * np.sign(w))
    np.testing.assert_allclose(g, expected, rtol=1e-5)


def test_rsign_gradients_reach_x_and_tau():
    x = jnp.asarray([[-0.8, 0.1], [0.3, 1.4]])
    tau = jnp.asarray([0.2, -0.4])
    y = B.act_rsign(x, tau)
    np.testing.assert_array_equal(np.asarray(y), np.sign(np.asarray(x + tau)))
    gx, gt = jax.grad(lambda x, t: jnp.sum(B.act_rsign(x, t)), (0, 1))(x, tau)
    d = np.maximum(2 - 2 * np.abs(np.asarray(x + tau)), 0)
    np.testing.assert_allclose(np.asarray(gx), d, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gt), d.sum(0), rtol=1e-6)


def test_rsign_linear_code_forward_ignores_tau():
    x = jnp.asarray([[-0.1, 0.3]])
    tau = jnp.asarray([0.5, -0.5])
    np.testing.assert_array_equal(np.asarray(B.act_rsign_linear_code(x, tau)), [[-1.0, 1.0]])
    gt = jax.grad(lambda t: jnp.sum(B.act_rsign_linear_code(x, t)))(tau)
    np.testing.assert_allclose(np.asarray(gt), [2 - 2 * 0.4, 2 - 2 * 0.2], rtol=1e-6)


def test_dorefa_activation_is_zero_one_with_clip_grad():
    x = jnp.asarray([-0.5, 0.2, 0.6, 1.3])
    np.testing.assert_array_equal(np.asarray(B.act_dorefa(x)), [0.0, 0.0, 1.0, 1.0])
    g = jax.vmap(jax.grad(lambda v: B.act_dorefa(v)))(x)
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 1.0, 0.0])


def test_lsq_unit_facts():
    # methods.md §4.6 item 2 (signed 4-bit, Q_N=8, Q_P=7).
    x = jnp.asarray([-2.5, -0.3, 0.0, 0.2, 1.9])
    s = jnp.asarray(0.25)
    np.testing.assert_allclose(np.asarray(B.lsq_quantize(x, s, 4)), [-2.0, -0.25, 0.0, 0.25, 1.75])
    g = 1 / math.sqrt(5 * 7)
    ds = jax.jacrev(lambda s: B.lsq_quantize(x, s, 4))(s)
    np.testing.assert_allclose(np.asarray(ds) / g, [-8, 0.2, 0, 0.2, 7], atol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(ds)) / g, -0.6, atol=1e-5)
    assert abs(g - 0.169031) < 1e-6
    dx = jax.vmap(jax.grad(lambda v: B.lsq_quantize(v, s, 4, num_elements=5)))(x)
    np.testing.assert_array_equal(np.asarray(dx), [0, 1, 1, 1, 0])
    np.testing.assert_allclose(float(B.lsq_init_scale(x, 4)), 0.740810, atol=1e-6)
    with pytest.raises(ValueError):
        B.lsq_levels(0)


def test_box_filter_scale_matches_manual_average():
    x = np.random.RandomState(3).randn(1, 5, 5, 3).astype(np.float32)
    k = np.asarray(B.box_filter_scale(jnp.asarray(x), 3, 1, 1))
    a = np.pad(np.abs(x).mean(-1), ((0, 0), (1, 1), (1, 1)))
    manual = np.stack([[a[0, i:i + 3, j:j + 3].mean() for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(k[0, :, :, 0], manual, rtol=1e-5)


def test_xnorpp_gamma_outer_product():
    g = np.asarray(B.xnorpp_gamma(jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, 4.0, 5.0]),
                                  jnp.asarray([6.0, 7.0])))
    assert g.shape == (3, 2, 2)
    assert g[2, 1, 1] == 5.0 * 7.0 * 2.0


def test_registry_precision_and_errors():
    assert get_quantizer("channel_detached", "weight").precision == 1
    assert get_quantizer("fp", "activation").precision == 32
    assert "rsign" in list_quantizers("activation")
    with pytest.raises(ValueError, match="valid choices"):
        get_quantizer("nope", "weight")
