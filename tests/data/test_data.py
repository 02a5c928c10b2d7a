"""Readers (official archive, its folder, JPEG npz), the embedded digits, and the
deterministic per-process batch order."""
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from bidm_jax.data.cifar10 import load_cifar10
from bidm_jax.data.digits import load_digits_rgb
from bidm_jax.data.pipeline import BatchSource


def fake_batches(n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {n: {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                b"labels": list(rng.integers(0, 10, n_per_batch))} for n in names}


def test_official_archive_and_folder(tmp_path):
    batches = fake_batches()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, d in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for path in (archive, tmp_path, folder):
        x, y = load_cifar10("train", str(path))
        assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (20,)
        # CHW planes in the pickle → HWC: pixel (0, 1) of image 0 is bytes 1, 1025, 2049
        raw = batches["data_batch_1"][b"data"][0]
        np.testing.assert_array_equal(x[0, 0, 1], raw[[1, 1025, 2049]])
        np.testing.assert_array_equal(y[4:8], batches["data_batch_2"][b"labels"])
    x, y = load_cifar10("test", str(archive))
    assert len(x) == 4


def test_jpeg_npz(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    imgs = np.stack([np.stack([yy * 8 * (i + 1) % 256, xx * 8, (yy + xx) * 4], -1)
                     for i in range(3)]).astype(np.uint8)  # smooth: JPEG keeps it close
    bufs = []
    for im in imgs:
        b = io.BytesIO()
        Image.fromarray(im).save(b, format="JPEG", quality=95)
        bufs.append(np.frombuffer(b.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in bufs])
    path = tmp_path / "c.npz"
    np.savez(path, train_jpeg=np.concatenate(bufs), train_offsets=offsets,
             train_labels=np.array([1, 2, 3], np.uint8))
    x, y = load_cifar10("train", str(path))
    assert x.shape == (3, 32, 32, 3) and list(y) == [1, 2, 3]
    assert np.abs(x.astype(float) - imgs).mean() < 20  # JPEG round trip, not garbage
    with pytest.raises(ValueError, match="test_jpeg"):
        load_cifar10("test", str(path))


def test_bad_source_and_split():
    with pytest.raises(ValueError, match="auto, archive, npz, tfds|'auto', 'archive'"):
        load_cifar10("train", "x", source="http")
    with pytest.raises(ValueError, match="train"):
        load_cifar10("valid", "x")


def test_digits_are_real_images():
    x, y = load_digits_rgb(16)
    assert x.shape == (1797, 16, 16, 3) and x.dtype == np.uint8
    assert set(np.unique(y)) == set(range(10))
    assert (x[..., 0] == x[..., 2]).all() and x.max() > 200 and np.median(x) < 60


def test_batches_are_deterministic_and_split_over_processes():
    images = np.arange(40 * 2 * 2 * 3, dtype=np.uint8).reshape(40, 2, 2, 3) % 251
    full = BatchSource(images, 8, seed=3, random_flip=True)
    again = BatchSource(images, 8, seed=3, random_flip=True)
    halves = [BatchSource(images, 8, 3, True, process_index=i, process_count=2) for i in (0, 1)]
    for step in (0, 4, 5, 11):  # 5 batches per epoch: 5 and 11 are in later epochs
        b = full.local_batch(step)
        np.testing.assert_array_equal(b, again.local_batch(step))
        np.testing.assert_array_equal(b, np.concatenate([h.local_batch(step) for h in halves]))
        assert b.min() >= -1 and b.max() <= 1
    epoch0 = np.concatenate([full.global_indices(s) for s in range(5)])
    assert sorted(epoch0) == list(range(40))  # each image once per epoch
    assert not np.array_equal(full.global_indices(0), full.global_indices(5))
    with pytest.raises(ValueError, match="divisible"):
        BatchSource(images, 9, 0, False, process_count=2)


class _Boom:
    """Unpickling this calls os.system: what a crafted archive could do."""

    def __reduce__(self):
        import os
        return (os.system, ("echo owned > owned.txt",))


def test_archive_reader_refuses_foreign_pickles(tmp_path, monkeypatch):
    """The CIFAR batches are read with an unpickler that admits only what the format holds:
    a batch that names any other global fails with the file named, and nothing runs."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, d in fake_batches().items():
        if name == "data_batch_3":
            d = {**d, b"batch_label": _Boom()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with pytest.raises(ValueError, match=r"data_batch_3 refers to posix.system|"
                                         r"data_batch_3 refers to os.system|"
                                         r"data_batch_3 refers to nt.system"):
        load_cifar10("train", str(folder))
    assert not (tmp_path / "owned.txt").exists()
    x, _ = load_cifar10("test", str(folder))  # the untouched batch still loads
    assert x.shape == (4, 32, 32, 3)


def test_converter_reads_torch_files_weights_only(tmp_path, monkeypatch):
    """torch.load is called with weights_only=True (no arbitrary unpickling); a BiDM-style
    list's first item is the state dict."""
    import sys
    import types

    from bidm_jax.convert import ddim_cifar10

    calls = []

    class Tensor:
        def __init__(self, v):
            self.v = v

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return np.asarray(self.v)

    def load(path, **kwargs):
        calls.append(kwargs)
        return [{"conv_in.weight": Tensor([1.0, 2.0])}]

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    sd = ddim_cifar10.read_torch_checkpoint(str(tmp_path / "x.ckpt"))
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    np.testing.assert_array_equal(sd["conv_in.weight"], [1.0, 2.0])


def test_pixel_model_channels_must_match_the_data():
    """A pixel-space UNet reads and predicts the data's channels; grey data is digits only."""
    from bidm_jax.configlib import resolve_config
    from tests.tiny import tiny_config

    c = tiny_config(**{"data.channels": 1})  # the model still has 3 in/out channels
    with pytest.raises(ValueError, match="reads and predicts data.channels=1 channels; got "
                                         "model.in_channels=3"):
        resolve_config(c, "train")
    c.model.in_channels = c.model.out_ch = 1
    assert resolve_config(c, "train").data.channels == 1
