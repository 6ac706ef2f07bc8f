"""Observability is checked before solving and names the buses that are left."""

from __future__ import annotations

import numpy as np
import pytest

from estimator.baselines import make_estimator
from estimator.errors import NotObservableError
from estimator.linear import LinearStateEstimator
from estimator.measurement import MeasurementModel, Spec
from estimator.network import load_case
from estimator.observability import check_observable, unobservable_buses
from estimator.synthetic import ieee33_with_plants, paper_specs, truth

LATERAL = ("@29-30", "@30-31", "@31-32", "@32-33", "inj@31")


@pytest.fixture(scope="module")
def paper():
    net = ieee33_with_plants()
    model = MeasurementModel(net, paper_specs(net))
    _, z = truth(model, pv_pu=0.05)
    return model, z


def without(model: MeasurementModel, z: np.ndarray, needles: tuple[str, ...]) -> np.ndarray:
    act = np.isfinite(z)
    for k, name in enumerate(model.names):
        if any(t in name for t in needles):
            act[k] = False
    return act


def test_paper_layout_is_observable(paper):
    model, z = paper
    check_observable(model, np.isfinite(z))
    assert unobservable_buses(model, np.isfinite(z)) == ([], 0)


def test_removing_meters_names_the_buses(paper):
    model, z = paper
    act = without(model, z, LATERAL)
    with pytest.raises(NotObservableError) as info:
        LinearStateEstimator(model).solve(z, active=act)
    # the lateral 30..33 and the PV plant node 37 behind bus 33
    assert sorted(info.value.buses) == [30, 31, 32, 33, 37]
    assert "30, 31, 32, 33, 37" in str(info.value)


def test_removing_meters_step_by_step(paper):
    model, z = paper
    # take the lateral's meters away one at a time until the estimator refuses
    act = np.isfinite(z)
    names = [n for n in model.names if any(t in n for t in LATERAL)]
    for step, name in enumerate(names):
        act[model.names.index(name)] = False
        try:
            check_observable(model, act)
        except NotObservableError as exc:
            assert step > 0
            assert exc.buses and set(exc.buses) <= {30, 31, 32, 33, 37}
            break
    else:
        pytest.fail("removing the whole lateral's meters kept it observable")


def test_baselines_check_too(paper):
    model, z = paper
    act = without(model, z, LATERAL)
    for method in ("wls", "pgm_il"):
        with pytest.raises(NotObservableError) as info:
            make_estimator(method, model).solve(z, active=act)
        assert 33 in info.value.buses


def test_two_islands_named():
    net = load_case("ieee33")
    specs = paper_specs(net, plants=())
    model = MeasurementModel(net, specs)
    _, z = truth(model)
    act = without(model, z, ("@17-18", "@24-25", "inj@25"))
    with pytest.raises(NotObservableError, match=r"\[18\]; \[25\]") as info:
        check_observable(model, act)
    assert sorted(info.value.buses) == [18, 25]


def test_magnitude_alone_is_not_a_phasor():
    net = load_case("ieee33")
    # |V| at every bus and nothing else: angles are unknown everywhere but the reference
    model = MeasurementModel(net, [Spec("vm", bus=i, sigma=1e-3) for i in range(net.n_bus)])
    with pytest.raises(NotObservableError) as info:
        check_observable(model, np.ones(model.m, bool))
    assert len(info.value.buses) >= net.n_bus - 1


def _rows_built_for_the_set(model: MeasurementModel, active: np.ndarray,
                            pv_constraints: bool) -> np.ndarray:
    """``O`` built from scratch for one measurement set (the rows as the module docstring
    defines them), to hold the per-model row cache against."""
    import scipy.sparse as sp

    from estimator.observability import _measured_rows, constraint_rows

    return sp.vstack([_measured_rows(model, active),
                      constraint_rows(model, pv_constraints=pv_constraints)]).toarray()


def test_the_matrix_of_a_set_is_the_one_built_for_it(paper) -> None:  # type: ignore[no-untyped-def]
    """The rows cached per model are exactly those built for each set, also after the
    nominal angles change and with or without the PV constraints."""
    from estimator.observability import observability_matrix

    model, _ = paper
    rng = np.random.default_rng(3)
    saved = model.nominal.copy()
    try:
        for k in range(12):
            if k == 6:  # the angles the rows were built at move (a re-base)
                model.nominal[:] = rng.uniform(-0.5, 0.5, model.m)
            act = rng.random(model.m) > 0.2
            pv = k >= 9  # the constraint rows change once
            got = observability_matrix(model, act, pv_constraints=pv).toarray()
            np.testing.assert_array_equal(got, _rows_built_for_the_set(model, act, pv))
    finally:
        model.nominal[:] = saved


def test_the_cholesky_certificate_never_changes_a_verdict(paper, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The dense check answers "observable" from a Cholesky bound before any
    eigen-decomposition; on random sets around the edge of observability (and after the
    nominal angles move) its verdicts, buses and deficiencies are those of the
    eigen-decomposition alone, and the bound does decide the observable ones."""
    import estimator.observability as obs

    model, _ = paper
    rng = np.random.default_rng(8)
    saved = model.nominal.copy()
    decided = 0
    bound = obs._surely_full_rank

    def counting(gram: np.ndarray, tol: float) -> bool:
        nonlocal decided
        ok = bound(gram, tol)
        decided += ok
        return ok

    try:
        both = set()
        for k in range(160):
            if k == 80:
                model.nominal[:] = rng.uniform(-0.5, 0.5, model.m)
            act = rng.random(model.m) > rng.uniform(0.0, 0.45)
            monkeypatch.setattr(obs, "_surely_full_rank", counting)
            got = obs.unobservable_buses(model, act)
            monkeypatch.setattr(obs, "_surely_full_rank", lambda g, t: False)
            want = obs.unobservable_buses(model, act)
            assert got == want
            both.add(want[1] == 0)
        assert both == {True, False}
        assert decided > 10
    finally:
        model.nominal[:] = saved


def test_the_dense_rows_are_the_sparse_ones(paper) -> None:  # type: ignore[no-untyped-def]
    """The dense check's cached rows (rebuilt when the nominal angles move) are exactly
    the rows built for each set, with and without the PV constraints."""
    from estimator.observability import _dense_rows

    model, _ = paper
    rng = np.random.default_rng(4)
    saved = model.nominal.copy()
    try:
        for k in range(9):
            if k in (3, 6):
                model.nominal[:] = rng.uniform(-0.5, 0.5, model.m)
            act = rng.random(model.m) > 0.2
            pv = k % 2 == 0
            rows, cons = _dense_rows(model, pv)
            got = np.vstack([rows[act], cons])
            np.testing.assert_array_equal(got, _rows_built_for_the_set(model, act, pv))
    finally:
        model.nominal[:] = saved
