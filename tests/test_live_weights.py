"""Live and offline estimates agree (issue: the live estimator used to weigh measurements
by its no-load warm-up snapshot, so flows and currents got their floor sigma).

The same noisy snapshots go through (a) the estimator worker's solve function as the
process builds it (warm-up included), (b) a real worker process behind the supervisor and
(c) ``gridtwin estimate``'s ``estimate_trace``; the states agree to 1e-9. The load swings
from 30 % to 120 % so the re-weighting rule fires on the way, in every path alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from estimator import pgm
from estimator.errors import EstimatorError
from estimator.linear import LinearStateEstimator
from estimator.measurement import MeasurementModel
from estimator.synthetic import ieee33_with_plants, paper_specs, truth
from gateway import config
from gateway.cli_estimate import estimate_trace
from gateway.estimator_worker import solver_for
from gateway.handoff import StateMsg
from gateway.se_model import measurement_model
from gateway.snapshot import Snapshot
from gateway.supervisor import EstimatorSupervisor
from hil import trace as trace_mod

STEPS = 12
TOL = 1e-9


@pytest.fixture(scope="module")
def case() -> tuple[Any, Any]:
    """(config, trace): noisy measurements of a load/PV swing on the ieee33 twin."""
    cfg = config.load_config("ieee33")
    model = measurement_model(cfg)
    net = cfg.network
    scale = np.linspace(0.3, 1.2, STEPS)[:, None]
    pv = np.linspace(0.9, 0.2, STEPS)[:, None] * np.ones(len(cfg.plants))
    p = net.p_gen - scale * net.p_load
    q = net.q_gen - scale * net.q_load
    p[:, model.pv_nodes] = pv / net.base_mva
    v = pgm.power_flow(net, p, q, tolerance=1e-12, max_iterations=50)
    real = model.channel >= 0
    rng = np.random.default_rng(11)
    values = np.zeros((STEPS, len(cfg.channels)))
    for k in range(STEPS):
        z = model.h(v[k])
        z += rng.standard_normal(z.size) * model.sigma(z)  # meter noise at its accuracy
        values[k, model.channel[real]] = z[real] / model.scale[real]
    t = 1.7e9 + np.arange(STEPS, dtype=float)
    zeros = np.zeros((STEPS, net.n_branch), complex)
    tr = trace_mod.Trace(
        time=t, measured=values, truth=values.copy(), bad=np.zeros(values.shape, bool),
        missing=np.zeros(values.shape, bool), v=v, i_branch_from=zeros,
        s_branch_from=zeros, s_branch_to=zeros, s_inj=np.zeros((STEPS, net.n_bus), complex),
        pv_mw=pv, weather=np.zeros((STEPS, len(cfg.plants), 6)),
        channel_names=[c.name for c in cfg.channels],
        plant_names=[p.name for p in cfg.plants], meta={"digest": cfg.digest})
    return cfg, tr


def offline(cfg: Any, tr: Any, *, batch: bool = False) -> np.ndarray:
    """``gridtwin estimate``'s states: row by row (as the worker), or in one batch."""
    res = estimate_trace(cfg, tr, "linear", pv="truth", batch=batch)
    assert res["failed"] == 0
    return np.asarray(res["_v"])


def test_the_batch_estimate_matches_row_by_row(case: tuple[Any, Any]) -> None:
    """The vectorised batch (``gridtwin estimate``'s default) starts every snapshot from
    the previous batch answer instead of the previous snapshot's: equal to the
    estimator's tolerance (1e-7 pu), with the same re-weightings along the swing."""
    cfg, tr = case
    np.testing.assert_allclose(offline(cfg, tr, batch=True), offline(cfg, tr), rtol=0,
                               atol=1e-6)


def test_the_worker_solve_function_matches_gridtwin_estimate(case: tuple[Any, Any]) -> None:
    cfg, tr = case
    want = offline(cfg, tr)
    _, solve = solver_for(cfg, "linear")  # as the worker process builds it (warm-up too)
    flags = np.zeros(len(cfg.channels), np.uint32)
    for k in range(STEPS):
        vm, va, *_ , conv = solve(tr.measured[k], flags, tr.pv_mw[k], np.zeros(0))
        assert conv
        np.testing.assert_allclose(vm, np.abs(want[k]), rtol=0, atol=TOL)
        np.testing.assert_allclose(va, np.angle(want[k]), rtol=0, atol=TOL)


def test_the_live_worker_process_matches_gridtwin_estimate(case: tuple[Any, Any]) -> None:
    cfg, tr = case
    want = offline(cfg, tr)
    got = asyncio.run(_live(tr))
    assert [s.seq for s in got] == list(range(STEPS))
    for k, st in enumerate(got):
        np.testing.assert_allclose(st.vm, np.abs(want[k]), rtol=0, atol=TOL)
        np.testing.assert_allclose(st.va, np.angle(want[k]), rtol=0, atol=TOL)


