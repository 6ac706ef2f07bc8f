"""The pure forecaster (estimator/forecast.py): power flow on forecast inputs, uncertainty
bands, seasonal-naive / persistence / learned load forecasts, clear-sky PV."""

from __future__ import annotations

import numpy as np
import pytest

from estimator import forecast as F
from estimator.network import load_case
from estimator.pgm import power_flow

STEP = 60.0
HORIZONS = (300.0, 900.0, 3600.0)


def test_power_flow_on_known_inputs_is_the_estimators_power_flow() -> None:
    net = load_case("ieee33")
    p = np.vstack([net.p_inj * s for s in (0.5, 1.0, 1.3)])
    q = np.vstack([net.q_inj * s for s in (0.5, 1.0, 1.3)])
    out = F.voltage_forecast(net, HORIZONS, p, q)
    for k, vf in enumerate(out):
        want = np.abs(power_flow(net, p[k], q[k], batch=False))
        np.testing.assert_allclose(vf.vm, want, atol=1e-9)
        # no scenarios: the band collapses onto the mean
        np.testing.assert_array_equal(vf.vm_lo, vf.vm)
        np.testing.assert_array_equal(vf.vm_hi, vf.vm)
    # limit violations: exactly the buses whose forecast leaves [0.95, 1.05]
    for vf in out:
        under = {int(net.bus_ids[b]) for b in np.flatnonzero(vf.vm < 0.95)}
        assert {v.bus for v in vf.violations} == under
        assert all(v.kind == "under" and v.vm_pu < 0.95 for v in vf.violations)
    assert not out[0].violations and out[2].violations  # light load fine, heavy not
    # configurable limits; a higher substation voltage lifts every bus
    lifted = F.voltage_forecast(net, HORIZONS[:1], p[2:], q[2:], vmin=0.9, vm_slack=1.03)
    assert np.all(lifted[0].vm > out[2].vm)
    assert {v.bus for v in lifted[0].violations} == {
        int(net.bus_ids[b]) for b in np.flatnonzero(lifted[0].vm < 0.9)}


def test_bad_inputs_raise_forecast_errors() -> None:
    net = load_case("ieee33")
    p = net.p_inj[None, :]
    with pytest.raises(F.ForecastError, match="injections must be"):
        F.voltage_forecast(net, HORIZONS, p, p)
    with pytest.raises(F.ForecastError, match="vmin < vmax"):
        F.voltage_forecast(net, HORIZONS[:1], p, net.q_inj[None, :], vmin=1.1, vmax=1.0)
    with pytest.raises(F.ForecastError, match="unknown load forecast method"):
        F.fit_load_model(np.ones((10, 2)), STEP, HORIZONS, method="magic")


def test_bands_contain_the_truth_at_the_stated_rate() -> None:
    """Errors drawn from one distribution for the truth and for the scenarios: the central
    80 % band holds the true |V| about 80 % of the time."""
    net = load_case("ieee33")
    rng = np.random.default_rng(7)
    load = net.p_load > 0
    trials, k, coverage = 150, 120, 0.8

    def draws(n: int) -> tuple[np.ndarray, np.ndarray]:
        common = rng.standard_normal((n, 1))
        own = rng.standard_normal((n, net.n_bus))
        rel = 0.15 * (0.6 * common + 0.8 * own) * load
        return -net.p_load * rel, -net.q_load * rel

    inside = []
    for _ in range(trials):
        tp, tq = draws(1)
        true_vm = np.abs(power_flow(net, net.p_inj + tp[0], net.q_inj + tq[0], batch=False))
        ep, eq = draws(k)
        vf = F.voltage_forecast(net, (900.0,), net.p_inj[None], net.q_inj[None],
                                ep[None], eq[None], coverage=coverage)[0]
        keep = np.arange(net.n_bus) != net.slack
        inside.append(((true_vm >= vf.vm_lo) & (true_vm <= vf.vm_hi))[keep])
        assert np.all(vf.vm_lo <= vf.vm) and np.all(vf.vm <= vf.vm_hi)
    rate = float(np.mean(inside))
    assert 0.72 <= rate <= 0.88, rate


def _daily(t: np.ndarray) -> np.ndarray:
    return 1.0 + 0.4 * np.sin(2 * np.pi * t / F.DAY_S) + 0.1 * np.sin(4 * np.pi * t / F.DAY_S)


