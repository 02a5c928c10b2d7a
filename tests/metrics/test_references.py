"""References of any configured dataset and ADM reference batches: an image folder (lazy
source) gives the reference of the same images in memory; an ADM batch with arr_0 is turned
into the project's reference (cached); ADM statistics alone give FID/sFID without PR; the
proxy network is refused against ADM's Inception statistics."""
import os

import numpy as np
import pytest

from bidm_jax.errors import BadInput
from bidm_jax.metrics.evaluate import run_eval, run_ref_stats
from bidm_jax.metrics.features import FeatureNetwork
from bidm_jax.metrics.networks import build_proxy
from bidm_jax.metrics.reference import build_reference
from tests.metrics.conftest import make_config, synthetic_images

N = 20


@pytest.fixture(scope="module")
def env(proxy_workdir, tmp_path_factory):
    """(workdir, proxy path, images, image folder of those images as PNGs, samples npz)."""
    from PIL import Image

    _, summary = proxy_workdir
    root = tmp_path_factory.mktemp("refs")
    images = synthetic_images(N, 5)[0]
    folder = root / "pngs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    samples = str(root / "samples.npz")
    np.savez(samples, arr_0=synthetic_images(24, 6)[0])
    return str(root / "work"), summary["proxy_path"], images, str(folder), samples


def config(env, **eval_kw):
    wd, proxy, _, folder, samples = env
    c = make_config("", proxy_path=proxy, samples_path=samples, pr_num_images=8, **eval_kw)
    c.data.update({"dataset": "image_folder", "path": folder, "image_size": 32,
                   "file_list": "", "interpolation": "bicubic", "workers": 2})
    return c


def test_image_folder_reference_equals_in_memory(env):
    wd, proxy, images, _, _ = env
    summary = run_ref_stats(config(env), wd)
    assert os.path.basename(summary["ref_path"]) == "ref_image_folder_32px_train_proxy.npz"
    mem = str(os.path.join(wd, "mem.npz"))
    build_reference(build_proxy(proxy), images, mem, source="memory", batch_size=16,
                    pr_num_images=8)
    with np.load(summary["ref_path"]) as a, np.load(mem) as b:
        for k in ("mu", "sigma", "mu_s", "sigma_s", "pr_features", "pr_indices", "arr_0"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert int(a["num_images"]) == N and int(a["dataset_size"]) == N
        assert str(a["dataset"]) == "image_folder" and int(a["image_size"]) == 32
    capped = run_ref_stats(config(env, ref_num_images=12), wd)
    assert capped["ref_path"].endswith("_train_n12_proxy.npz") and capped["num_images"] == 12
    assert "first 12 of 20" in capped["source"]


def test_adm_batch_with_images_is_accepted_and_cached(env, tmp_path):
    wd, _, images, _, _ = env
    adm = str(tmp_path / "VIRTUAL_tiny32.npz")
    np.savez(adm, arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048))
    result = run_eval(config(env, ref_path=adm), wd)
    assert {"proxy_fid", "proxy_sfid", "proxy_precision", "proxy_recall"} <= set(result)
    assert result["reference"]["pr_num_images"] == 8
    assert "arr_0 images" in result["notes"][0]
    cached = os.path.join(wd, "eval", "ref_adm_VIRTUAL_tiny32_proxy.npz")
    mtime = os.path.getmtime(cached)
    with np.load(cached) as z, np.load(os.path.join(
            wd, "eval", "ref_image_folder_32px_train_proxy.npz")) as folder_ref:
        np.testing.assert_array_equal(z["mu"], folder_ref["mu"])  # the same images
    again = run_eval(config(env, ref_path=adm), wd)
    assert again["proxy_fid"] == result["proxy_fid"] and os.path.getmtime(cached) == mtime


def test_adm_statistics_only(env, tmp_path):
    wd, proxy, images, _, _ = env
    stats = str(tmp_path / "VIRTUAL_stats.npz")
    # An "Inception" stand-in (the proxy's weights under the inception kind) so that ADM-style
    # statistics of matching dimension exist; the real network is too slow for this test.
    p = build_proxy(proxy)
    fake = FeatureNetwork("inception", "stand-in Inception", p.graphdef, p.state, p.apply,
                          {"preprocess": "adm", "fingerprint": "x"})
    ref = build_reference(fake, images, str(tmp_path / "full.npz"), source="s", batch_size=16,
                          pr_num_images=8)
    np.savez(stats, **{k: ref[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    result = run_eval(config(env, ref_path=stats), wd, net=fake)
    assert {"fid", "sfid", "is"} <= set(result)
    assert not {"precision", "recall", "kid"} & set(result)
    assert result["reference"]["pr_num_images"] == 0
    assert "precision, recall and KID need the reference images" in result["notes"][0]
    with pytest.raises(BadInput, match="meaningless"):
        run_eval(config(env, ref_path=stats), wd)  # eval.features=proxy
    fake.info["preprocess"] = "pytorch_fid"
    with pytest.raises(BadInput, match="inception_preprocess=adm"):
        run_eval(config(env, ref_path=stats), wd, net=fake)
