"""Skips hardware-only kernel tests when the hardware is absent."""

import jax
import pytest


_ALIASES = {"gpu": {"gpu", "cuda", "rocm"}, "tpu": {"tpu"}}


def _has(platform: str) -> bool:
    return any(d.platform in _ALIASES[platform] for d in jax.devices())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu_only" in item.keywords and not _has("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))
        if "tpu_only" in item.keywords and not _has("tpu"):
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))
