"""Reading the project's ``.npz`` files (packed exports, reference statistics, feature-network
weights, samples) with one clear error for a file that is there but unreadable."""
from __future__ import annotations

import os

import numpy as np

from bidm_jax.errors import CorruptFile, one_line

__all__ = ["load_npz"]


def load_npz(path: str, what: str, keys=None) -> dict:
    """The arrays of ``path`` (all, or only ``keys`` when given) as a dict, never unpickling.

    what: what the file should be, for the messages ("packed export", "reference
    statistics"...). A missing file is a FileNotFoundError; a truncated, corrupt or non-npz
    file is a :class:`~bidm_jax.errors.CorruptFile` naming the path and the reason."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files if keys is None else [k for k in keys if k in z.files]
            return {k: z[k] for k in names}
    except Exception as e:  # zipfile, zlib, numpy format and pickle-refusal errors alike
        raise CorruptFile(f"{path} is not a readable {what} npz (truncated or corrupt): "
                          f"{type(e).__name__}: {one_line(e)}") from None
