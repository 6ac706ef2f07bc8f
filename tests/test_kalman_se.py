"""The kalman SE (injection-driven process noise, learned rates) beside the paper's static
one, and the chi-square test's calibration with the live worker's sigmas (issue
"Fidelity")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from estimator import pgm
from estimator.baselines import METHODS, make_estimator
from estimator.kalman import KalmanStateEstimator, injection_map
from gateway.config import load_config
from gateway.estimator_worker import measurement_scale, measurement_sigmas, solver_for
from gateway.se_model import measurement_model
from hil.scenario import ScenarioSpec, make_trace
from models.evaluate import healthy_snapshots, run_stage


def angle_rmse(v: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.angle(v * np.conj(truth)) ** 2)))


def vm_mape(v: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(np.abs(v) - np.abs(truth)) / np.abs(truth)))


@pytest.fixture(scope="module")
def model() -> Any:
    return measurement_model(load_config("ieee33"))


def _operating_point(model: Any, load: float, net: Any = None) -> np.ndarray:
    net = model.net if net is None else net
    p = net.p_gen - load * net.p_load
    q = net.q_gen - load * net.q_load
    p[model.pv_nodes] = 0.06
    return pgm.power_flow(net, p[None], q[None], tolerance=1e-12, max_iterations=50)[0]


def test_injection_map_is_the_linear_network_model(model: Any) -> None:
    """A's column pair k is the voltage change of a unit current injected at bus k (the
    slack's: of a unit slack voltage change), and zero-injection buses are fixed."""
    a, fixed = injection_map(model)
    n = model.n_bus
    y = model.net.ybus().toarray()
    k = int(model.pv_nodes[0])
    dv = np.ascontiguousarray(a[:, 2 * k]).view(complex)
    # Y dV = dI: the unit current at k, nothing elsewhere (the slack row takes the rest)
    di = y @ dv
    others = np.array([b for b in range(n) if b not in (k, model.net.slack)])
    np.testing.assert_allclose(di[k], 1.0, atol=1e-9)
    np.testing.assert_allclose(di[others], 0.0, atol=1e-9)
    assert dv[model.net.slack] == 0
    assert fixed[2 * model.zero_injection].all() and not fixed[2 * model.pv_nodes].any()


def test_tracks_a_moving_feeder_better_than_the_static_estimate(model: Any) -> None:
    """Ten minutes around noon at one snapshot a second, PV swinging with the clouds, the
    forecasts with the model's 4.1 % error: the filter beats the static estimate on
    angle and on |V| (measured: angle 0.45x, |V| 0.55x)."""
    cfg = load_config("ieee33")
    tr = make_trace(ScenarioSpec(start="1990-06-01T12:00", hours=600 / 3600.0, step_s=1.0,
                                 bad_pct=0.0, missing_pct=0.0, seed=21))
    ratings = np.array([p.rating_mw for p in cfg.plants])
    rng = np.random.default_rng(0)
    pv = tr.pv_mw + rng.standard_normal(tr.pv_mw.shape) * 0.041 * ratings
    z = model.values_to_pu(tr.measured, pv)
    lin = make_estimator("linear", model)
    kal = make_estimator("kalman", model)
    static = np.array([lin.solve(zk, now=t).v for zk, t in zip(z, tr.time, strict=True)])
    tracked = np.array([kal.solve(zk, now=t).v for zk, t in zip(z, tr.time, strict=True)])
    tail = slice(100, None)
    truth = tr.v[tail]
    assert angle_rmse(tracked[tail], truth) < 0.7 * angle_rmse(static[tail], truth)
    assert vm_mape(tracked[tail], truth) < 0.8 * vm_mape(static[tail], truth)


def test_a_switching_restarts_the_filter_and_reset_forgets_the_rates(model: Any) -> None:
    """A tie closing moves the state by far more than the learned injection rates allow:
    the filter restarts on that snapshot's static estimate (and then follows the new
    topology's estimates); ``reset`` (a worker restart) forgets the learned rates."""
    net = model.net
    tie = int(np.flatnonzero(~net.branches.in_service)[0])  # IEEE33's first tie line
    switched = net.with_switch(tie, True)
    v0 = _operating_point(model, 0.8)
    v1 = _operating_point(model, 0.8, switched)
    rng = np.random.default_rng(3)
    z0 = model.h(v0)
    kal = KalmanStateEstimator(model)
    for _ in range(60):
        kal.solve(z0 + rng.standard_normal(z0.size) * model.sigma(z0))
    assert kal.restarts == 0 and kal.q is not None
    # the switched feeder seen through the normal model (an unreported switching)
    z1 = model.h(v1) + rng.standard_normal(z0.size) * model.sigma(z0)
    st = kal.solve(z1)
    assert kal.restarts == 1 and st.innovation > 1e3
    np.testing.assert_array_equal(st.v, kal.static_v)  # that snapshot's static estimate
    kal.reset()
    assert kal.q is None and kal.x is None


