"""CIFAR-10 readers: the official python archive (or its folder), the project's JPEG npz,
and tensorflow-datasets when it is installed and can reach its source.

All readers return ``(images, labels)``: uint8 ``(N, 32, 32, 3)`` NHWC and int32 ``(N,)``.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from bidm_jax import errors

SOURCES = ("auto", "archive", "npz", "tfds")
SPLITS = ("train", "test")

HOW_TO_GET = (
    "CIFAR-10 was not found. Get it in one of these ways and point --config.data.path at it:\n"
    "  * the official archive: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz\n"
    "    (170,498,071 bytes, md5 c58f30108f718f92721af3b95e74349a), the .tar.gz itself or\n"
    "    the extracted 'cifar-10-batches-py' folder;\n"
    "  * an npz with keys train_jpeg/train_offsets/train_labels (and test_*), JPEG-encoded,\n"
    "    or train_images/train_labels (and test_*) decoded (uint8 NHWC);\n"
    "  * or install the tfds extra (pip install 'bidm_jax[tfds]') on a machine with network\n"
    "    access and use --config.data.source=tfds."
)


# Everything the official python batches hold: a dict of bytes keys, lists, ints, bytes and
# one uint8 ndarray (old and new numpy module names). Anything else is refused unread.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    """The unpickler of the CIFAR-10 python batches: admits only what that format holds, so
    a crafted file cannot run code (the default unpickler imports and calls any global)."""

    def __init__(self, f, source: str):
        super().__init__(f, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self.source} refers to {module}.{name}, which a CIFAR-10 python batch does not "
            "hold; refusing to unpickle it (not the official archive, or a tampered file)")


def _load_batch(f, source: str) -> dict:
    try:
        return _BatchUnpickler(f, source).load()
    except pickle.UnpicklingError as e:
        if "refusing to unpickle" in str(e):
            raise ValueError(str(e)) from None
        raise errors.CorruptFile(f"{source} is not a readable CIFAR-10 batch (truncated or "
                                 f"corrupt): {errors.one_line(e)}") from None
    except (EOFError, ValueError, TypeError, IndexError) as e:
        raise errors.CorruptFile(f"{source} is not a readable CIFAR-10 batch (truncated or "
                                 f"corrupt): {type(e).__name__}: {errors.one_line(e)}") from None


def _check_counts(source: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Images and labels must pair up one to one (a short label array would fail much later,
    deep in a training loop, as an IndexError)."""
    if len(images) != len(labels):
        raise errors.CorruptFile(f"{source} holds {len(images)} images but {len(labels)} "
                                 "labels; they must pair up one to one")


