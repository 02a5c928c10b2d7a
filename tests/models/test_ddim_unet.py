"""The DDIM UNet: exact size of the CIFAR-10 model, shapes, carry pass-through, factory paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax.convert.ddim_cifar10 import default_model_config
from bidm_jax.models import build_unet, count_params
from bidm_jax.models.ddim_unet import timestep_embedding
from bidm_jax.models.layers import FPFactory


def test_cifar10_parameter_count_and_paths():
    factory = FPFactory()
    model = nnx.eval_shape(lambda: build_unet(default_model_config(), rngs=nnx.Rngs(0),
                                              factory=factory))
    assert count_params(model) == 35_746_307
    # every conv/linear was made through the factory, under its official name
    # 328 tensors - 2 x 51 GroupNorms (22 res blocks x 2, 6 attention, norm_out) = 113 x (W, b)
    assert len(factory.paths) == len(set(factory.paths)) == 113
    assert {"conv_in", "conv_out", "temb.dense.0", "down.1.attn.1.proj_out",
            "down.2.downsample.conv", "up.3.upsample.conv", "up.0.block.2.nin_shortcut",
            "mid.attn_1.q"} <= set(factory.paths)


@pytest.fixture(scope="module")
def tiny_fm():
    from bidm_jax.models.functional import Functional
    from tests.conftest import tiny_config
    return Functional(build_unet(tiny_config().model, rngs=nnx.Rngs(0)))


def test_forward_shapes_and_carry(tiny_fm):
    x = jnp.ones((2, 8, 8, 3))
    carry = {"anything": jnp.arange(3)}

    @jax.jit
    def run(p, c):
        feats = {}
        eps, c = tiny_fm(p, x, jnp.array([0, 999]), c, features=feats)
        return eps, c, feats

    eps, out, feats = run(tiny_fm.params, carry)
    assert eps.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(out["anything"], carry["anything"])
    assert feats["up.1.upsample"].shape == (2, 8, 8, 64)
    assert feats["mid.block_2"].shape == (2, 4, 4, 64)


def test_dropout_needs_a_key_and_is_deterministic_per_key(tiny_fm):
    x, t = jnp.ones((2, 8, 8, 3)), jnp.array([5, 6])
    f = jax.jit(lambda p, k: tiny_fm(p, x, t, dropout_rng=k)[0])
    g = jax.jit(lambda p: tiny_fm(p, x, t)[0])
    a, b = g(tiny_fm.params), g(tiny_fm.params)
    c, d = f(tiny_fm.params, jax.random.key(1)), f(tiny_fm.params, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)


def test_timestep_embedding_is_sin_first():
    emb = timestep_embedding(jnp.array([0.0, 1.0]), 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])
    f = np.exp(-np.log(1e4) / 3 * np.arange(4))
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(f), np.cos(f)]), rtol=1e-6)


def test_bad_model_config_lists_choices(tiny):
    cfg = tiny().model
    cfg.dtype = "float16"
    with pytest.raises(ValueError, match="bfloat16"):
        build_unet(cfg, rngs=nnx.Rngs(0))