def test_selectable_by_name_and_in_the_live_worker(model: Any) -> None:
    assert "kalman" in METHODS
    cfg = load_config("ieee33")
    n_bus, solve = solver_for(cfg, "kalman")
    v = _operating_point(model, 0.8)
    z = model.h(v)
    real = model.channel >= 0
    values = np.zeros(len(cfg.channels))
    values[model.channel[real]] = z[real] / model.scale[real]
    pv_mw = z[~real] / model.scale[~real]
    for _ in range(3):
        vm, va, chi2, thr, _, ok = solve(values, np.zeros(values.size, np.uint32), pv_mw,
                                         np.full(pv_mw.size, 0.041))
        assert ok and np.isfinite(chi2) and np.isfinite(thr)
    assert n_bus == model.n_bus
    np.testing.assert_allclose(vm * np.exp(1j * va), v, atol=1e-6)


def test_chi_square_is_calibrated_over_healthy_snapshots(model: Any) -> None:
    """1100 snapshots at 1 s with 10 % bad data through the real quality stage, the
    sigmas and sigma factors the live worker gives (corrected values:
    CORRECTED_SIGMA_FACTOR): between 0.5 % and 2 % of the healthy estimates (no bad value
    reached the estimator unflagged) fail the 99 % test, for the static SE and the kalman
    one (whose test is its static fit's). Measured: 1.37 % over 1094 healthy snapshots (the
    evaluation trace 12:00-12:08: 1.0 %; factor 1 there: 18.7 %)."""
    cfg = load_config("ieee33")
    tr = make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=1200 / 3600.0, step_s=1.0,
                                 bad_pct=10.0, seed=21))
    res = run_stage(cfg, tr, None)
    ks = np.arange(100, 1200)
    real = model.channel >= 0
    chan = model.channel[real]
    healthy = healthy_snapshots(tr, res["flags"], ks, clean=True)
    assert healthy.sum() >= 1000
    for method in ("linear", "kalman"):
        est = make_estimator(method, model)
        failed = np.zeros(ks.size, bool)
        for i, k in enumerate(ks):
            z = model.values_to_pu(res["values"][k], res["pv"][k])
            f = res["flags"][k][chan]
            act = np.isfinite(z)
            act[real] &= ~(((f & 1) != 0) & ((f & 4) == 0))
            st = est.solve(z, active=act, now=float(tr.time[k]),  # type: ignore[call-arg]
                           sigma=measurement_sigmas(model, z, f, res["pv_sigma"][k]),
                           sigma_scale=measurement_scale(model, f, float(tr.step_s)))
            failed[i] = st.objective > st.chi2_threshold
        pct = 100.0 * failed[healthy].mean()
        assert 0.5 <= pct <= 2.0, (method, pct)


def test_factors_follow_the_snapshot_period(model: Any) -> None:
    """The corrected values' sigma factor grows with the period (the predictor misses the
    movement since the last sample): CORRECTED_SIGMA_FACTOR at 1 s, the meter's own sigma
    (no factor, no refactorization) at 50 Hz; a STALE value keeps its factor; the kalman
    filter's PV factor is PV_SCALE at 1 s and grows as 1/sqrt(period)."""
    from estimator.kalman import PV_SCALE
    from gateway.estimator_worker import CORRECTED_SIGMA_FACTOR, STALE_SIGMA_FACTOR

    real = np.flatnonzero(model.channel >= 0)
    flags = np.zeros(real.size, np.uint32)
    flags[3] = 4  # CORRECTED
    at_1s = measurement_scale(model, flags, 1.0)
    assert at_1s is not None and at_1s[real[3]] == CORRECTED_SIGMA_FACTOR
    assert np.count_nonzero(at_1s != 1.0) == 1
    assert measurement_scale(model, flags, 0.02) is None
    flags[5] = 256  # STALE
    at_50hz = measurement_scale(model, flags, 0.02)
    assert at_50hz is not None and at_50hz[real[5]] == STALE_SIGMA_FACTOR
    assert at_50hz[real[3]] == 1.0
    assert KalmanStateEstimator(model).pv_scale == PV_SCALE
    assert KalmanStateEstimator(model, period_s=0.02).pv_scale == pytest.approx(
        PV_SCALE / np.sqrt(0.02))


