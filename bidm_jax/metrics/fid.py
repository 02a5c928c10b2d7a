"""Fréchet distance between Gaussian feature statistics: FID (pool features) and sFID
(spatial features), methods.md §6.

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

``frechet_distance`` reproduces the ADM / pytorch-fid evaluator step by step (float64,
``scipy.linalg.sqrtm``; when the product is singular and the root is not finite, eps·I is
added to both covariances; a small imaginary part from round-off is dropped, a large one is
an error), so given the same statistics it returns the same number.

``trace_sqrt_product`` is an alternative for tr((S1 S2)^{1/2}) that never leaves the reals:
S1 S2 is similar to the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}, so the trace is the sum of
square roots of that matrix's (clipped) eigenvalues. It needs no eps and works for singular
covariances (fewer samples than dimensions).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

METHODS = ("scipy", "eigh")


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> (mu (D,), sigma (D, D)) in float64; sigma is unbiased (N - 1)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


class RunningStats:
    """Mean and unbiased covariance of features seen in batches (a dataset too large to keep
    its features: 3M LSUN images x 2048 float32 are 24 GB).

    Each batch's own mean and centred scatter are merged with Chan et al.'s pairwise update
    (float64): M2 += C_b + delta delta^T n_a n_b / n, which avoids the cancellation of
    sum(x x^T) - n mu mu^T. Equals :func:`compute_statistics` up to float64 round-off.
    """

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, features) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (B, D), got shape {x.shape}")
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        xc = x - mb
        cb = xc.T @ xc
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, cb
            return
        n = self.n + nb
        delta = mb - self.mean
        self.m2 = self.m2 + cb + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) as :func:`compute_statistics`."""
        if self.n < 2:
            raise ValueError(f"statistics need >= 2 feature rows, got {self.n}")
        return self.mean, self.m2 / (self.n - 1)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 (D, D), via two symmetric eigendecompositions."""
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def sqrtm_product(sigma1, sigma2, eps: float = 1e-6) -> np.ndarray:
    """(S1 S2)^{1/2} as the ADM / pytorch-fid evaluators compute it (real part, float64).

    If SciPy's root is not finite, retries with S1 + eps·I and S2 + eps·I. Raises ValueError
    if the diagonal keeps an imaginary part above 1e-3.
    """
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    with warnings.catch_warnings():
        # SciPy warns on (near-)singular input; the finiteness check below handles it.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"singular product in the Fréchet distance; adding {eps} to the "
                      "diagonal of the covariances")
        offset = np.eye(s1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the "
                             "matrix square root")
        covmean = covmean.real
    return covmean


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "scipy"
                     ) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (methods.md §6).

    Args:
      mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances (NumPy or JAX arrays).
      eps: diagonal offset used only when the product's square root is not finite.
      method: "scipy" (ADM / pytorch-fid arithmetic, the default) or "eigh"
        (``trace_sqrt_product``).

    Returns:
      the distance as a Python float (FID when the inputs are Inception pool_3 statistics).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances must both be ({mu1.shape[0]}, {mu1.shape[0]}), got "
                         f"{s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    if method == "scipy":
        tr_covmean = float(np.trace(sqrtm_product(s1, s2, eps)))
    else:
        tr_covmean = trace_sqrt_product(s1, s2)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features1, features2, **kwargs) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*compute_statistics(features1), *compute_statistics(features2),
                            **kwargs)
