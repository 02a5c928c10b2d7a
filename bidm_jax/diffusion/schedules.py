"""Noise schedules (methods.md §1.1, §1.2). All arrays are float64 NumPy so that ᾱ tables match
the PyTorch originals to the last float32 bit when cast; samplers index them on device."""
from __future__ import annotations

import numpy as np

SCHEDULES = ("linear", "sqrt_linear")


def make_betas(schedule: str, beta_start: float, beta_end: float, num_timesteps: int) -> np.ndarray:
    """β_t for t = 0..T-1.

    ``linear``: ermongroup/DDPM, ``np.linspace(beta_start, beta_end, T)`` (1e-4 → 2e-2).
    ``sqrt_linear``: LDM's "linear", ``linspace(√beta_start, √beta_end, T)²`` (0.0015 → 0.0195).
    """
    if schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    elif schedule == "sqrt_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    else:
        raise ValueError(f"diffusion.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (0.0 < betas.min() and betas.max() < 1.0):
        raise ValueError(f"betas must lie in (0, 1); got [{betas.min()}, {betas.max()}]")
    return betas


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱ_t = Π_{s≤t} (1 − β_s), shape (T,)."""
    return np.cumprod(1.0 - betas)


def from_config(dcfg) -> np.ndarray:
    """ᾱ table (T,) float64 for a ``diffusion`` config section."""
    return alphas_cumprod(make_betas(dcfg.schedule, dcfg.beta_start, dcfg.beta_end,
                                     dcfg.num_timesteps))
