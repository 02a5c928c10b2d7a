"""``--mode summary``: the efficiency table for FP and binary configs (methods.md §2.9)."""
import json
import math

import jax
import pytest
from flax import nnx

from bidm_jax.models import build_unet
from bidm_jax.main import run
from tests.conftest import tiny_config


def run_summary(cfg, workdir):
    return run(cfg, workdir, "summary")


def _fp_params(cfg) -> int:
    model = nnx.eval_shape(lambda: build_unet(cfg.model, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


BINARY = ("conv1", "conv2", "temb_proj", "q", "k", "v", "proj_out")  # methods.md §2.1 CIFAR


def _binary_kernel_params(cfg) -> int:
    """Kernel sizes of the layers §2.1 binarizes (plus the down/upsample convs)."""
    from bidm_jax.models.functional import Functional
    fm = Functional(nnx.eval_shape(lambda: build_unet(cfg.model, rngs=nnx.Rngs(0))))
    total = 0
    for name, v in fm.shapes().items():
        parts = name.split(".")
        resampler = len(parts) >= 3 and parts[-3] in ("downsample", "upsample")
        if parts[-1] == "kernel" and (parts[-2] in BINARY or resampler):
            total += math.prod(v.shape)
    return total


def test_fp_summary(tmp_path, capsys):
    cfg = tiny_config()
    out = run_summary(cfg, str(tmp_path))
    n = _fp_params(cfg)
    assert out["method"] == "fp" and out["tbs"] is None
    assert out["params"]["by_bits"] == {"1": 0, "32": n}
    assert out["macs"]["binary"] == 0 and out["stored"]["bops"] == 0
    assert out["stored"]["size_mib"] == pytest.approx(n * 4 / 2 ** 20)
    assert out["paper"]["ops_saving"] == pytest.approx(1.0)
    assert "layers" not in out
    printed = capsys.readouterr().out
    assert "quant.method=fp" in printed and "size (MiB)" in printed
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["layers"] and saved["params"]["by_bits"]["32"] == n


def test_bidm_summary_with_tbs(tmp_path, capsys):
    cfg = tiny_config()
    cfg.quant.method = "bidm"
    out = run_summary(cfg, str(tmp_path))
    n = _fp_params(cfg)
    assert out["params"]["by_bits"]["1"] == _binary_kernel_params(cfg)
    assert out["params"]["teacher"] == n
    assert out["macs"]["binary"] > 0 and out["stored"]["bops"] == out["macs"]["binary"]
    # 1-bit kernels make the model far smaller than FP32, in both conventions.
    assert out["paper"]["size_mib"] < out["stored"]["size_mib"] < out["stored"]["fp32_size_mib"]
    tbs = out["tbs"]  # resolved like --mode distill: bidm uses the code topology
    assert tbs["table_shape"] == [100, 1]
    assert tbs["carry_shapes"] == {"mid.block_2": [4, 4, 64], "up.1.upsample": [8, 8, 64]}
    assert tbs["carry_floats_per_sample"] == 5120
    assert "TBS (code topology)" in capsys.readouterr().out


def test_summary_rejects_unknown_method(tmp_path):
    cfg = tiny_config()
    cfg.quant.method = "ternary"
    with pytest.raises(ValueError, match="quant.method"):
        run_summary(cfg, str(tmp_path))