def test_the_worker_removes_a_gross_error_with_kalman(model: Any) -> None:
    """The live worker's fallback (J(x) far above its quantile: the largest-normalized-
    residual search) runs for kalman too: its solve_clean redoes the last filter step on
    the cleaned static estimate, so an unflagged gross error does not reach the state."""
    cfg = load_config("ieee33")
    _, solve = solver_for(cfg, "kalman", clean=True)
    v = _operating_point(model, 0.8)
    z = model.h(v)
    real = model.channel >= 0
    values = np.zeros(len(cfg.channels))
    values[model.channel[real]] = z[real] / model.scale[real]
    pv_mw = z[~real] / model.scale[~real]
    flags = np.zeros(values.size, np.uint32)
    for _ in range(3):
        solve(values, flags, pv_mw, np.full(pv_mw.size, 0.041))
    p_rows = np.flatnonzero(real & np.array([s.kind == "p" for s in model.specs]))
    bad = values.copy()
    bad[model.channel[p_rows[5]]] *= 1.5  # a branch flow 50 % off, not flagged
    vm, va, chi2, thr, _, ok = solve(bad, flags, pv_mw, np.full(pv_mw.size, 0.041))
    assert ok and chi2 > 3 * thr  # the snapshot as it arrived fails the test
    np.testing.assert_allclose(vm * np.exp(1j * va), v, atol=1e-5)


def test_hold_takes_the_step_back_and_predicts(model: Any) -> None:
    """``hold`` after a solve: the state is the previous posterior (nothing of the held
    snapshot's values), its covariance that posterior's plus one step of process noise,
    and rule (b)'s drift flags are forgotten; nothing to hold on the first snapshot."""
    kal = KalmanStateEstimator(model)
    v = _operating_point(model, 0.8)
    z = model.h(v)
    kal.solve(z)
    assert kal.hold() is None  # the first snapshot: no prediction to hold
    rng = np.random.default_rng(4)
    for _ in range(4):
        kal.solve(z + rng.standard_normal(z.size) * model.sigma(z))
    assert kal.x is not None and kal.p is not None and kal.q is not None
    x, p, q = kal.x.copy(), kal.p.copy(), kal.q.copy()
    bad = z.copy()
    bad[5] += 40 * model.sigma(z)[5]
    kal.solve(bad)
    assert not np.array_equal(kal.x, x)  # the step with the gross value moved it
    kal.static._drift_prev[:] = True  # (whatever the gross snapshot drifted)
    held = kal.hold()
    assert held is not None
    np.testing.assert_array_equal(held, x.view(complex))
    np.testing.assert_array_equal(kal.x, x)
    np.testing.assert_allclose(kal.p, p + (kal.a * (q + kal.q_floor)) @ kal.a.T,
                               rtol=1e-12, atol=0)
    assert not kal.static._drift_prev.any()
    st = kal.solve(z)  # and the filter goes on from the prediction
    assert np.abs(st.v - v).max() < 1e-3


