"""The evaluation's own 1-D DBSCAN gives scikit-learn's labels (scikit-learn: dev extra).

``gridtwin evaluate`` must run on the lean install, so its DBSCAN baseline is written in
numpy + scipy (:func:`models.evaluate.dbscan_labels`); these tests hold it to the
reference implementation value for value, label numbers included (the baseline keeps the
largest cluster, ties going to the lower number).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

from models.evaluate import dbscan_flags, dbscan_labels


def _reference(v: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    return np.asarray(DBSCAN(eps=eps, min_samples=min_samples).fit_predict(v[:, None]))


def test_contested_border_value_joins_the_first_cluster_found() -> None:
    # 0.85 is within 0.5 of both clusters' edge values but has only 3 neighbours: not core
    a = [0.0, 0.1, 0.2, 0.3, 0.4]
    b = [1.3, 1.4, 1.5, 1.6, 1.7]
    rng = np.random.default_rng(5)
    for _ in range(50):
        v = rng.permutation(np.array([*a, 0.85, *b, 9.0]))
        ours = dbscan_labels(v, eps=0.5, min_samples=5)
        assert np.array_equal(ours, _reference(v, 0.5, 5)), v
        assert ours[v == 9.0][0] == -1


@pytest.mark.parametrize("seed", range(12))
def test_labels_equal_scikit_learn_on_noisy_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 120))
    v = rng.standard_normal(n) * rng.uniform(0.2, 1.5)
    gross = rng.random(n) < rng.uniform(0.0, 0.3)
    v[gross] += rng.choice([-1, 1], gross.sum()) * rng.uniform(1.0, 6.0, gross.sum())
    v = np.round(v, int(rng.integers(1, 4)))  # ties and exact-eps distances
    for eps, min_samples in ((0.5, 5), (0.3, 3), (1.0, 8)):
        ours = dbscan_labels(v, eps=eps, min_samples=min_samples)
        assert np.array_equal(ours, _reference(v, eps, min_samples)), (seed, eps, min_samples)


def test_no_core_value_means_all_noise() -> None:
    v = np.arange(6, dtype=float) * 10.0
    assert np.array_equal(dbscan_labels(v, eps=0.5, min_samples=5), np.full(6, -1))


def test_flags_are_values_outside_the_largest_cluster() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((250, 3)) * 0.01 + np.array([12.6, 0.8, -0.3])
    x[[7, 120, 201], 0] *= 1.4
    x[[50, 51], 2] = np.nan
    flags = dbscan_flags(x)
    assert flags[[7, 120, 201], 0].all()
    assert not flags[:, 2][np.isnan(x[:, 2])].any()
    assert flags.mean() < 0.05
