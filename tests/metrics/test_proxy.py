"""Proxy feature network: shapes, a few training steps, save/load, batched extraction."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from bidm_jax.metrics import proxy
from bidm_jax.metrics.features import FeatureNetwork, extract_features


@pytest.fixture(scope="module")
def trained(proxy_workdir, tiny_cifar):
    model, meta = proxy.load_proxy(proxy_workdir[1]["proxy_path"])
    return model, meta, tiny_cifar[1][0]


def _features(graphdef, params, stats, x):
    return jax.jit(lambda p, s, im: nnx.merge(graphdef, p, s)(im))(params, stats, x)


def test_feature_shapes():
    gd, params, stats = proxy.init_proxy(4, 16, 2)
    out = _features(gd, params, stats, np.zeros((3, 32, 32, 3), np.uint8))
    assert {k: v.shape for k, v in out.items()} == {
        "pool": (3, 16), "spatial": (3, 2 * 16 * 16), "is_logits": (3, 10)}
    with pytest.raises(ValueError, match="32, 32, 3"):
        _features(gd, params, stats, np.zeros((1, 64, 64, 3), np.uint8))


def test_training_steps_update_weights_and_bn_statistics(trained):
    model, info, _ = trained
    _, fresh, _ = proxy.init_proxy(4, 16, 2, seed=0)
    assert info["steps"] == 3 and np.isfinite(info["final_loss"]) and info["width"] == 4
    assert not np.allclose(model.head.kernel[...], fresh["head"]["kernel"][...])
    assert not np.allclose(model.stem_bn.mean[...], 0.0)  # running mean moved off its init


def test_augment_keeps_shape_and_pixels():
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(proxy.augment(jax.random.key(0), x))
    assert out.shape == x.shape and out.dtype == np.uint8
    # A crop of a reflect-padded image only contains values of the source image.
    assert set(np.unique(out[0])) <= set(np.unique(x[0]))


def test_save_load_round_trip_and_padded_batches(trained, tmp_path):
    model, _, x = trained
    path = str(tmp_path / "p.npz")
    proxy.save_proxy(model, path, {"width": 4, "embed_dim": 16, "spatial_channels": 2,
                                   "test_accuracy": 0.5, "data": "synthetic"})
    loaded, meta = proxy.load_proxy(path)
    assert meta["test_accuracy"] == 0.5
    ref = _features(*nnx.split(model, nnx.Param, nnx.BatchStat), x[:10])
    gd, st = nnx.split(loaded)
    net = FeatureNetwork("proxy", "proxy (test)", gd, st, lambda m, im: m(im))
    feats = extract_features(net, x[:10], batch_size=4)  # 10 = 4 + 4 + 2 (padded)
    for k in ("pool", "spatial", "is_logits"):
        assert feats[k].shape[0] == 10
        np.testing.assert_allclose(feats[k], np.asarray(ref[k]), rtol=1e-5, atol=1e-5)


def test_extraction_is_sharded_over_eight_devices():
    code = textwrap.dedent("""
        import numpy as np, jax
        from flax import nnx
        from bidm_jax.metrics import proxy
        from bidm_jax.metrics.features import FeatureNetwork, extract_features, data_mesh
        assert jax.device_count() == 8
        gd, p, s = proxy.init_proxy(4, 8, 2)
        x = np.random.default_rng(0).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
        f = extract_features(FeatureNetwork('proxy', 't', gd, nnx.State.merge(p, s),
                                            lambda mm, im: mm(im)), x, 12)
        ref = jax.jit(lambda p, s, im: nnx.merge(gd, p, s)(im)['pool'])(p, s, x)
        np.testing.assert_allclose(f['pool'], np.asarray(ref), rtol=1e-5, atol=1e-5)
        print('ok', data_mesh().devices.shape)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok (8,)" in r.stdout