def _worker_values(cfg: Any, model: Any, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real = model.channel >= 0
    values = np.zeros(len(cfg.channels))
    values[model.channel[real]] = z[real] / model.scale[real]
    return values, z[~real] / model.scale[~real]


@pytest.mark.parametrize("method", ["linear", "kalman"])
@pytest.mark.parametrize("rate_hz", [1000.0, 50.0])
def test_the_1khz_worker_holds_the_prediction_for_a_gross_snapshot(
        model: Any, rate_hz: float, method: str) -> None:
    """At 1 kHz (below HOLD_PERIOD_S) a snapshot failing the gross test is answered with
    the prediction (the previous estimate; kalman: the filter's, the same state),
    flagged (not converged, 0 iterations, its own failing J(x)), at most HOLD_MAX_S in a
    row, then searched; at 50 Hz it is searched at once, as before."""
    from dataclasses import replace

    from gateway.estimator_worker import HOLD_MAX_S

    base = load_config("ieee33")
    cfg = replace(base, streams=tuple(replace(st, rate_hz=rate_hz) for st in base.streams))
    assert cfg.rate_hz == rate_hz
    t = [100.0]  # the worker's clock: one snapshot period per solve below

    def clock() -> float:
        return t[0]

    _, solve = solver_for(cfg, method, clean=True, clock=clock)
    v = _operating_point(model, 0.8)
    z = model.h(v)
    rng = np.random.default_rng(6)
    flags = np.zeros(len(cfg.channels), np.uint32)
    sig_pv = np.full(len(cfg.plants), 0.041)
    last = None
    for _ in range(4):
        values, pv_mw = _worker_values(
            cfg, model, z + rng.standard_normal(z.size) * model.sigma(z))
        t[0] += 1.0 / rate_hz
        last = solve(values, flags, pv_mw, sig_pv)
        assert last[5] and last[4] > 0
    assert last is not None
    p_rows = np.flatnonzero((model.channel >= 0)
                            & np.array([s.kind == "p" for s in model.specs]))
    values, pv_mw = _worker_values(cfg, model, z)
    values[model.channel[p_rows[5]]] *= 1.5  # a branch flow 50 % off, not flagged
    hold_max = round(HOLD_MAX_S * rate_hz) if rate_hz > 250 else 0
    for k in range(hold_max + 1):
        t[0] += 1.0 / rate_hz
        vm, va, chi2, thr, iters, ok = solve(values, flags, pv_mw, sig_pv)
        assert chi2 > 3 * thr  # the snapshot as it arrived: what the worker reports
        if k < hold_max:  # held: the previous state, flagged
            assert not ok and iters == 0
            np.testing.assert_array_equal(vm, last[0])
            np.testing.assert_array_equal(va, last[1])
        else:  # searched: the error removed from the state
            assert ok and iters > 0
            np.testing.assert_allclose(vm * np.exp(1j * va), v, atol=1e-4)
    assert hold_max in (0, 10)


@pytest.mark.parametrize("method", ["linear", "kalman"])
def test_no_hold_of_an_estimate_older_than_hold_max(model: Any, method: str) -> None:
    """A solve function whose previous answer is older than HOLD_MAX_S (a topology coming
    back to its cached solver, a stalled feed) does not hold an estimate from then: the
    gross snapshots are left unestimated (NotSearched: a FAIL) until they have come for
    HOLD_MAX_S, then searched; a fresh answer is held again (the clock is the
    caller's)."""
    from dataclasses import replace

    from gateway.estimator_worker import HOLD_MAX_S, NotSearched

    base = load_config("ieee33")
    cfg = replace(base, streams=tuple(replace(st, rate_hz=1000.0) for st in base.streams))
    t = [100.0]
    _, solve = solver_for(cfg, method, clean=True, clock=lambda: t[0])
    v = _operating_point(model, 0.8)
    z = model.h(v)
    flags = np.zeros(len(cfg.channels), np.uint32)
    sig_pv = np.full(len(cfg.plants), 0.041)
    values, pv_mw = _worker_values(cfg, model, z)
    for _ in range(3):
        t[0] += 1e-3
        assert solve(values, flags, pv_mw, sig_pv)[5]
    p_rows = np.flatnonzero((model.channel >= 0)
                            & np.array([s.kind == "p" for s in model.specs]))
    bad = values.copy()
    bad[model.channel[p_rows[5]]] *= 1.5
    t[0] += 2 * HOLD_MAX_S  # the last answer is old: nothing to hold
    skipped = 0
    while True:
        try:
            vm, va, chi2, thr, iters, ok = solve(bad, flags, pv_mw, sig_pv)
            break
        except NotSearched as exc:
            assert "no recent estimate to hold" in str(exc)
            skipped += 1
            t[0] += 1e-3
    assert skipped == round(HOLD_MAX_S / 1e-3)  # then searched
    assert chi2 > 3 * thr and ok and iters > 0
    np.testing.assert_allclose(vm * np.exp(1j * va), v, atol=1e-4)  # the error removed
    t[0] += 1e-3  # fresh: held
    _, _, chi2, thr, iters, ok = solve(bad, flags, pv_mw, sig_pv)
    assert chi2 > 3 * thr and not ok and iters == 0


@pytest.mark.parametrize("method", ["linear", "kalman"])
def test_a_gross_first_snapshot_is_not_searched_at_1khz(model: Any, method: str) -> None:
    """The first snapshot has no estimate to hold: at 1 kHz it is left unestimated
    (its solve discarded: the next one starts afresh), not searched on the deadline path;
    the clean one after it is estimated, its state within 1e-4 pu of the truth."""
    from dataclasses import replace

    from gateway.estimator_worker import NotSearched

    base = load_config("ieee33")
    cfg = replace(base, streams=tuple(replace(st, rate_hz=1000.0) for st in base.streams))
    t = [100.0]
    v = _operating_point(model, 0.8)
    z = model.h(v)
    flags = np.zeros(len(cfg.channels), np.uint32)
    sig_pv = np.full(len(cfg.plants), 0.041)
    values, pv_mw = _worker_values(cfg, model, z)
    p_rows = np.flatnonzero((model.channel >= 0)
                            & np.array([s.kind == "p" for s in model.specs]))
    bad = values.copy()
    bad[model.channel[p_rows[5]]] *= 1.5
    _, solve = solver_for(cfg, method, clean=True, clock=lambda: t[0])
    with pytest.raises(NotSearched):
        solve(bad, flags, pv_mw, sig_pv)
    t[0] += 1e-3
    got = solve(values, flags, pv_mw, sig_pv)
    assert got[5] and got[4] > 0
    np.testing.assert_allclose(got[0] * np.exp(1j * got[1]), v, atol=1e-4)

