"""The sample files ``--mode eval`` reads: ``{workdir}/samples/samples{_tag}.npz`` (uint8 NHWC
under ``arr_0``, ADM's format), opened without loading so that 50,000 images at 256x256
(9.8 GB) are read a block at a time."""
from __future__ import annotations

import os

import numpy as np

from bidm_jax.diffusion.sample_files import tag_suffix
from bidm_jax.npy_stream import NpzArrayReader


def samples_file(config, workdir: str) -> str:
    """``eval.samples_path``, else ``{workdir}/samples/samples{_tag}.npz`` with ``sample.tag``
    (the file ``--mode sample`` with the same tag writes)."""
    if config.eval.samples_path:
        return config.eval.samples_path
    tag = config.sample.get("tag", "") if "sample" in config else ""
    return os.path.join(workdir, "samples", f"samples{tag_suffix(tag)}.npz")


def open_samples(path: str, num_samples: int = 0) -> tuple[NpzArrayReader, int]:
    """A reader of ``arr_0`` (uint8 (N, H, W, 3)) of a samples npz and how many rows to use
    (the first ``num_samples``, 0 = all); nothing is loaded yet. ValueError when the file has
    fewer samples than requested or is not uint8 NHWC; CorruptFile when it does not read."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no samples at {path}; sample first or set eval.samples_path")
    reader = NpzArrayReader(path, "arr_0", "samples")
    if reader.dtype != np.uint8 or len(reader.shape) != 4 or reader.shape[-1] != 3:
        reader.close()
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {reader.dtype} "
                         f"{reader.shape}")
    if num_samples and reader.shape[0] < num_samples:
        reader.close()
        raise ValueError(f"{path} holds {reader.shape[0]} samples but eval.num_samples="
                         f"{num_samples}; sample more or set eval.num_samples=0 (use all)")
    return reader, (num_samples or reader.shape[0])


def load_samples(path: str, num_samples: int = 0) -> np.ndarray:
    """:func:`open_samples`, the rows read into memory (small sets only)."""
    reader, n = open_samples(path, num_samples)
    with reader:
        return reader.read(n)
