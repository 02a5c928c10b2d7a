"""LSQ, EBB and LRM against methods.md's unit facts (§8 items 9, 11, 13; §4.6 item 2) and
their gradients against the analytic derivatives (BinaryDM Eq. 7/8, LSQ)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.distill import lrm
from bidm_jax.distill.losses import lrm_loss
from bidm_jax.quant import binarizers as B
from bidm_jax.quant import get_quantizer, ste
from tests.distill.test_distill_losses import x64

X_LSQ = np.array([-2.5, -0.3, 0.0, 0.2, 1.9], np.float32)


def test_lsq_4bit_unit_facts():
    """§4.6 item 2: values, dx_q/ds per element (before the grad scale), the STE mask, init."""
    s = jnp.full(5, 0.25, jnp.float32)  # one step per element: the per-element derivative
    x = jnp.asarray(X_LSQ)
    np.testing.assert_allclose(ste.lsq(x, s, 4), [-2.0, -0.25, 0.0, 0.25, 1.75], atol=1e-7)
    ds = jax.grad(lambda s: jnp.sum(ste.lsq(x, s, 4)))(s)
    np.testing.assert_allclose(ds, [-8.0, 0.2, 0.0, 0.2, 7.0], atol=1e-6)
    dx = jax.grad(lambda x: jnp.sum(ste.lsq(x, s, 4)))(x)
    np.testing.assert_array_equal(dx, [0, 1, 1, 1, 0])
    np.testing.assert_allclose(B.lsq_init_scale(x, 4), 0.740810, atol=1e-6)
    # A scalar step sums the per-element terms; lsq_quantize applies g = 1/sqrt(5·7).
    s0 = jnp.asarray(0.25)
    np.testing.assert_allclose(jax.grad(lambda s: jnp.sum(ste.lsq(x, s, 4)))(s0), -0.6,
                               atol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda s: jnp.sum(B.lsq_quantize(x, s, 4)))(s0),
                               -0.6 * 0.169031, atol=1e-5)


def test_lsq_gradients_match_the_lsq_definition():
    """LSQ defines its gradients by differentiating s·round(clip(x/s)) with round's
    derivative taken as 1: autodiff of that formula, written independently, equals the
    custom VJP for a per-output-channel step, w.r.t. both x and s."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    s = jnp.asarray(rng.uniform(0.2, 0.6, 5), jnp.float32)      # some values clip at 3 bits
    c = jnp.asarray(rng.normal(size=w.shape), jnp.float32)

    def definition(w, s):
        v = jnp.clip(w / s, -4, 3)
        return (v + jax.lax.stop_gradient(jnp.round(v) - v)) * s

    ours = jax.grad(lambda w, s: jnp.sum(c * ste.lsq(w, s, 3)), argnums=(0, 1))(w, s)
    ref = jax.grad(lambda w, s: jnp.sum(c * definition(w, s)), argnums=(0, 1))(w, s)
    assert np.any(np.abs(w / s) > 4)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_code_actq_4bit_unit_facts():
    """§8 item 11: the released code's _ActQ at 4 bits (per-batch step) on
    [-1, -0.3, 0, 0.2, 0.9]: step 0.362846, x_q below; no gradient reaches the step."""
    q = get_quantizer("lsq4_dynamic", "activation")
    x = jnp.array([-1.0, -0.3, 0.0, 0.2, 0.9])
    np.testing.assert_allclose(q(x), [-1.088538, -0.362846, 0.0, 0.362846, 0.725692],
                               atol=1e-6)
    levels, step = q.levels(x)
    np.testing.assert_allclose(step, 0.362846, atol=1e-6)
    np.testing.assert_array_equal(levels, [-3, -1, 0, 1, 2])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(q(x)))(x), [1, 1, 1, 1, 1])


def test_ebb_init_unit_facts():
    """§8 item 9: W = [0.5, -0.2, 0.1, -0.4] (one output channel): sigma_I 0.3, sigma_II 0.15,
    W_b = [0.45, -0.15, 0.15, -0.45] through the registry's initialisers."""
    q = get_quantizer("ebb", "weight")
    w = jnp.array([[0.5], [-0.2], [0.1], [-0.4]])
    s1, s2 = (v.init(w, 4) for v in q.variables)
    np.testing.assert_allclose(s1, [0.3], atol=1e-7)
    np.testing.assert_allclose(s2, [0.15], atol=1e-7)
    np.testing.assert_allclose(q(w, sigma1=s1, sigma2=s2)[:, 0], [0.45, -0.15, 0.15, -0.45],
                               atol=1e-7)
    staged = get_quantizer("ebb_staged", "weight")
    np.testing.assert_allclose(staged(w, sigma1=s1, sigma2=s2, second=0.0)[:, 0],
                               [0.3, -0.3, 0.3, -0.3], atol=1e-7)
    planes = staged.plane_fn(w, s1, s2, second=1.0)
    assert len(planes) == 2 and len(staged.plane_fn(w, s1, s2, second=0.0)) == 1