def test_seasonal_naive_and_persistence_behave_as_defined() -> None:
    t = np.arange(0, 2 * F.DAY_S, STEP)
    hist = np.stack([_daily(t), 2 * _daily(t + 3600)], axis=1)
    now = hist[: len(t) - 300]  # "now" is row len-301
    val, lag = F.seasonal_naive(now, STEP, 900.0)
    assert lag == F.DAY_S
    np.testing.assert_array_equal(val, now[len(now) - 1 + 15 - 1440])
    # a week lag is not covered: the day lag; no lag covered at all: persistence
    short = now[-600:]
    val, lag = F.seasonal_naive(short, STEP, 900.0)
    assert lag == 0.0
    np.testing.assert_array_equal(val, short[-1])
    pers = F.fit_load_model(now, STEP, HORIZONS, method="persistence")
    np.testing.assert_array_equal(F.predict_loads(pers, now), np.tile(now[-1], (3, 1)))
    # seasonal on an exactly daily series: the truth (up to the +-15 min smoothing)
    seas = F.fit_load_model(now, STEP, HORIZONS, method="seasonal")
    assert seas.lag_s == F.DAY_S
    pred = F.predict_loads(seas, now)
    for k, h in enumerate(HORIZONS):
        truth = hist[len(now) - 1 + int(h / STEP)]
        np.testing.assert_allclose(pred[k], truth, rtol=2e-3)
    # history shorter than a day: the seasonal model falls back to persistence
    fb = F.fit_load_model(short, STEP, HORIZONS, method="seasonal")
    assert fb.lag_s == 0.0


def test_learned_correction_beats_seasonal_and_persistence_on_anomalies() -> None:
    """Daily shape plus a slow AR(1) anomaly (tau 20 min) and white noise: the ridge
    correction follows the anomaly, which neither baseline does."""
    rng = np.random.default_rng(3)
    n = int(3 * F.DAY_S / STEP)
    t = np.arange(n) * STEP
    phi = np.exp(-STEP / 1200.0)
    a = np.zeros((n, 4))
    for i in range(1, n):
        a[i] = phi * a[i - 1] + np.sqrt(1 - phi**2) * 0.08 * rng.standard_normal(4)
    x = _daily(t)[:, None] * (1 + a) + 0.01 * rng.standard_normal((n, 4))
    errs: dict[str, list[float]] = {m: [] for m in F.METHODS}
    start = int(2 * F.DAY_S / STEP)
    models: dict[str, F.LoadModel] = {}
    for i in range(start, n - 60, 7):
        for m in F.METHODS:
            if m not in models or i % 120 < 7:
                models[m] = F.fit_load_model(x[: i + 1], STEP, HORIZONS, method=m)
            pred = F.predict_loads(models[m], x[: i + 1])
            errs[m].append(float(np.mean(np.abs(pred[1] - x[i + 15]))))
    mae = {m: float(np.mean(v)) for m, v in errs.items()}
    assert mae["learned"] < mae["persistence"] and mae["learned"] < mae["seasonal"], mae
    # the residuals are kept per horizon, as whole vectors over the columns: those of the
    # forecasts whose target was within 90 minutes of the same time yesterday
    r = models["learned"].residuals
    assert r.shape[0] == 3 and r.shape[2] == 4 and r.shape[1] == 181
    s = F.sample_errors(models["learned"], 9, np.random.default_rng(0))
    assert s.shape == (3, 9, 4)


def test_clear_sky_and_persistence_of_clearness() -> None:
    from models.solar import solar_position

    t = 644198400.0 + np.arange(0, 366 * F.DAY_S, 3 * 3607.0)
    cz = F.cos_zenith(t, 36.1, -79.95)
    ref = solar_position(t, 36.1, -79.95).cos_zenith
    assert np.degrees(np.abs(np.arccos(cz) - np.arccos(ref))).max() < 0.5
    ghi = F.clear_sky_ghi(t, 36.1, -79.95)
    assert np.all(ghi[cz <= 0] == 0) and ghi.max() > 900
    # a plant at 60 % of its clear-sky output for the last 15 minutes, late morning
    noon = 644198400.0 + 17 * 3600.0  # 1990-06-01 17:00 UTC, local solar noon ~13:20
    times = noon - 2 * 3600 + np.arange(0, 1800, 60.0)
    rating, lat, lon = np.array([1.0, 2.0]), np.array([36.1, 36.1]), np.array([-79.95] * 2)
    p = 0.6 * F.pv_clear_sky_mw(times, rating, lat, lon)
    hz = np.array(HORIZONS)
    fc = F.pv_forecast(times, p, hz, rating, lat, lon)
    want = 0.6 * F.pv_clear_sky_mw(times[-1] + hz, rating, lat, lon)
    np.testing.assert_allclose(fc, want, rtol=1e-9)
    # persistence returns the last output; a weather forecast replaces the clearness
    np.testing.assert_array_equal(F.pv_forecast(times, p, hz, rating, lat, lon,
                                                method="persistence"), np.tile(p[-1], (3, 1)))
    kc = np.array([[np.nan, np.nan], [0.2, 0.2], [1.0, np.nan]])
    fw = F.pv_forecast(times, p, hz, rating, lat, lon, kc_forecast=kc)
    np.testing.assert_allclose(fw[1], 0.2 * F.pv_clear_sky_mw(times[-1] + 900, rating, lat, lon))
    np.testing.assert_allclose(fw[0], fc[0])
    assert fw[2, 1] == pytest.approx(fc[2, 1])
    # at night: nothing
    night = noon + 10 * 3600 + np.arange(0, 900, 60.0)
    assert np.all(F.pv_forecast(night, np.zeros((15, 2)), hz, rating, lat, lon) == 0)
