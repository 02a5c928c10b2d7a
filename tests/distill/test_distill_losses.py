"""SPD, L2 feature distillation and the total loss (methods.md §2.6-2.7, §8 item 12)."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.distill.losses import (l2_feature_loss, noise_loss, spd_loss, spd_patch_terms,
                                     total_loss)


@contextlib.contextmanager
def x64():
    """float64 for the spec's unit facts (jax.enable_x64 on new JAX, experimental on old)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:
        from jax.experimental import enable_x64 as ctx
        with ctx():
            yield
    else:
        with ctx(True):
            yield


_spd = jax.jit(spd_loss, static_argnames=("patches", "form"))


def _spec_features():
    s = (np.arange(128) / 64).reshape(1, 2, 8, 8)  # NCHW, float64
    t = np.cos(np.arange(128)).reshape(1, 2, 8, 8)
    return jnp.asarray(s.transpose(0, 2, 3, 1)), jnp.asarray(t.transpose(0, 2, 3, 1))


def _torch_like_reference(s, t, p=4):
    """Independent NCHW numpy transcription of the official per-patch loop (§2.6)."""
    s, t = np.transpose(s, (0, 3, 1, 2)), np.transpose(t, (0, 3, 1, 2))
    w = s.shape[3]
    interval = w // p
    starts = [int(v) for v in np.linspace(0, w, p, endpoint=False)]
    total = 0.0
    for i in starts:
        for j in starts:
            ps = s[:, :, i:i + interval, j:j + interval]
            pt = t[:, :, i:i + interval, j:j + interval]
            a_s, a_t = ps @ np.swapaxes(ps, 2, 3), pt @ np.swapaxes(pt, 2, 3)
            if a_s.size == 0:
                continue
            total += np.linalg.norm(a_s / np.linalg.norm(a_s) - a_t / np.linalg.norm(a_t))
    return total / p ** 2


def test_spd_unit_facts():
    with x64():
        s, t = _spec_features()
        assert s.dtype == jnp.float64
        terms = spd_patch_terms(s, t)
        assert terms.shape == (4, 4)
        assert float(jnp.sum(terms)) == pytest.approx(16.694652, abs=1e-6)
        assert float(spd_loss([s], [t])) == pytest.approx(1.043416, abs=1e-6)
        assert float(1e-2 * spd_loss([s], [t])) == pytest.approx(0.010434, abs=1e-6)
        assert float(spd_loss([3 * s], [t])) == pytest.approx(1.043416, abs=1e-6)
        assert float(spd_loss([-2 * s], [t])) == pytest.approx(1.043416, abs=1e-6)
        assert float(spd_loss([t], [t])) == 0.0
        crop = spd_patch_terms(s[:, :4, :4], t[:, :4, :4])
        assert float(jnp.sum(crop)) == pytest.approx(11.196556, abs=1e-6)
        assert np.all((np.asarray(terms) >= 0) & (np.asarray(terms) <= 2))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 6, 6, 2), (2, 2, 2, 4)])
def test_spd_matches_reference_loop(shape):
    rng = np.random.RandomState(sum(shape))
    s, t = rng.randn(*shape), rng.randn(*shape)
    with x64():
        got = float(spd_loss([jnp.asarray(s)], [jnp.asarray(t)]))
    assert got == pytest.approx(_torch_like_reference(s, t), abs=1e-9)


def test_spd_mean_over_features_and_paper_form():
    rng = np.random.RandomState(0)
    a, b, c, d = (jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32) for _ in range(4))
    both = _spd([a, c], [b, d])
    assert float(both) == pytest.approx((float(_spd([a], [b])) + float(_spd([c], [d]))) / 2,
                                        rel=1e-5)
    # batch 1: per-sample normalisation (paper) equals whole-tensor normalisation (code)
    assert float(_spd([a[:1]], [b[:1]], form="paper")) == pytest.approx(
        float(_spd([a[:1]], [b[:1]])), rel=1e-5)
    assert float(_spd([a], [b], form="paper")) != pytest.approx(float(_spd([a], [b])), rel=1e-4)
    with pytest.raises(ValueError, match="choose one of"):
        spd_loss([a], [b], form="bogus")
    with pytest.raises(ValueError, match="equal shape"):
        spd_loss([a], [a[:, :4]])


def test_spd_gradients_finite_and_teacher_detached():
    rng = np.random.RandomState(1)
    s = jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32)
    # at s == t the (non-squared) norm has a kink: the gradient must stay finite, not NaN
    gs, gt = jax.jit(jax.grad(lambda s, t: spd_loss([s], [t]), (0, 1)))(s, s)
    assert np.all(np.isfinite(np.asarray(gs)))
    gz = jax.jit(jax.grad(lambda s: spd_loss([s], [jnp.zeros_like(s)])))(s)  # all-zero teacher Gram
    assert np.all(np.isfinite(np.asarray(gz)))
    t = jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32)
    gs, gt = jax.jit(jax.grad(lambda s, t: spd_loss([s], [t]), (0, 1)))(s, t)
    assert np.abs(np.asarray(gs)).sum() > 0 and np.abs(np.asarray(gt)).max() == 0.0


def test_l2_noise_and_total_loss():
    rng = np.random.RandomState(2)
    e, ep = (jnp.asarray(rng.randn(2, 4, 4, 3), jnp.float32) for _ in range(2))
    f_s, f_t = (jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32) for _ in range(2))
    d = np.asarray(ep) - np.asarray(e)
    expected = (d ** 2).reshape(2, -1).sum(1).mean()
    assert float(noise_loss(ep, e)) == pytest.approx(expected, rel=1e-5)
    assert float(noise_loss(ep, e, reduction="mean", loss_type="l1")) == pytest.approx(
        np.abs(d).mean(), rel=1e-5)
    assert float(l2_feature_loss([f_s], [f_t])) == pytest.approx(
        ((np.asarray(f_s) - np.asarray(f_t)) ** 2).mean(), rel=1e-5)
    loss, parts = total_loss(ep, e, [f_s], [f_t], distill="spd", weight=1e-2)
    assert float(loss) == pytest.approx(float(parts["noise"]) + 1e-2 * float(parts["distill"]),
                                        rel=1e-6)
    assert float(parts["distill"]) == pytest.approx(float(spd_loss([f_s], [f_t])), rel=1e-6)
    loss, parts = total_loss(ep, e, distill="none")
    assert float(loss) == pytest.approx(float(noise_loss(ep, e)), rel=1e-6)
    with pytest.raises(ValueError, match="choose one of"):
        total_loss(ep, e, distill="kl")
