"""The command line end to end: train → checkpoint → sample (identical to the end-of-training
samples; another seed differs), the ADM ``.npz`` format, PNG grid, TensorBoard/JSONL logs,
and clean errors for bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

TINY = ["--config.data.image_size=8", "--config.model.resolution=8",
        "--config.model.attn_resolutions=(4,)", "--config.train.num_steps=4",
        "--config.train.log_every=2", "--config.ckpt.save_every=2",
        "--config.sample.num_samples=12", "--config.sample.batch_size=8",
        "--config.sample.grid_size=12", "--config.diffusion.sample_steps=3"]


def cli(workdir, *args, check=True):
    cmd = [sys.executable, "-m", "bidm_jax.main", "--config",
           os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(workdir), *TINY, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_train_then_sample_is_reproducible(tmp_path):
    cli(tmp_path, "--mode", "train")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    rows = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "logs"))

    # The end-of-training samples and a later --mode sample (same seed) are the same images.
    a = np.load(tmp_path / "samples" / "samples_train.npz")["arr_0"]
    cli(tmp_path, "--mode", "sample")
    first = np.load(tmp_path / "samples" / "samples.npz")
    assert first.files == ["arr_0"]
    # the quickstart models the digits' one grey channel
    assert first["arr_0"].shape == (12, 8, 8, 1) and first["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(first["arr_0"], a)
    assert os.path.getsize(tmp_path / "samples" / "grid.png") > 100
    other = cli(tmp_path, "--mode", "sample", "--config.sample.seed=7")
    assert other.returncode == 0
    assert not np.array_equal(np.load(tmp_path / "samples" / "samples.npz")["arr_0"], a)


@pytest.mark.parametrize("args,message", [
    (["--config.diffusion.sampler=heun"], "diffusion.sampler='heun' is invalid; valid choices: ddim, ddpm"),
    (["--config.data.dataset=cifar10", "--config.data.image_size=32", "--config.model.resolution=32",
      "--config.data.channels=3", "--config.model.in_channels=3", "--config.model.out_ch=3",
      "--config.data.path=/nonexistent/cifar.tar.gz"], "cifar-10-python.tar.gz"),
    (["--config.data.dataset=cifar10", "--config.data.image_size=32", "--config.model.resolution=32"],
     "data.channels=1 is invalid; valid choices: 3, or 1 for data.dataset='digits'"),
    (["--mode", "sample"], "train first"),
])
def test_bad_input_gives_a_clear_error(tmp_path, args, message):
    proc = cli(tmp_path, *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
