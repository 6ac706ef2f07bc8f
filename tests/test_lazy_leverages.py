"""A grossly failing state's leverages with ``lazy_failing_leverages`` (the estimator
worker sets its gross factor, 3, at 1 kHz): until a state of its measurement set passes
the chi-square test, a state whose J(x) is above that many times the quantile, outside
the bad-data search, keeps the leverages its set last had or gets none, instead of
taking them (~0.5 ms on IEEE33, a missed deadline for each of a run's first gross
snapshots); the search itself takes them afresh, so what it removes is unchanged, and
a state just above the quantile takes them as before."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import estimator.linear as linear_mod
from estimator.linear import LinearStateEstimator
from estimator.synthetic import truth
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
    lazy.lazy_failing_leverages = 3.0
    zs = _gross(model, 3)
    for z in zs:
        a, b = lazy.solve(z), eager.solve(z)
        assert a.objective > 3 * a.chi2_threshold
        assert b.objective == pytest.approx(a.objective)
        # none taken: no normalized residuals, the quantile by the degrees of freedom
        assert np.isnan(a.normalized_residual).all()
        assert np.isfinite(b.normalized_residual).all()
        assert a.chi2_threshold == lazy._chi2(a.dof)
    # the eager estimator takes them at every failing state, the lazy one never
    assert len(taken) == len(zs)


def test_a_gross_state_keeps_the_leverages_its_set_has(taken: list[int]) -> None:
    model = _model()
    est = LinearStateEstimator(model)
    zs = _gross(model, 3)
    first = est.solve(zs[0])  # eager: leverages of a failing state, kept for the set
    assert len(taken) == 1
    est.lazy_failing_leverages = 3.0
    for z in zs[1:]:
        st = est.solve(z)
        assert st.chi2_threshold == first.chi2_threshold
    assert len(taken) == 1


def test_a_state_just_above_the_quantile_takes_them(taken: list[int]) -> None:
    """1 % of healthy snapshots fail the test: their quantile stays the calibrated one."""
    model = _model()
    est = LinearStateEstimator(model)
    est.lazy_failing_leverages = 3.0
    _, z = truth(model, load_scale=0.9)
    rng = np.random.default_rng(2)
    z = z + 1.5 * rng.standard_normal(z.size) * model.sigma(z)  # noisier than stated
    st = est.solve(z)
    assert est._chi2(st.dof) < st.objective < 3 * est._chi2(st.dof)
    assert len(taken) == 1 and np.isfinite(st.normalized_residual).all()


def test_the_search_after_a_lazy_solve_removes_what_an_eager_one_removes() -> None:
    model = _model()
    lazy, eager = LinearStateEstimator(model), LinearStateEstimator(_model())
    lazy.lazy_failing_leverages = 3.0
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
    est.lazy_failing_leverages = 3.0
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
