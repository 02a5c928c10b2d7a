"""The LDM first-stage autoencoders: exact sizes and layouts (abstract), latent shapes, VQ
lookup and KL posterior semantics on tiny models."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax.models.autoencoder import KL_F8, VQ_F4, build_autoencoder
from bidm_jax.models.functional import Functional, count


@pytest.mark.parametrize("name,n_params,n_tensors,latent", [
    ("vq-f4", 55_322_782, 205, (64, 64, 3)), ("kl-f8", 83_653_863, 248, (32, 32, 4))])
def test_paper_sizes_layout_and_latent_shapes(name, n_params, n_tensors, latent):
    from bidm_jax.convert.ldm import NUM_TENSORS, torch_layout
    model = nnx.eval_shape(lambda: build_autoencoder(name, rngs=nnx.Rngs(0)))
    assert count(model) == n_params
    layout = {k: v.shape for k, v in torch_layout(Functional(model).shapes()).items()}
    assert len(layout) == NUM_TENSORS[name] == n_tensors
    assert model.config.latent_shape == latent
    if name == "vq-f4":  # methods.md §7.2 shapes
        assert layout["encoder.conv_out.weight"] == (3, 512, 3, 3)
        assert layout["quant_conv.weight"] == (3, 3, 1, 1)
        assert layout["quantize.embedding.weight"] == (8192, 3)
        assert layout["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    else:
        assert layout["encoder.conv_out.weight"] == (8, 512, 3, 3)
        assert layout["quant_conv.weight"] == (8, 8, 1, 1)
        assert layout["post_quant_conv.weight"] == (4, 4, 1, 1)
        assert layout["encoder.mid.attn_1.proj_out.weight"] == (512, 512, 1, 1)
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    z = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode_latent(x), state, x)
    y = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode_latent(z), state, z)
    assert z.shape == (1,) + latent and y.shape == (1, 256, 256, 3)


def _tiny(cfg):
    return dataclasses.replace(cfg, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=8,
                               attn_resolutions=(4,), n_embed=16 if cfg.kind == "vq" else 0)


def test_vq_encode_is_unquantized_and_decode_looks_up_the_codebook():
    model = build_autoencoder(_tiny(VQ_F4), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
    h = model.encode(x)
    assert h.shape == (2, 4, 4, 3)
    e = np.asarray(model.quantize.embedding.embedding.get_value())
    flat = np.asarray(h).reshape(-1, 3)
    want = e[np.argmin(((flat[:, None] - e[None]) ** 2).sum(-1), axis=1)].reshape(h.shape)
    np.testing.assert_allclose(model.quantize(h), want, rtol=1e-6)
    assert not np.allclose(want, h)  # encode does not quantize
    np.testing.assert_allclose(model.decode(h), model.decoder(model.post_quant_conv(want)),
                               rtol=1e-5, atol=1e-6)
    assert model.decode_latent(model.encode_latent(x)).shape == (2, 8, 8, 3)


def test_kl_posterior_and_scale_factor():
    model = build_autoencoder(dataclasses.replace(_tiny(KL_F8), scale_factor=0.5),
                              rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 4)
    assert float(logvar.min()) >= -30 and float(logvar.max()) <= 20
    np.testing.assert_allclose(model.encode_latent(x), 0.5 * mean, rtol=1e-6)
    key = jax.random.key(2)
    noise = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(model.encode_latent(x, key),
                               0.5 * (mean + jnp.exp(0.5 * logvar) * noise), rtol=1e-5)
    z = model.encode_latent(x)
    np.testing.assert_allclose(model.decode_latent(z), model.decode(mean), rtol=1e-5, atol=1e-6)
    assert Functional(model).aux == {"scale_factor": 0.5}
