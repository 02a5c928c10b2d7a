"""The embedded demo dataset: scikit-learn's handwritten digits (1,797 real 8x8 scans that ship
inside scikit-learn, so the quickstart needs no network and no files)."""
from __future__ import annotations

import numpy as np


def load_digits_rgb(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 RGB images (N, R, R, 3) (white on black, grey replicated) and labels (N,).

    The 8x8 scans (values 0..16) are upsampled with bicubic interpolation to ``resolution``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.empty((len(small), resolution, resolution, 3), np.uint8)
    for i, img in enumerate(small):
        big = Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC)
        out[i] = np.asarray(big)[..., None]
    return out, d.target.astype(np.int32)
