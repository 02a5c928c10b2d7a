"""Streamed sampling (``generate_to_files``): the same arr_0 as the in-memory path, resumed
after an interruption without redoing finished batches, refused with another plan, tagged
sets side by side; the npz streaming writer and reader."""
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bidm_jax import parallel
from bidm_jax.diffusion import sample_files, sampling
from bidm_jax.errors import BadInput, CorruptFile
from bidm_jax.npy_stream import NpzArrayReader, NpzArrayWriter

SHAPE, NUM, SEED = (4, 4, 3), 20, 3  # batches (0, 8), (8, 8), (16, 4) on 8 devices


def sample_fn(values, x_T, rng):
    """A stand-in sampler: the images are a function of x_T and of the 'model' value b."""
    return ((jnp.tanh(x_T + values["b"]) + 1) * 127.5).astype(jnp.uint8)


@pytest.fixture(scope="module")
def setup():
    config = ml_collections.ConfigDict({"sample": {"batch_size": 8, "grid_size": 6}})
    return config, parallel.make_data_mesh(-1)


def stream(setup, directory, b=0.0, tag="", plan=None):
    config, mesh = setup
    return sampling.generate_to_files(sample_fn, {"b": jnp.float32(b)}, config, mesh, num=NUM,
                                      seed=SEED, shape=SHAPE, directory=str(directory),
                                      tag=tag, plan=plan or {"model": "m"})


def in_memory(setup, b=0.0):
    config, mesh = setup
    return sampling.generate(sample_fn, {"b": jnp.float32(b)}, config, mesh, num=NUM,
                             seed=SEED, shape=SHAPE)


def test_streamed_equals_in_memory_and_tags_coexist(setup, tmp_path):
    ref = in_memory(setup)
    path = stream(setup, tmp_path, tag="ddim100")
    other = stream(setup, tmp_path, b=1.0, tag="ddpm")
    assert path == str(tmp_path / "samples_ddim100.npz")
    with np.load(path) as z:
        assert z.files == ["arr_0"]
        np.testing.assert_array_equal(z["arr_0"], ref)
    assert not np.array_equal(np.load(other)["arr_0"], ref)
    assert sorted(os.listdir(tmp_path)) == ["grid_ddim100.png", "grid_ddpm.png",
                                            "samples_ddim100.npz", "samples_ddpm.npz"]
    # eval reads the tagged file of the same sample.tag
    from bidm_jax.metrics.samples_io import samples_file

    cfg = ml_collections.ConfigDict({"eval": {"samples_path": ""}, "sample": {"tag": "ddpm"}})
    assert samples_file(cfg, "w") == os.path.join("w", "samples", "samples_ddpm.npz")
    with pytest.raises(BadInput, match="sample.tag"):
        sample_files.tag_suffix("../x")


def test_resume_skips_finished_batches(setup, tmp_path, monkeypatch):
    save, calls = sample_files.ShardStore.save, []

    def killed_after_two(self, start, images):  # a kill while the third batch is written
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(start)
        save(self, start, images)

    monkeypatch.setattr(sample_files.ShardStore, "save", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        stream(setup, tmp_path)
    monkeypatch.setattr(sample_files.ShardStore, "save", save)
    parts = tmp_path / "samples.parts"
    assert sorted(os.listdir(parts)) == ["00000000_8.npy", "00000008_8.npy", "plan.json"]
    os.remove(parts / "00000008_8.npy")  # lose the last shard too
    with pytest.raises(BadInput, match="model='m', now 'other'"):
        stream(setup, tmp_path, plan={"model": "other"})
    # Same plan, another 'model' value: only the missing batches show it, so the finished
    # batch was not computed again.
    out = np.load(stream(setup, tmp_path, b=5.0))["arr_0"]
    old, new = in_memory(setup), in_memory(setup, b=5.0)
    np.testing.assert_array_equal(out[:8], old[:8])
    np.testing.assert_array_equal(out[8:], new[8:])
    assert not parts.exists() and (tmp_path / "grid.png").exists()


def test_npz_stream_writer_and_reader(tmp_path):
    x = np.arange(7 * 2 * 3 * 3, dtype=np.uint8).reshape(7, 2, 3, 3)
    path = str(tmp_path / "a.npz")
    w = NpzArrayWriter(path, x.shape, np.uint8)
    for block in (x[:3], x[3:]):
        w.write(block)
    w.close(extra={"mu": np.ones(2)})
    with np.load(path) as z:
        np.testing.assert_array_equal(z["arr_0"], x)
        np.testing.assert_array_equal(z["mu"], np.ones(2))
    with NpzArrayReader(path) as r:
        assert r.shape == x.shape and [len(b) for b in r.batches(3, 5)] == [3, 2]
    np.savez_compressed(path, arr_0=x)  # compressed members read too
    with NpzArrayReader(path) as r:
        np.testing.assert_array_equal(np.concatenate(list(r.batches(4))), x)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CorruptFile, match="truncated or corrupt"):
        NpzArrayReader(path)
