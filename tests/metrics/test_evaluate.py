"""Entry points end to end on tiny synthetic data with the proxy network; config checks."""
import json
import os

import numpy as np
import pytest

from bidm_jax.metrics.config import get_eval_config, validate_eval_config
from bidm_jax.metrics.evaluate import run_eval, run_ref_stats


from tests.metrics.conftest import make_config


@pytest.fixture(scope="module")
def workdir(proxy_workdir):
    wd, summary = proxy_workdir
    assert os.path.exists(summary["proxy_path"])
    assert summary["feature_network"].startswith("proxy (CIFAR-10 JPEG q75 classifier, test acc")
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["steps"] == 3
    with open(os.path.join(wd, "proxy", "proxy_train.json")) as f:
        assert json.load(f)["test_accuracy"] == summary["test_accuracy"]
    return wd


def test_run_eval_writes_proxy_labelled_metrics(workdir, tiny_cifar):
    _, _, (test_x, _) = tiny_cifar
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    np.savez(os.path.join(workdir, "samples", "samples.npz"), arr_0=test_x[:36])
    result = run_eval(make_config(tiny_cifar[0]), workdir)
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
        saved = json.load(f)
    assert saved["num_samples"] == 36 and saved["proxy_fid"] == result["proxy_fid"]
    assert saved["feature_network"].startswith("proxy (") and "test acc" in saved["feature_network"]
    assert saved["metrics_are_proxy"] is True and "proxy_test_accuracy" in saved
    for k in ("fid", "sfid", "is", "precision", "recall", "kid"):
        assert f"proxy_{k}" in saved and k not in saved
        assert np.isfinite(saved[f"proxy_{k}"])
    assert saved["proxy_fid"] > 0 and 0 <= saved["proxy_precision"] <= 1
    assert 1.0 <= saved["proxy_is"] <= 10.0
    assert saved["reference"]["num_images"] == 80 and saved["reference"]["pr_num_images"] == 40
    # 36 samples cannot support an FID: the result says so.
    assert len(saved["warnings"]) == 1 and "on 36 samples: below 2,048" in saved["warnings"][0]


def test_sample_count_warnings_thresholds():
    from bidm_jax.metrics.evaluate import sample_count_warnings

    assert sample_count_warnings(2048, 2048) == [] and sample_count_warnings(50_000, 2048) == []
    assert sample_count_warnings(2047, 64) and sample_count_warnings(3000, 4096)


def test_reference_images_as_samples_give_zero_fid(workdir, tiny_cifar):
    from bidm_jax.data.cifar10 import load_cifar10
    path = tiny_cifar[0]
    train_x, _ = load_cifar10("train", path)  # the decoded JPEGs the reference is built from
    samples = os.path.join(workdir, "train_as_samples.npz")
    np.savez(samples, arr_0=train_x)
    cfg = make_config(path, samples_path=samples)
    run_ref_stats(cfg, workdir)
    result = run_eval(cfg, workdir)
    assert abs(result["proxy_fid"]) < 1e-3 and abs(result["proxy_sfid"]) < 1e-2
    # Every reference image is itself a sample (distance 0 <= its radius): recall is exactly 1.
    assert result["proxy_recall"] == 1.0


def test_mismatched_reference_and_bad_samples_raise(workdir, tiny_cifar, tmp_path):
    path = tiny_cifar[0]
    ref = os.path.join(workdir, "eval", "ref_cifar10_32px_train_proxy.npz")
    with np.load(ref) as z:
        arrays = dict(z)
    arrays["fingerprint"] = np.array("0000")
    bad_ref = str(tmp_path / "bad_ref.npz")
    np.savez(bad_ref, **arrays)
    with pytest.raises(ValueError, match="fingerprint"):
        run_eval(make_config(path, ref_path=bad_ref), workdir)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, arr_0=np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        run_eval(make_config(path, samples_path=bad), workdir)
    with pytest.raises(ValueError, match="num_samples"):
        run_eval(make_config(path, num_samples=1000), workdir)


def test_validate_eval_config_lists_choices():
    cfg = get_eval_config()
    validate_eval_config(cfg)
    cfg.features = "clip"
    with pytest.raises(ValueError, match="inception.*proxy"):
        validate_eval_config(cfg)
    cfg = get_eval_config()
    cfg.inception_preprocess = "tf2"
    with pytest.raises(ValueError, match="adm"):
        validate_eval_config(cfg)
    cfg = get_eval_config()
    cfg.pr_k = 0
    with pytest.raises(ValueError, match="pr_k"):
        validate_eval_config(cfg)
