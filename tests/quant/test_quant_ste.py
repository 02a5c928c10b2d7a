"""Estimators: forward values and gradients against their analytic derivatives."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.quant import ste


def _grads(fn, xs, *args):
    g = jax.jit(jax.vmap(jax.grad(lambda x: fn(x, *args))))
    return np.asarray(g(jnp.asarray(xs, jnp.float32)))


def test_approx_sign_unit_facts():
    # methods.md §8 item 10.
    xs = [-0.5, 0.0, 0.25, -1.0, 1.0, -1.5, 2.0]
    np.testing.assert_allclose(_grads(ste.approx_sign, xs), [1.0, 2.0, 1.5, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ste.approx_sign(jnp.asarray([-0.3, 0.0, 0.7]))),
                                  [-1.0, 0.0, 1.0])


def _approx_sign_F(x):
    # Bi-Real's piecewise-quadratic surrogate whose derivative ApproxSign uses.
    inner = np.where(x < 0, x * x + 2 * x, np.where(x < 1, -x * x + 2 * x, 1.0))
    return np.where(x < -1, -1.0, inner)


def test_approx_sign_grad_matches_finite_difference_of_surrogate():
    xs = np.array([-1.7, -0.9, -0.31, -0.02, 0.13, 0.5, 0.99, 1.2])
    h = 1e-4
    fd = (_approx_sign_F(xs + h) - _approx_sign_F(xs - h)) / (2 * h)
    np.testing.assert_allclose(_grads(ste.approx_sign, xs), fd, atol=1e-3)


def test_sign_ste_forward_and_clipped_grad():
    xs = [-2.0, -1.0, -0.4, 0.0, 0.6, 1.0, 1.3]
    np.testing.assert_array_equal(np.asarray(ste.sign_ste(jnp.asarray(xs))), np.sign(xs))
    np.testing.assert_array_equal(_grads(ste.sign_ste, xs), [0, 1, 1, 1, 1, 1, 0])


def test_sign_identity_grad_is_one():
    np.testing.assert_array_equal(_grads(ste.sign_identity, [-3.0, 0.2, 5.0]), [1, 1, 1])


@pytest.mark.parametrize("o", [1.0, 2.0, 3.0])
def test_reste_grad_matches_power_function_derivative(o):
    # Away from kinks the ReSTE derivative is d/dx sign(x)|x|^(1/o).
    xs = np.array([-1.4, -0.7, -0.2, 0.15, 0.5, 1.1])
    h = 1e-5
    f = lambda x: np.sign(x) * np.abs(x) ** (1.0 / o)
    fd = (f(xs + h) - f(xs - h)) / (2 * h)
    np.testing.assert_allclose(_grads(ste.reste_sign, xs, jnp.float32(o)), fd, rtol=2e-3)


def test_reste_grad_inner_interval_and_threshold():
    o = 2.0
    g = _grads(ste.reste_sign, [-0.05, 0.0, 0.08, 1.6, -2.0], jnp.float32(o), 1.5)
    secant = 0.1 ** (1 / o) / 0.1  # slope of |x|^(1/o) from 0 to 0.1
    np.testing.assert_allclose(g, [secant, secant, secant, 0.0, 0.0], rtol=1e-6)
    # o receives no gradient: it is a schedule value.
    go = jax.grad(lambda o: jnp.sum(ste.reste_sign(jnp.asarray([0.3, -0.5]), o)))(2.0)
    assert float(go) == 0.0


def test_reste_o_schedule():
    o = [float(ste.reste_o_schedule(p, 3.0)) for p in (0.0, 0.5, 1.0, 2.0)]
    np.testing.assert_allclose(o, [1.0, 1.0 + (1 - math.cos(math.pi / 4)) * 2, 3.0, 3.0],
                               rtol=1e-6)


def test_round_ste_and_grad_scale():
    x = jnp.asarray([0.4, 1.5, 2.5, -0.6])
    np.testing.assert_array_equal(np.asarray(ste.round_ste(x)), [0.0, 2.0, 2.0, -1.0])
    np.testing.assert_array_equal(_grads(ste.round_ste, [0.4, 1.7]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(ste.grad_scale(x, 0.5)), np.asarray(x))
    np.testing.assert_allclose(_grads(lambda v: ste.grad_scale(v * v, 0.25), [3.0]), [1.5])