def _batches(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _stack_batches(dicts: list[dict], source: str) -> tuple[np.ndarray, np.ndarray]:
    # Official batches store each image as 3072 bytes: 1024 R, then G, then B (CHW).
    try:
        data = np.concatenate([d[b"data"] for d in dicts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(d[b"labels"]) for d in dicts])
    except (KeyError, ValueError, TypeError) as e:
        raise errors.CorruptFile(f"{source} does not hold CIFAR-10 python batches "
                                 f"({type(e).__name__}: {errors.one_line(e)})") from None
    images = np.ascontiguousarray(data.transpose(0, 2, 3, 1))
    _check_counts(source, images, labels)
    return images, labels.astype(np.int32)


def _read_archive(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = _batches(split)
    if os.path.isdir(path):
        folder = path
        if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
            folder = os.path.join(path, "cifar-10-batches-py")
        dicts = []
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                dicts.append(_load_batch(f, os.path.join(folder, n)))
        return _stack_batches(dicts, folder)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"{path} is not the CIFAR-10 python archive: missing {missing}")
            dicts = [_load_batch(tar.extractfile(members[n]), f"{path}:{members[n].name}")
                     for n in names]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise errors.CorruptFile(f"{path} is not a readable .tar.gz archive (truncated or "
                                 f"corrupt): {type(e).__name__}: {errors.one_line(e)}") from None
    return _stack_batches(dicts, path)


def _npz_arrays(path: str, split: str) -> dict:
    """The arrays of ``split`` in the npz at ``path``: decoded (``{split}_images``) or JPEG
    (``{split}_jpeg``, ``{split}_offsets``); CorruptFile when the file does not read."""
    decoded = [f"{split}_images", f"{split}_labels"]
    jpeg = [f"{split}_jpeg", f"{split}_offsets", f"{split}_labels"]
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            need = decoded if decoded[0] in files else jpeg
            if all(k in files for k in need):
                return {k: z[k] for k in need}
    except Exception as e:  # zipfile, zlib, numpy format errors: one unreadable file
        raise errors.CorruptFile(f"{path} is not a readable npz (truncated or corrupt): "
                                 f"{type(e).__name__}: {errors.one_line(e)}") from None
    missing = [k for k in need if k not in files]
    raise ValueError(f"{path} lacks keys {missing}; found {sorted(files)}")


def _read_npz(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    arrays = _npz_arrays(path, split)
    labels = arrays[f"{split}_labels"]
    if f"{split}_images" in arrays:  # already decoded (write_decoded_npz)
        images = np.asarray(arrays[f"{split}_images"], np.uint8)
        _check_counts(f"{path} ({split})", images, labels)
        return images, labels.astype(np.int32)
    buf, off = arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"]
    images = np.empty((len(off) - 1, 32, 32, 3), np.uint8)
    _check_counts(f"{path} ({split})", images, labels)
    for i in range(len(off) - 1):
        try:
            img = Image.open(io.BytesIO(buf[off[i]:off[i + 1]].tobytes())).convert("RGB")
            images[i] = np.asarray(img)
        except Exception as e:  # PIL raises many types for a bad or truncated image
            raise errors.CorruptFile(
                f"{path}: image {i} of {split}_jpeg (bytes {off[i]}..{off[i + 1]}) is not a "
                f"readable 32x32 JPEG: {type(e).__name__}: {errors.one_line(e, 200)}") from None
    return images, labels.astype(np.int32)


def write_decoded_npz(src: str, dst: str, source: str = "auto") -> str:
    """Decodes both splits of ``src`` once into ``dst`` (keys ``{split}_images`` uint8 NHWC,
    ``{split}_labels``), so many processes reading the same data skip JPEG decoding."""
    arrays = {}
    for split in SPLITS:
        images, labels = load_cifar10(split, src, source)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    tmp = dst + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, dst)  # atomic: a reader never sees half a file
    return dst


def _read_tfds(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FileNotFoundError(HOW_TO_GET) from e
    try:
        ds = tfds.as_numpy(tfds.load("cifar10", split=split, batch_size=-1, data_dir=data_dir))
    except Exception as e:  # tfds raises many error types when its source is unreachable
        raise FileNotFoundError(f"tfds could not load cifar10 ({e}).\n{HOW_TO_GET}") from e
    return ds["image"].astype(np.uint8), ds["label"].astype(np.int32)


def load_cifar10(split: str = "train", path: str | None = None,
                 source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Loads a CIFAR-10 split.

    Args:
      split: "train" (50,000 images) or "test" (10,000).
      path: the official ``cifar-10-python.tar.gz``, its extracted folder, or an npz in the
        project's JPEG format. For ``source="tfds"`` it is the tfds data_dir.
      source: "auto" (decide by ``path``; tfds when no path), "archive", "npz" or "tfds".

    Returns:
      images uint8 (N, 32, 32, 3), labels int32 (N,).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    if source == "tfds" or (source == "auto" and not path):
        return _read_tfds(split, path or None)
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"No file or folder at data.path={path!r}.\n{HOW_TO_GET}")
    if source == "npz" or (source == "auto" and path.endswith(".npz")):
        return _read_npz(path, split)
    return _read_archive(path, split)
