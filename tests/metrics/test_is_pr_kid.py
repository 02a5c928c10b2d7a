"""Inception Score, precision/recall and KID on constructed inputs."""
import numpy as np
import pytest

from bidm_jax.metrics.inception_score import inception_score
from bidm_jax.metrics.kid import kernel_inception_distance
from bidm_jax.metrics.prec_recall import manifold_radii, precision_recall


def test_inception_score_matches_hand_computation():
    big = 50.0  # softmax of one-hot * 50 is one-hot to float64 precision
    # 4 confident predictions over 4 distinct classes -> marginal uniform -> IS = 4.
    assert inception_score(np.eye(4) * big) == pytest.approx(4.0, rel=1e-9)
    # All predict the same class -> IS = 1.
    assert inception_score(np.tile(np.eye(4)[:1] * big, (6, 1))) == pytest.approx(1.0)
    # Soft case by hand: p1 = (0.5, 0.5), p2 = (0.9, 0.1); marginal m = (0.7, 0.3).
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    m = p.mean(0)
    expect = np.exp(np.mean(np.sum(p * np.log(p / m), 1)))
    assert inception_score(np.log(p)) == pytest.approx(expect, rel=1e-12)


def test_inception_score_uses_adm_consecutive_splits():
    # Split 1: two classes (IS 2); split 2: one class (IS 1) -> mean 1.5 with split_size=2.
    logits = np.array([[50.0, 0, 0], [0, 50.0, 0], [0, 0, 50.0], [0, 0, 50.0]])
    assert inception_score(logits, split_size=2) == pytest.approx(1.5)
    # One split: marginal (1/4, 1/4, 1/2); KLs log 4, log 4, log 2, log 2 -> exp(1.5 log 2).
    assert inception_score(logits, split_size=4) == pytest.approx(2 ** 1.5, rel=1e-9)


def test_manifold_radii_is_kth_neighbour_squared_distance():
    x = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], np.float32)
    # k = 1: nearest other point; k = 2: second nearest (squared distances).
    np.testing.assert_allclose(manifold_radii(x, k=1, block=2), [1, 1, 4, 9, 16])
    np.testing.assert_allclose(manifold_radii(x, k=2, block=3), [9, 4, 9, 16, 49])


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8)).astype(np.float32)
    assert precision_recall(a, a, k=3, block=128) == (1.0, 1.0)
    far = a + 100.0
    assert precision_recall(a, far, k=3, block=128) == (0.0, 0.0)


def test_precision_recall_partial_overlap_against_numpy():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 4)).astype(np.float32)
    smp = (rng.normal(size=(150, 4)) * 1.5 + 0.7).astype(np.float32)

    def radii(f, k=3):
        d = ((f[:, None] - f[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    d = ((ref[:, None] - smp[None]) ** 2).sum(-1)  # (200, 150)
    prec = np.mean(np.any(d <= radii(ref)[:, None], axis=0))
    rec = np.mean(np.any(d <= radii(smp)[None, :], axis=1))
    p, r = precision_recall(ref, smp, k=3, block=64)
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0
    assert p == pytest.approx(prec, abs=1 / 150) and r == pytest.approx(rec, abs=1 / 200)


def _mmd_numpy(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) \
        - 2 * kxy.mean()


def test_kid_matches_numpy_on_full_sets_and_is_near_zero_for_same_distribution():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 16))
    y = rng.normal(size=(64, 16)) + 1.0
    kid, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=64)
    assert kid == pytest.approx(_mmd_numpy(x, y), rel=1e-5)
    assert std == pytest.approx(0.0, abs=1e-6 * abs(kid))  # full sets: every subset equal
    same, _ = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)),
                                        num_subsets=10, subset_size=200)
    assert abs(same) < 0.02 * kid


def test_metric_input_validation():
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.zeros(5))
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="N > k"):
        manifold_radii(np.zeros((3, 2)), k=3)
