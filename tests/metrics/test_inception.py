"""FID InceptionV3: parameter count, output shapes, preprocessing, pooling variants, and the
pytorch-fid state-dict converter (names, layouts, BatchNorm eps)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bidm_jax.metrics import inception, weights

# pytorch-fid's FID InceptionV3, written out independently of the model code:
# (block, branch, out, in, kh, kw) for every BasicConv2d.


def _a(name, cin, pf):
    return [(name, "branch1x1", 64, cin, 1, 1), (name, "branch5x5_1", 48, cin, 1, 1),
            (name, "branch5x5_2", 64, 48, 5, 5), (name, "branch3x3dbl_1", 64, cin, 1, 1),
            (name, "branch3x3dbl_2", 96, 64, 3, 3), (name, "branch3x3dbl_3", 96, 96, 3, 3),
            (name, "branch_pool", pf, cin, 1, 1)]


def _c(name, c7):
    return [(name, "branch1x1", 192, 768, 1, 1), (name, "branch7x7_1", c7, 768, 1, 1),
            (name, "branch7x7_2", c7, c7, 1, 7), (name, "branch7x7_3", 192, c7, 7, 1),
            (name, "branch7x7dbl_1", c7, 768, 1, 1), (name, "branch7x7dbl_2", c7, c7, 7, 1),
            (name, "branch7x7dbl_3", c7, c7, 1, 7), (name, "branch7x7dbl_4", c7, c7, 7, 1),
            (name, "branch7x7dbl_5", 192, c7, 1, 7), (name, "branch_pool", 192, 768, 1, 1)]


def _e(name, cin):
    return [(name, "branch1x1", 320, cin, 1, 1), (name, "branch3x3_1", 384, cin, 1, 1),
            (name, "branch3x3_2a", 384, 384, 1, 3), (name, "branch3x3_2b", 384, 384, 3, 1),
            (name, "branch3x3dbl_1", 448, cin, 1, 1), (name, "branch3x3dbl_2", 384, 448, 3, 3),
            (name, "branch3x3dbl_3a", 384, 384, 1, 3), (name, "branch3x3dbl_3b", 384, 384, 3, 1),
            (name, "branch_pool", 192, cin, 1, 1)]


CONVS = ([(n, None, o, i, k, k) for n, o, i, k in [
    ("Conv2d_1a_3x3", 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3), ("Conv2d_2b_3x3", 64, 32, 3),
    ("Conv2d_3b_1x1", 80, 64, 1), ("Conv2d_4a_3x3", 192, 80, 3)]]
    + _a("Mixed_5b", 192, 32) + _a("Mixed_5c", 256, 64) + _a("Mixed_5d", 288, 64)
    + [("Mixed_6a", "branch3x3", 384, 288, 3, 3), ("Mixed_6a", "branch3x3dbl_1", 64, 288, 1, 1),
       ("Mixed_6a", "branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a", "branch3x3dbl_3", 96, 96, 3, 3)]
    + _c("Mixed_6b", 128) + _c("Mixed_6c", 160) + _c("Mixed_6d", 160) + _c("Mixed_6e", 192)
    + [("Mixed_7a", "branch3x3_1", 192, 768, 1, 1), ("Mixed_7a", "branch3x3_2", 320, 192, 3, 3),
       ("Mixed_7a", "branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a", "branch7x7x3_2", 192, 192, 1, 7),
       ("Mixed_7a", "branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a", "branch7x7x3_4", 192, 192, 3, 3)]
    + _e("Mixed_7b", 1280) + _e("Mixed_7c", 2048))

# torchvision's inception_v3 has 27,161,264 parameters with its aux classifier and 1000
# classes; the aux head holds 3,326,696 (conv 128x768 + BN, conv 768x128x5x5 + BN, fc 768->1000)
# and 8 more classes add 8 * 2048 + 8 -> 27,161,264 - 3,326,696 + 16,392.
EXPECTED_PARAMS = 23_850_960


def random_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for block, branch, o, i, kh, kw in CONVS:
        p = block if branch is None else f"{block}.{branch}"
        sd[f"{p}.conv.weight"] = rng.normal(size=(o, i, kh, kw)).astype(np.float32) * 0.05
        sd[f"{p}.bn.weight"] = rng.uniform(0.5, 1.5, o).astype(np.float32)
        sd[f"{p}.bn.bias"] = rng.normal(size=o).astype(np.float32)
        sd[f"{p}.bn.running_mean"] = rng.normal(size=o).astype(np.float32)
        sd[f"{p}.bn.running_var"] = rng.uniform(0.5, 2.0, o).astype(np.float32)
        sd[f"{p}.bn.num_batches_tracked"] = np.array(0, np.int64)
    sd["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    sd["fc.bias"] = rng.normal(size=1008).astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def abstract_model():
    return nnx.eval_shape(lambda: inception.FIDInceptionV3(rngs=nnx.Rngs(0)))


def test_table_and_model_parameter_counts(abstract_model):
    table = sum(o * i * kh * kw + 2 * o for _, _, o, i, kh, kw in CONVS) + 2048 * 1008 + 1008
    assert len(CONVS) == 94
    assert table == EXPECTED_PARAMS
    assert inception.param_count(abstract_model) == EXPECTED_PARAMS


def test_output_shapes(abstract_model):
    graphdef, state = nnx.split(abstract_model)
    for hw in (32, 64):
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(inception.preprocess(x)),
                             state, jax.ShapeDtypeStruct((3, hw, hw, 3), jnp.uint8))
        assert {k: v.shape for k, v in out.items()} == {
            "pool": (3, 2048), "logits": (3, 1008), "logits_unbiased": (3, 1008),
            "spatial": (3, 7 * 17 * 17)}


def test_pytorch_fid_resize_matches_half_pixel_linear_resize():
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)) * 255
    ours = (inception.preprocess(x, "pytorch_fid") + 1) / 2 * 255
    ref = jax.image.resize(x, (2, 299, 299, 3), "linear", antialias=False)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_adm_resize_is_tf1_legacy_bilinear_and_scales_to_minus1_1():
    m = inception.bilinear_matrix(32, 299, "adm")
    # TF1 (no half-pixel centres): output j samples source position j * 32 / 299.
    j = 150
    src = j * 32 / 299
    lo = int(np.floor(src))
    expect = np.zeros(32)
    expect[lo], expect[lo + 1] = 1 - (src - lo), src - lo
    np.testing.assert_allclose(m[j], expect)
    np.testing.assert_allclose(m.sum(1), 1.0)
    img = jnp.full((1, 8, 8, 3), 255, jnp.uint8)
    np.testing.assert_allclose(inception.preprocess(img, "adm"), 127 / 128, rtol=1e-6)
    np.testing.assert_allclose(inception.preprocess(img, "pytorch_fid"), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="preprocess mode"):
        inception.bilinear_matrix(32, 299, "bicubic")


def test_avg_pool_excludes_padding_and_last_block_max_pools():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    avg = inception._avg_pool_no_pad(x)
    assert float(avg[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)  # 4 real inputs
    mx = inception._max_pool(x, 1, ((1, 1), (1, 1)))
    assert float(mx[0, 0, 0, 0]) == 5.0 and mx.shape == x.shape

def test_last_block_is_the_max_pool_variant(abstract_model):
    assert abstract_model.Mixed_7c.max_pool and not abstract_model.Mixed_7b.max_pool


def test_converter_layout_round_trip_and_bn_eps():
    sd = random_state_dict()
    flat = weights.convert_state_dict(sd)
    assert "Mixed_6b/branch7x7_2/conv/kernel" in flat and not any("num_batches" in k for k in flat)
    model = weights.inception_from_flat(flat)  # raises on a missing/extra key or bad shape
    layer = model.Mixed_6b.branch7x7_2  # (1, 7) kernel: catches a kh/kw swap
    w = sd["Mixed_6b.branch7x7_2.conv.weight"]
    np.testing.assert_array_equal(np.asarray(layer.conv.kernel[...]), w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), sd["fc.weight"].T)
    # Numerical check of the whole BasicConv2d against an NCHW reference on torch layout.
    x = np.random.default_rng(1).normal(size=(2, 128, 5, 9)).astype(np.float32)
    conv = jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 0), (3, 3)),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                        precision=jax.lax.Precision.HIGHEST)
    p = "Mixed_6b.branch7x7_2.bn."
    c = lambda k: sd[p + k][None, :, None, None]
    ref = np.maximum((np.asarray(conv) - c("running_mean")) / np.sqrt(c("running_var") + 1e-3)
                     * c("weight") + c("bias"), 0)
    ours = layer(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, rtol=1e-4, atol=1e-4)


def test_converter_and_loader_errors(abstract_model, tmp_path):
    sd = random_state_dict()
    with pytest.raises(ValueError, match="unexpected key"):
        weights.convert_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((2, 2))})
    flat = weights.convert_state_dict(sd)
    flat["fc/bias"] = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="fc/bias"):
        weights.load_flat_npz(abstract_model, flat)
    bad = tmp_path / weights.FID_WEIGHTS_FILENAME
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="SHA-256"):
        weights.check_sha256_prefix(str(bad))


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "env"))
    assert weights.cache_dir() == str(tmp_path / "env")
    assert weights.cache_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")


def test_missing_weights_without_network_give_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=weights.FID_WEIGHTS_FILENAME):
        weights.fetch_pth(str(tmp_path), url="http://127.0.0.1:9/unreachable.pth", timeout=2)
