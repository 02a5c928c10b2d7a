"""Fréchet distance (FID/sFID): identities, Gaussian closed form, matrix square root vs SciPy."""
import warnings

import numpy as np
import pytest
from scipy import linalg

from bidm_jax.metrics.fid import (compute_statistics, fid_from_features, frechet_distance,
                                  sqrtm_product, trace_sqrt_product)


def _ill_conditioned_cov(rng, d, cond):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.logspace(0, -np.log10(cond), d)
    return (q * eig) @ q.T


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(fid_from_features(x, x)) < 1e-8
    assert abs(fid_from_features(x, x, method="eigh")) < 1e-8


def test_fid_of_gaussian_samples_matches_closed_form():
    # N(0, I) vs N(m, s^2 I) in D dims: d^2 = |m|^2 + D (1 - s)^2.
    rng = np.random.default_rng(1)
    d, n, s = 8, 200_000, 2.0
    m = np.full(d, 0.5)
    x = rng.normal(size=(n, d))
    y = m + s * rng.normal(size=(n, d))
    exact = d * 0.25 + d * (1 - s) ** 2  # = 10.0
    assert fid_from_features(x, y) == pytest.approx(exact, rel=0.01)
    # On the exact statistics the formula is exact.
    assert frechet_distance(np.zeros(d), np.eye(d), m, s**2 * np.eye(d)) == pytest.approx(exact)


def test_trace_sqrt_product_matches_scipy_on_ill_conditioned_covariances():
    rng = np.random.default_rng(2)
    for cond in (1e3, 1e6, 1e9):
        s1 = _ill_conditioned_cov(rng, 32, cond)
        s2 = _ill_conditioned_cov(rng, 32, cond)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = np.trace(linalg.sqrtm(s1 @ s2)).real
        assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-7, abs=1e-9)
        root = sqrtm_product(s1, s2)
        assert np.isrealobj(root)
        np.testing.assert_allclose(root @ root, s1 @ s2, atol=1e-8)


def test_singular_product_uses_eps_offset_and_agrees_with_eigh():
    # Fewer samples than dimensions -> rank-deficient covariances, as with small sample sets.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.3
    mu1, s1 = compute_statistics(a)
    mu2, s2 = compute_statistics(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d_scipy = frechet_distance(mu1, s1, mu2, s2)
    d_eigh = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    assert np.isfinite(d_scipy)
    assert d_scipy == pytest.approx(d_eigh, rel=1e-3)


def test_frechet_distance_returns_python_float_and_accepts_jax_arrays():
    import jax.numpy as jnp
    out = frechet_distance(jnp.zeros(3), jnp.eye(3), jnp.ones(3), jnp.eye(3))
    assert type(out) is float and out == pytest.approx(3.0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3), method="svd")
    with pytest.raises(ValueError, match="features"):
        compute_statistics(np.zeros((1, 3)))
