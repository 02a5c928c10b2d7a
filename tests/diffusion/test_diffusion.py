"""Schedules, loss, DDIM/DDPM samplers (methods.md §1.1, §1.4, §8 item 7)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bidm_jax.diffusion import losses, samplers, schedules


def test_schedules():
    b = schedules.make_betas("linear", 1e-4, 2e-2, 1000)
    assert b[0] == 1e-4 and b[-1] == 2e-2 and len(b) == 1000
    s = schedules.make_betas("sqrt_linear", 0.0015, 0.0195, 1000)
    np.testing.assert_allclose([s[0], s[-1]], [0.0015, 0.0195])
    np.testing.assert_allclose(s[500], (np.sqrt(0.0015) + 500 / 999 * (np.sqrt(0.0195) - np.sqrt(0.0015))) ** 2)
    abar = schedules.alphas_cumprod(b)
    np.testing.assert_allclose(abar[1], (1 - 1e-4) * (1 - b[1]))
    with pytest.raises(ValueError, match="linear, sqrt_linear|'linear', 'sqrt_linear'"):
        schedules.make_betas("cosine", 1e-4, 2e-2, 1000)


def test_ddim_timestep_sets():
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 100, "ermongroup"),
                                  np.arange(0, 1000, 10))
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 100, "ldm"),
                                  np.arange(1, 1000, 10))
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 200, "ldm")[[0, 1, -1]], [1, 6, 996])
    abar = schedules.alphas_cumprod(schedules.make_betas("linear", 1e-4, 2e-2, 1000))
    ts = samplers.ddim_timesteps(1000, 100, "ldm")
    a, ap = samplers.ddim_alpha_pairs(abar, ts, "ldm")
    assert ap[0] == abar[0] and ap[1] == abar[1] and a[-1] == abar[991]
    a, ap = samplers.ddim_alpha_pairs(abar, samplers.ddim_timesteps(1000, 100), "ermongroup")
    assert ap[0] == 1.0 and ap[5] == abar[40]


def test_antithetic_timesteps():
    # ermongroup: draw B//2+1, append T-1-t, keep B → t[5:8] mirrors t[0:3] for B = 8
    t = np.asarray(losses.sample_timesteps(jax.random.key(0), 8, 1000))
    np.testing.assert_array_equal(t[5:], 999 - t[:3])
    t = losses.sample_timesteps(jax.random.key(0), 7, 1000)
    assert t.shape == (7,) and int(t.max()) < 1000


def test_eps_loss_reductions():
    e = jnp.zeros((2, 4, 4, 3))
    n = jnp.ones((2, 4, 4, 3))
    assert float(losses.eps_loss(e, n, "sum")) == 48.0
    assert float(losses.eps_loss(e, n, "mean")) == 1.0
    with pytest.raises(ValueError, match="sum"):
        losses.eps_loss(e, n, "l1")


def oracle(x0, abar):
    """ε̂ that is exactly right for a known x0: ε = (x_t − √ᾱ x0)/√(1−ᾱ)."""
    abar = jnp.asarray(abar, jnp.float32)

    def fn(x, t, carry):
        a = abar[t][:, None, None, None]
        return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a), carry
    return fn


@pytest.mark.parametrize("convention", ["ermongroup", "ldm"])
def test_ddim_with_exact_eps_recovers_x0(convention):
    abar = schedules.alphas_cumprod(schedules.make_betas("linear", 1e-4, 2e-2, 1000))
    x0 = jax.random.uniform(jax.random.key(1), (2, 4, 4, 3), minval=-1, maxval=1)
    xT = jax.random.normal(jax.random.key(2), x0.shape)
    out, _ = samplers.ddim_sample(oracle(x0, abar), xT, abar, steps=20, convention=convention)
    # η = 0 with the exact ε keeps x on √ᾱ x0 + √(1−ᾱ) ε* (ε* fixed by x_T); the last step
    # lands on ᾱ_prev = 1 (ermongroup: x0 itself) or ᾱ_prev = ᾱ[0] (ldm).
    ts = samplers.ddim_timesteps(1000, 20, convention)
    eps_star = (xT - np.sqrt(abar[ts[-1]]) * x0) / np.sqrt(1 - abar[ts[-1]])
    a_end = 1.0 if convention == "ermongroup" else abar[0]
    np.testing.assert_allclose(out, np.sqrt(a_end) * x0 + np.sqrt(1 - a_end) * eps_star,
                               atol=1e-4)


def test_ddim_eta0_deterministic_and_carry_threads_through():
    abar = schedules.alphas_cumprod(schedules.make_betas("linear", 1e-4, 2e-2, 1000))
    xT = jax.random.normal(jax.random.key(2), (2, 4, 4, 3))

    def model(x, t, carry):
        return 0.1 * x + 0.001 * t[:, None, None, None], carry + 1

    a, ca = samplers.ddim_sample(model, xT, abar, steps=10, carry=jnp.int32(0), rng=jax.random.key(0))
    b, _ = samplers.ddim_sample(model, xT, abar, steps=10, carry=jnp.int32(0), rng=jax.random.key(9))
    np.testing.assert_array_equal(a, b)  # η = 0 ignores the key
    assert int(ca) == 10
    c, _ = samplers.ddim_sample(model, xT, abar, steps=10, eta=1.0, carry=jnp.int32(0),
                                rng=jax.random.key(9))
    assert not np.allclose(a, c)


def test_ddpm_with_exact_eps_recovers_x0():
    abar = schedules.alphas_cumprod(schedules.make_betas("linear", 1e-4, 2e-2, 1000))
    x0 = jax.random.uniform(jax.random.key(1), (2, 4, 4, 3), minval=-0.9, maxval=0.9)
    xT = jax.random.normal(jax.random.key(2), x0.shape)
    for var_type in samplers.VAR_TYPES:
        out, _ = samplers.ddpm_sample(oracle(x0, abar), xT, abar, steps=50, var_type=var_type,
                                      rng=jax.random.key(3))
        np.testing.assert_allclose(out, x0, atol=1e-3)


def test_to_uint8_truncates_like_reference():
    x = jnp.array([-2.0, -1.0, 0.0, 0.999, 1.0])
    np.testing.assert_array_equal(samplers.to_uint8(x), [0, 0, 127, 254, 255])