async def _live(tr: Any) -> list[StateMsg]:
    """Each snapshot through a real worker process, one at a time (no newest-wins)."""
    states: list[StateMsg] = []
    arrived = asyncio.Event()

    def on_state(st: StateMsg, _t: float, _met: bool) -> None:
        states.append(st)
        arrived.set()

    sup = EstimatorSupervisor("ieee33", deadline_s=30.0, method="linear", spare=False,
                              on_state=on_state)
    await sup.start()
    try:
        for k in range(STEPS):
            now = time.time()
            sup.submit(Snapshot(k, float(tr.time[k]), now, tr.measured[k], published_time=now),
                       tr.pv_mw[k], np.zeros(tr.pv_mw.shape[1]))
            async with asyncio.timeout(60):
                while len(states) <= k:
                    arrived.clear()
                    await arrived.wait()
    finally:
        await sup.close()
    return states


def test_a_warm_up_does_not_weigh_the_real_snapshots() -> None:
    """Library level: a solve on a foreign snapshot, then forget_weights(), leaves the
    estimator as if new: the same nominal values, and the same estimates to rounding (the
    forgotten factorizations' structure is kept and re-weighted rather than rebuilt, so
    the two solves round differently: 1.06e-12 apart with one machine's BLAS)."""
    net = ieee33_with_plants()
    model_a = MeasurementModel(net, paper_specs(net))
    model_b = MeasurementModel(net, paper_specs(net))
    _, z = truth(model_a)
    z = z + np.random.default_rng(2).standard_normal(z.size) * model_a.sigma(z)
    a = LinearStateEstimator(model_a)
    b = LinearStateEstimator(model_b)
    a.solve(np.where(model_a.kind == "vm", 1.0, 0.0))  # a no-load "warm-up"
    assert np.any(model_a.nominal != 0)
    a.forget_weights()
    a.reset()
    assert np.all(model_a.nominal == 0)
    va, vb = a.solve(z).v, b.solve(z).v
    np.testing.assert_allclose(va, vb, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(model_a.nominal, model_b.nominal)


def test_nominal_values_are_re_based_when_the_load_moves() -> None:
    """The rule: a sigma moving by more than ``reweight_ratio`` re-bases every nominal
    value on that snapshot; the result then equals a fresh estimator's on it."""
    net = ieee33_with_plants()
    specs = paper_specs(net)
    model = MeasurementModel(net, specs)
    rel = model.rel > 0
    assert rel.any()
    _, z1 = truth(model)
    est = LinearStateEstimator(model, tolerance=1e-12, max_iterations=100)
    est.solve(z1)
    assert est.reweights == 0
    nominal_1 = model.nominal.copy()
    est.solve(z1 * 1.01)  # a small move: weights kept
    assert est.reweights == 0 and np.array_equal(model.nominal, nominal_1)
    gross = z1.copy()
    big = np.flatnonzero(rel & ~model.is_angle)[:3]
    gross[big] *= 10.0  # a few gross errors are not a load change
    est.solve(gross)
    assert est.reweights == 0 and np.array_equal(model.nominal, nominal_1)
    z3 = z1.copy()
    z3[~model.is_angle] *= 3.0  # the load tripled: sigmas moved by up to 3x
    got = est.solve(z3, warm_start=False)
    assert est.reweights == 1
    np.testing.assert_array_equal(model.nominal, z3)
    fresh_model = MeasurementModel(net, specs)
    fresh = LinearStateEstimator(fresh_model, tolerance=1e-12, max_iterations=100)
    np.testing.assert_allclose(got.v, fresh.solve(z3, warm_start=False).v, rtol=0,
                               atol=1e-10)
    with pytest.raises(EstimatorError, match="reweight_ratio"):
        LinearStateEstimator(model, reweight_ratio=0.5)


def test_the_worker_removes_a_gross_error_the_quality_stage_let_through(
        case: tuple[Any, Any]) -> None:
    """A snapshot whose gross errors were not flagged (the detector still warming up):
    the estimate fails its chi-square test, which is what the worker reports (the alert's
    view of the data as it arrived), and the largest-normalized-residual search removes
    the errors from the state it returns (the worker process's default, ``clean``)."""
    cfg, tr = case
    _, solve = solver_for(cfg, "linear", clean=True)
    flags = np.zeros(len(cfg.channels), np.uint32)
    clean = solve(tr.measured[3], flags, tr.pv_mw[3], np.zeros(0))
    bad = tr.measured[3].copy()
    names = [c.name for c in cfg.channels]
    pq = [i for i, c in enumerate(cfg.channels) if c.quantity == "p"][:2]
    va = [i for i, c in enumerate(cfg.channels) if c.quantity == "va"][1]
    bad[pq] *= 1.5
    bad[va] += 0.05
    assert all(names[i] for i in [*pq, va])
    vm, va_est, chi2, thr, _, ok = solve(bad, flags, tr.pv_mw[3], np.zeros(0))
    assert ok and chi2 > thr
    v_true = tr.v[3]
    err = np.abs(vm * np.exp(1j * va_est) - v_true).max()
    assert err < 2e-3
    # without the search the errors would move the state far more
    est = LinearStateEstimator(measurement_model(cfg))
    model = est.model
    z = model.values_to_pu(bad, tr.pv_mw[3])
    raw = est.solve(z)
    assert np.abs(raw.v - v_true).max() > 5 * err
    assert clean[2] <= clean[3]
