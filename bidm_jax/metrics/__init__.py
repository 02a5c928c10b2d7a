"""Evaluation metrics (methods.md §6): FID, sFID, IS, precision/recall, KID; the FID
InceptionV3 in Flax NNX with its weight converter; reference statistics; a proxy feature
network for machines without the Inception weights.

Heavy pieces (networks, entry points) live in their modules; the pure metric functions are
re-exported here.
"""
from bidm_jax.metrics.fid import compute_statistics, frechet_distance
from bidm_jax.metrics.inception_score import inception_score
from bidm_jax.metrics.kid import kernel_inception_distance
from bidm_jax.metrics.prec_recall import manifold_radii, precision_recall

__all__ = ["compute_statistics", "frechet_distance", "inception_score",
           "kernel_inception_distance", "manifold_radii", "precision_recall"]
