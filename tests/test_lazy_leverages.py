"""A failing state's leverages with ``lazy_failing_leverages`` (what the estimator worker
sets at 1 kHz): until a state of its measurement set passes the chi-square test, a
failing one outside the bad-data search keeps the leverages its set last had, instead
of taking them again (~0.5 ms on IEEE33, a missed deadline for each of a run's first
gross snapshots); the search itself takes them afresh, so what it removes is unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import estimator.linear as linear_mod
from estimator.linear import LinearStateEstimator
from tests.test_badata_fast import _cases
from tests.test_linear_fast import _model


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the leverages were computed (the real function, counted)."""
    calls: list[int] = []
    real = linear_mod.linear_sensitivity

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(linear_mod, "linear_sensitivity", counted)
    return calls


def _gross(model: Any, n: int) -> list[np.ndarray]:
    """``n`` snapshots with gross errors and every value active (one measurement set)."""
    out = [z for z, act, _ in _cases(model, 8 * n, 11) if act.all()]
    assert len(out) >= n
    return out[:n]


def test_failing_states_of_one_set_take_the_leverages_once(taken: list[int]) -> None:
    model = _model()
    lazy, eager = LinearStateEstimator(model), LinearStateEstimator(_model())
    lazy.lazy_failing_leverages = True
    zs = _gross(model, 3)
    for z in zs:
        a, b = lazy.solve(z), eager.solve(z)
        assert a.objective > a.chi2_threshold and b.objective == pytest.approx(a.objective)
    # the eager estimator takes them at every failing state, the lazy one once
    assert len(taken) == 1 + len(zs)
    # the first failing state's leverages stand for its set: the same J(x) quantile
    assert lazy.solve(zs[0]).chi2_threshold == lazy.solve(zs[1]).chi2_threshold


def test_the_search_after_a_lazy_solve_removes_what_an_eager_one_removes() -> None:
    model = _model()
    lazy, eager = LinearStateEstimator(model), LinearStateEstimator(_model())
    lazy.lazy_failing_leverages = True
    for z in _gross(model, 3):
        a0, b0 = lazy.solve(z), eager.solve(z)
        a = lazy.solve_clean(z, warm_start=a0.v)
        b = eager.solve_clean(z, warm_start=b0.v)
        assert a.removed == b.removed and a.removed
        np.testing.assert_array_equal(a.v, b.v)
        np.testing.assert_array_equal(a.normalized_residual, b.normalized_residual)


def test_a_passing_state_takes_them_afresh(taken: list[int]) -> None:
    model = _model()
    est = LinearStateEstimator(model)
    est.lazy_failing_leverages = True
    gross = _gross(model, 1)[0]
    est.solve(gross)
    n = len(taken)
    clean = est.solve_clean(gross)  # the search's final state passes the test
    assert clean.objective <= clean.chi2_threshold
    assert len(taken) > n
    # a healthy snapshot of the full set: leverages at a passing state, then frozen
    z = model.h(clean.v)
    st = est.solve(z)
    assert st.objective <= st.chi2_threshold
    frozen = len(taken)
    est.solve(gross)
    est.solve(z)
    assert len(taken) == frozen