def _ebb_analytic(w, s1, s2, g):
    """Eq. 7 / Eq. 8 and the chain rule through r = w - sigma_I sign w, in numpy."""
    b1 = np.sign(w)
    r = w - s1 * b1
    m_w = (np.abs(w) <= 1).astype(w.dtype)
    m_r = (np.abs(r) < 1).astype(w.dtype)
    d1 = np.sum(g * b1 * (1 - s2 * m_r), axis=0)                # Eq. 7
    d2 = np.sum(g * np.sign(r), axis=0)                          # Eq. 8
    dw = g * (s1 * m_w + s2 * m_r * (1 - s1 * m_w))
    return dw, d1, d2


def test_ebb_gradients_are_eq7_and_eq8():
    """The custom VJP equals the closed forms and the autodiff of the released code's
    formulation (W1 = s1·BinaryQuantize(W), W2 = s2·BinaryQuantize(W − W1))."""
    rng = np.random.default_rng(1)
    w = rng.normal(scale=0.8, size=(18, 6)).astype(np.float32)   # some |w| > 1
    s1 = rng.uniform(0.3, 1.2, 6).astype(np.float32)             # some |r| > 1
    s2 = rng.uniform(0.1, 0.9, 6).astype(np.float32)
    g = rng.normal(size=w.shape).astype(np.float32)
    _, vjp = jax.vjp(B.ebb_weight, jnp.asarray(w), jnp.asarray(s1), jnp.asarray(s2))
    dw, d1, d2 = vjp(jnp.asarray(g))
    ew, e1, e2 = _ebb_analytic(w, s1, s2, g)
    np.testing.assert_allclose(dw, ew, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d1, e1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d2, e2, rtol=1e-5, atol=1e-5)
    assert np.any(np.abs(w - s1 * np.sign(w)) >= 1) and np.any(np.abs(w) > 1)

    def code_form(w, s1, s2):
        w1 = s1 * ste.sign_ste(w)
        return w1 + s2 * ste.sign_ste(w - w1)

    _, vjp_code = jax.vjp(code_form, jnp.asarray(w), jnp.asarray(s1), jnp.asarray(s2))
    for ours, theirs in zip((dw, d1, d2), vjp_code(jnp.asarray(g))):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


S_FEAT = (np.arange(128) / 64).reshape(1, 2, 8, 8).transpose(0, 2, 3, 1)   # NCHW -> NHWC
T_FEAT = np.cos(np.arange(128)).reshape(1, 2, 8, 8).transpose(0, 2, 3, 1)


def test_lrm_code_semantics_unit_fact():
    """§8 item 13: code mode (width axis, exact PCA) on the SPD example, q = 2: 2.237200."""
    with x64():
        v = lrm_loss([jnp.asarray(S_FEAT)], [jnp.asarray(T_FEAT)], mode="code", k=4)
        np.testing.assert_allclose(float(v), 2.237200, atol=1e-6)
    assert lrm.rank((1, 8, 8, 2), "code", 4) == (8, 2)
    assert lrm.rank((1, 8, 8, 130), "paper", 4) == (130, 33)   # ⌈c/K⌉


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_lrm_sees_only_the_teacher_subspace(mode):
    """The projection has orthonormal columns spanning the teacher's dominant directions:
    a student differing from the teacher only outside that subspace has zero loss, inside
    it a positive one; the loss is the mean over features."""
    rng = np.random.default_rng(2)
    b, h, w, c = 4, 8, 8, 16
    basis = np.linalg.qr(rng.normal(size=(c, c)))[0]
    coef = rng.normal(size=(b, h, w, c)) * np.array([10.0] * 4 + [0.01] * 12)
    t = jnp.asarray(coef @ basis.T, jnp.float32)
    p = lrm.projection(t, mode, 4)
    n, q = lrm.rank(t.shape, mode, 4)
    assert p.shape == (n, q)
    np.testing.assert_allclose(p.T @ p, np.eye(q), atol=1e-5)
    if mode == "paper":  # the 4 dominant channel directions are the kept ones
        off = jnp.asarray(rng.normal(size=(b, h, w, c - 4)) @ basis[:, 4:].T, jnp.float32)
        on = jnp.asarray(rng.normal(size=(b, h, w, 4)) @ basis[:, :4].T, jnp.float32)
        inside = float(lrm.term(t + on, t, p, mode))
        assert inside > 0.5 and float(lrm.term(t + off, t, p, mode)) < 1e-6 * inside
    s = t + 0.1
    both = lrm_loss([s, s * 2], [t, t], mode=mode)
    np.testing.assert_allclose(float(both), float(np.mean([lrm_loss([s], [t], mode=mode),
                                                           lrm_loss([s * 2], [t], mode=mode)])),
                               rtol=1e-5)
