"""Quantized layers through QuantFactory: every method forward/backward, policy, references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from bidm_jax.methods import W1A1, get_method
from bidm_jax.models.functional import Functional
from bidm_jax.quant import QConv, QDense, QuantFactory, fp_factory, trace, validate_quant_config
from tests.conftest import quant_config, tiny_config

BINARY = ("down.0.block.0.conv1", "down.0.block.0.temb_proj", "down.0.downsample.conv",
          "mid.attn_1.q")


def _cfg(method_name, **kw):
    return quant_config(method_name, **kw)


def _inputs():
    x = jnp.asarray(np.random.RandomState(1).randn(2, 8, 8, 3), jnp.float32)
    t = jnp.asarray([3, 700], jnp.int32)
    return x, t


def _build(toy_cls, method, **kw):
    sizes = None
    if method == "xnor++":
        fp = toy_cls(fp_factory(), nnx.Rngs(0))
        sizes = trace.output_sizes(trace.trace_layers(fp, (1, 8, 8, 3)))
    factory = QuantFactory(_cfg(method, **kw), layer_sizes=sizes)
    return toy_cls(factory, nnx.Rngs(0)), factory


def _layers(model):
    return {m.spec.path: m for _, m in nnx.iter_modules(model) if isinstance(m, (QConv, QDense))}


def _np(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.RandomState(seed).randn(*shape), jnp.float32)


@pytest.mark.parametrize("method", ("fp",) + W1A1)
def test_method_forward_backward(toy_cls, method):
    model, factory = _build(toy_cls, method, shortcut_scale_init=0.3)
    expected_binary = [] if method == "fp" else list(BINARY)
    assert sorted(factory.binary_paths) == sorted(expected_binary)
    x, t = _inputs()
    h = _np(2, (2, 8, 8, 8))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params, rest):
        def loss(p):
            y = nnx.merge(graphdef, p, rest)(x, t)
            return jnp.mean(jnp.square(y - 0.1)), y
        (value, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
        layers = _layers(nnx.merge(graphdef, params, rest))
        wbs = {p: layers[p]._quant_weight() for p in expected_binary}
        xb = layers["down.0.block.0.conv1"]._quant_act(h, dense=False) if expected_binary else h
        return value, y, grads, wbs, xb

    loss, y, grads, wbs, xb = run(params, rest)
    assert y.shape == (2, 4, 4, 16)
    assert np.isfinite(float(loss))
    flat = nnx.to_flat_state(grads)
    assert len(flat) == len(nnx.to_flat_state(params))
    for path, g in flat:
        assert np.all(np.isfinite(np.asarray(g[...]))), (method, path)
    assert np.abs(np.asarray(grads["conv1"]["kernel"][...])).sum() > 0, method

    layers = _layers(model)
    for path in expected_binary:
        wb, k = np.asarray(wbs[path]), np.asarray(layers[path].kernel[...])
        absw = np.abs(wb).reshape(-1, wb.shape[-1])
        # one magnitude per output channel (or per layer), signs of the latent weights
        np.testing.assert_allclose(absw, np.broadcast_to(absw[:1], absw.shape), rtol=1e-6)
        np.testing.assert_array_equal(np.sign(wb), np.sign(k))
        if method in ("dorefa", "reste"):
            np.testing.assert_allclose(absw[0], np.abs(k).mean(), rtol=1e-5)
        elif method == "xnor++":
            np.testing.assert_array_equal(absw[0], 1.0)
        else:
            np.testing.assert_allclose(absw[0], np.abs(k).reshape(-1, k.shape[-1]).mean(0),
                                       rtol=1e-5)
    if expected_binary:
        allowed = {0.0, 1.0} if method == "dorefa" else {-1.0, 0.0, 1.0}
        assert set(np.unique(np.asarray(xb)).tolist()) <= allowed


def _conv(x, w, s=1, p=0):
    return lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _rand_layer(cfg, path, cin, cout, k, stride=1, padding=1):
    layer = QuantFactory(cfg).conv(path, cin, cout, k, stride=stride, padding=padding,
                                   rngs=nnx.Rngs(4))
    if hasattr(layer, "tau"):
        layer.tau[...] = _np(10, layer.tau[...].shape, 0.3)
    if hasattr(layer, "rprelu"):
        layer.rprelu.shift_in[...] = _np(11, (cout,), 0.1)
        layer.rprelu.shift_out[...] = _np(12, (cout,), 0.1)
    return layer


def _ref_core(layer, x):
    """Hand-written binary conv: sign(x + tau) ⊛ alpha·sign(W), no scale map."""
    w = layer.kernel[...]
    alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))
    return _conv(jnp.sign(x + layer.tau[...]), alpha * jnp.sign(w), layer.stride, layer.padding)


@pytest.mark.parametrize("abs_scale", [False, True])
def test_bidm_conv_matches_reference(abs_scale):
    cfg = _cfg("bidm", shortcut_scale_init=-0.4, shortcut_abs=abs_scale)
    layer = _rand_layer(cfg, "down.0.block.0.conv1", 4, 6, 3)
    layer.kconv.kernel[...] = jnp.full((3, 3, 1, 1), 1 / 9 + 0.05)
    x = _np(5, (2, 6, 6, 4))
    s = 0.4 if abs_scale else -0.4

    @nnx.jit
    def both(layer):
        a = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
        kmap = _conv(a, layer.kconv.kernel[...], 1, 1) + layer.kconv.bias[...]
        sc = _conv(x, layer.shortcut.kernel[...]) + layer.shortcut.bias[...]
        return layer(x), _ref_core(layer, x) * kmap + s * sc

    out, ref = both(layer)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_xnor_conv_box_scale_identity_and_avgpool_shortcut():
    cfg = _cfg("xnor", shortcut_scale_init=0.5)
    layer = _rand_layer(cfg, "down.0.downsample.conv", 4, 4, 3, stride=2, padding=0)
    assert not hasattr(layer, "kconv") and getattr(layer, "shortcut", None) is None
    x = _np(6, (1, 7, 7, 4))

    @nnx.jit
    def both(layer):
        a = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
        kmap = _conv(a, jnp.full((3, 3, 1, 1), 1 / 9), 2, 0)
        pooled = x[:, :6, :6].reshape(1, 3, 2, 3, 2, 4).mean((2, 4))
        return layer(x), _ref_core(layer, x) * kmap + 0.5 * pooled

    out, ref = both(layer)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["reactnet", "bbcu"])
def test_rprelu_residual_order(method):
    layer = _rand_layer(_cfg(method), "down.0.block.0.conv2", 5, 5, 3)
    x = _np(7, (1, 5, 5, 5))
    r = layer.rprelu

    def rprelu(z):
        z = z + r.shift_in[...]
        return jnp.where(z > 0, z, 0.25 * z) + r.shift_out[...]

    @nnx.jit
    def both(layer):
        core = _ref_core(layer, x)
        return layer(x), (rprelu(core + x) if method == "reactnet" else rprelu(core) + x)

    out, ref = both(layer)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,overrides", [
    ("xnor", {"input_scale": "none"}),
    ("xnor", {"rprelu": "post_residual"}),
    ("xnor", {"shortcut": "unit"}),
    ("reactnet", {"input_scale": "box"}),
])
def test_structure_overrides_replace_one_piece(method, overrides):
    """quant.input_scale / rprelu / shortcut swap one piece of a method's binary conv (the
    reproduction's diagnostics); the rest of the layer stays the method's."""
    layer = _rand_layer(_cfg(method, shortcut_scale_init=0.5, **overrides),
                        "down.0.block.0.conv2", 4, 4, 3)
    x = _np(8, (2, 6, 6, 4))
    scale = overrides.get("input_scale", "box" if method == "xnor" else "none")
    rprelu = overrides.get("rprelu", "post_residual" if method == "reactnet" else "none")
    unit = overrides.get("shortcut") == "unit" or method == "reactnet"
    assert hasattr(layer, "rprelu") == (rprelu != "none")
    assert hasattr(layer, "shortcut_scale") == (not unit)

    @nnx.jit
    def both(layer):
        y = _ref_core(layer, x)
        if scale == "box":
            y = y * _conv(jnp.mean(jnp.abs(x), axis=-1, keepdims=True),
                          jnp.full((3, 3, 1, 1), 1 / 9), 1, 1)
        y = y + (1.0 if unit else 0.5) * x
        if rprelu != "none":
            r = layer.rprelu
            z = y + r.shift_in[...]
            y = jnp.where(z > 0, z, 0.25 * z) + r.shift_out[...]
        return layer(x), y

    out, ref = both(layer)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_xnorpp_gamma_cannot_be_overridden():
    with pytest.raises(ValueError, match="Gamma"):
        QuantFactory(_cfg("xnor++", input_scale="none")).conv(
            "down.0.block.0.conv1", 3, 3, 3, padding=1, rngs=nnx.Rngs(0))


def test_fp_layers_are_plain_conv_and_dense_with_teacher_names():
    f = QuantFactory(_cfg("bidm"))
    conv = f.conv("conv_in", 3, 8, 3, padding=1, rngs=nnx.Rngs(0))
    dense = f.dense("temb.dense.0", 4, 8, rngs=nnx.Rngs(0))
    assert sorted(nnx.to_pure_dict(nnx.state(conv, nnx.Param))) == ["bias", "kernel"]
    assert conv.kernel[...].shape == (3, 3, 3, 8) and dense.kernel[...].shape == (4, 8)
    x = _np(0, (1, 5, 5, 3))
    out, ref = nnx.jit(lambda m: (m(x), _conv(x, m.kernel[...], 1, 1) + m.bias[...]))(conv)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_binary_bias_dropped_or_kept():
    x = _np(0, (1, 4, 4, 3))
    for mode, used in (("drop", False), ("keep", True)):
        layer = QuantFactory(_cfg("bidm", binary_bias=mode)).conv(
            "down.0.block.0.conv2", 3, 3, 3, padding=1, rngs=nnx.Rngs(0))
        g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x))))(layer)
        assert (np.abs(np.asarray(g["bias"][...])).sum() > 0) == used


def test_paper_flags_change_parameters_and_forward():
    f = QuantFactory(_cfg("bidm", kconv_bias="none", weight_scale="learnable"))
    conv = f.conv("down.0.block.0.conv1", 3, 3, 3, padding=1, rngs=nnx.Rngs(0))
    assert conv.kconv.bias is None
    np.testing.assert_allclose(np.asarray(conv.weight_scale[...]),
                               np.abs(np.asarray(conv.kernel[...])).reshape(-1, 3).mean(0),
                               rtol=1e-6)
    x = jnp.asarray([[-0.1, 0.3, 0.05, -0.6]])
    outs = {}
    for mode in ("code", "paper"):
        d = QuantFactory(_cfg("bidm", linear_tau=mode)).dense("down.0.block.0.temb_proj", 4, 2,
                                                             rngs=nnx.Rngs(0))
        d.tau[...] = jnp.asarray([0.5, -0.5, -0.2, 0.1])
        outs[mode] = np.asarray(nnx.jit(lambda m: m(x))(d))
        signs = np.sign(np.asarray(x + d.tau[...])) if mode == "paper" else np.sign(np.asarray(x))
        alpha = np.abs(np.asarray(d.kernel[...])).mean(0)
        np.testing.assert_allclose(outs[mode], signs @ (alpha * np.sign(np.asarray(d.kernel[...]))),
                                   rtol=1e-5)
    assert not np.allclose(outs["code"], outs["paper"])


def test_reste_power_is_auxiliary_state_set_by_the_method_hook():
    """ReSTE's o is auxiliary state (not a parameter); the method's step hook sets it from the
    training progress (cosine 1 -> quant.reste_o_end) and it changes the gradient."""
    layer = QuantFactory(_cfg("reste")).conv("down.0.block.0.conv2", 3, 3, 3, padding=1,
                                             rngs=nnx.Rngs(0))
    fm = Functional(layer)
    assert fm.aux_names == ["reste_o"] and "reste_o" not in fm.params
    x = _np(3, (1, 4, 4, 3))
    config = tiny_config(**{"quant.method": "reste", "train.num_steps": 10})
    hook = jax.jit(lambda a, s: get_method("reste").step_aux(a, s, config))
    grad = jax.jit(jax.grad(lambda p, a: jnp.sum(fm.module(p, a)(x) ** 2)))
    start, end = hook(fm.aux, 0), hook(fm.aux, 10)
    assert float(start["reste_o"]) == 1.0 and float(end["reste_o"]) == 3.0
    g1, g3 = grad(fm.params, start)["kernel"], grad(fm.params, end)["kernel"]
    assert not np.allclose(np.asarray(g1), np.asarray(g3))


def test_method_recipe_follows_ddim_layer_list():
    f = QuantFactory(_cfg("bidm"))
    binary = ["down.0.block.0.conv1", "down.0.block.1.conv2", "up.2.block.0.temb_proj",
              "down.1.attn.0.q", "down.1.attn.1.k", "up.1.attn.2.v", "mid.attn_1.proj_out",
              "down.2.downsample.conv", "up.3.upsample.conv", "mid.block_2.conv1"]
    fp = ["temb.dense.0", "temb.dense.1", "conv_in", "conv_out", "down.1.block.0.nin_shortcut",
          "up.0.block.2.nin_shortcut"]
    for p in binary + fp:
        f._spec(p)
    assert sorted(f.binary_paths) == sorted(binary)
    with pytest.raises(ValueError, match="matches neither"):
        f._spec("foo.bar")
    with pytest.raises(ValueError, match="built twice"):
        f._spec("conv_in")


def test_config_validation_lists_choices():
    validate_quant_config(_cfg("bidm"))
    for field, bad in (("kconv_bias", "maybe"), ("linear_tau", "x"),
                       ("input_scale", "xnorpp"), ("rprelu", "yes")):
        with pytest.raises(ValueError, match="choose one of"):
            cfg = _cfg("bidm")
            cfg[field] = bad
            validate_quant_config(cfg)
    with pytest.raises(ValueError, match="valid choices: bbcu, bidm, binarydm, "
                                         "binarydm_baseline, dorefa, efficientdm, fp"):
        validate_quant_config(_cfg("xnorr"))
    with pytest.raises(ValueError, match="reste_o_end"):
        validate_quant_config(_cfg("reste", reste_o_end=0.5))


def test_xnorpp_needs_sizes_and_bad_input_shapes_fail():
    with pytest.raises(ValueError, match="output size"):
        QuantFactory(_cfg("xnor++")).conv("down.0.block.0.conv1", 3, 3, 3, padding=1,
                                          rngs=nnx.Rngs(0))
    conv = QuantFactory(_cfg("bidm")).conv("down.0.block.0.conv1", 3, 3, 3, padding=1,
                                           rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels"):
        conv(jnp.zeros((1, 4, 4, 5)))
    with pytest.raises(ValueError, match="kernel_size"):
        QuantFactory(_cfg("bidm")).conv("conv_in", 3, 3, 0, rngs=nnx.Rngs(0))


def test_bfloat16_compute_dtype():
    f = QuantFactory(_cfg("bidm"), dtype=jnp.bfloat16)
    conv = f.conv("down.0.block.0.conv1", 3, 4, 3, padding=1, rngs=nnx.Rngs(0))
    x = _np(8, (1, 4, 4, 3))
    y, g = nnx.jit(lambda m: (m(x), nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(m)))(conv)
    assert y.dtype == jnp.bfloat16 and conv.kernel[...].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(g["kernel"][...], np.float32)))
