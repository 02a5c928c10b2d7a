"""The embedded demo dataset: scikit-learn's handwritten digits (1,797 real 8x8 scans that ship
inside scikit-learn, so the quickstart needs no network and no files)."""
from __future__ import annotations

import numpy as np

CHANNELS = (1, 3)


def load_digits_images(resolution: int = 16, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 images (N, R, R, channels) (white on black) and labels (N,).

    The scans are grey: ``channels=1`` is the data as it is; ``channels=3`` replicates the
    grey value into RGB for models and metrics that expect colour images. The 8x8 scans
    (values 0..16) are upsampled with bicubic interpolation to ``resolution``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if channels not in CHANNELS:
        raise ValueError(f"the digits come with 1 (grey) or 3 (grey as RGB) channels, "
                         f"got {channels}")
    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.empty((len(small), resolution, resolution, channels), np.uint8)
    for i, img in enumerate(small):
        big = Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC)
        out[i] = np.asarray(big)[..., None]
    return out, d.target.astype(np.int32)


def load_digits_rgb(resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 RGB images (N, R, R, 3) (grey replicated) and labels (N,)."""
    return load_digits_images(resolution, 3)
