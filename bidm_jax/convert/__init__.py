"""PyTorch checkpoint → project checkpoint converters (torch is imported only when reading)."""
from __future__ import annotations

import hashlib


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed in 1 MiB chunks (checkpoints can be large)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
