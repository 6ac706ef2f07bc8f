"""Forgotten weights keep the factorizations' structure (``forget_weights``: the
estimator worker after its warm-up, rule (a)'s full re-basing): the next snapshot
re-weights the cached structure (~0.3 ms on IEEE33) instead of building the
factorization again (2.5-4 ms, the worker's first live snapshot took 4-7 ms), and
estimates what an estimator that never saw the forgotten weights estimates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from estimator.linear import LinearStateEstimator
from tests.test_linear_fast import _model, _snapshots


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The estimators (``id``) that built a factorization from scratch, once per build
    (the real method, counted)."""
    calls: list[int] = []
    real = LinearStateEstimator._build

    def counted(self: LinearStateEstimator, *args: Any, **kw: Any) -> Any:
        calls.append(id(self))
        return real(self, *args, **kw)

    monkeypatch.setattr(LinearStateEstimator, "_build", counted)
    return calls


def test_the_first_snapshot_after_forgetting_reweights_the_structure(
        builds: list[int]) -> None:
    model = _model()
    z = _snapshots(model, 40, seed=5)
    forgot = LinearStateEstimator(model)
    # a warm-up on other values (the worker's no-load profile): weights to forget
    forgot.solve(z[-1] * 1.3)
    assert builds.count(id(forgot)) == 1
    forgot.forget_weights()
    forgot.reset()
    fresh = LinearStateEstimator(_model())
    for zk in z[:8]:
        a, b = forgot.solve(zk), fresh.solve(zk)
        np.testing.assert_allclose(a.v, b.v, rtol=0, atol=1e-10)
        assert a.objective == pytest.approx(b.objective, rel=1e-8)
    np.testing.assert_array_equal(forgot.model.nominal, fresh.model.nominal)
    # the fresh estimator built its first set and any later one; the forgetting one
    # built the warm-up's, re-weighted it for the first snapshot and built only the
    # later ones
    assert builds.count(id(fresh)) >= 1
    assert builds.count(id(forgot)) == builds.count(id(fresh))
