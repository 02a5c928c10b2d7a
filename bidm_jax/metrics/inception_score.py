"""Inception Score with ADM's splits (methods.md §6).

    IS = mean over splits s of exp( mean_{i in s} KL(p(y|x_i) || p_s(y)) ),

where p(y|x) = softmax(logits) and p_s(y) is the mean prediction within the split. ADM cuts
the samples into consecutive chunks of ``split_size`` (5000; the last chunk may be shorter)
rather than a fixed number of splits, and takes the softmax of ``pool_3 @ W`` without the
classifier bias (our ``logits_unbiased``).
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def inception_score(logits, split_size: int = 5000) -> float:
    """logits (N, C) -> IS (float). Computed in float64 with log-softmax (no log(0))."""
    x = np.asarray(logits, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"logits must be (N > 0, C), got shape {x.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    logp = log_softmax(x, axis=1)
    scores = []
    for start in range(0, x.shape[0], split_size):
        lp = logp[start:start + split_size]
        p = np.exp(lp)
        log_marginal = np.log(p.mean(axis=0, keepdims=True))
        kl = np.sum(p * (lp - log_marginal), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))
