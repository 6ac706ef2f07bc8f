"""The gateway's forecaster (gateway/forecast.py) with a fake clock: the [forecast] schema,
every_s, the violation event with its lead time, the bounded history, the seeding."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from estimator.pgm import power_flow
from gateway.cli import main
from gateway.config import TwinConfig, load_config, resolve
from gateway.errors import ConfigError
from gateway.forecast import (
    Forecaster,
    ForecastSettings,
    History,
    parse_settings,
    settings_of,
)

DAY = 86400.0
STEP = 60.0


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


def shape(t: np.ndarray) -> np.ndarray:
    """A daily load shape whose evening peak takes IEEE33 below 0.95 pu (from ~17:20)."""
    hour = (t % DAY) / 3600.0
    return 0.35 + 0.45 * np.exp(-0.5 * ((hour - 19.0) / 1.5) ** 2)


def states(cfg: TwinConfig, t: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True (vm, va) of IEEE33 (PV off) for loads following :func:`shape` with 1 % noise."""
    net = cfg.network
    rng = np.random.default_rng(seed)
    s = shape(t)[:, None] * (1 + 0.01 * rng.standard_normal((t.size, net.n_bus)))
    v = power_flow(net, net.p_inj[None] * s, net.q_inj[None] * s, threading=-1)
    return np.abs(v), np.angle(v)


# --------------------------------------------------------------------------- schema

def test_settings_default_and_every_problem_names_its_key() -> None:
    s, probs = parse_settings({})
    assert probs == [] and s == ForecastSettings() and s.horizons_s == (300.0, 900.0, 3600.0)
    s, probs = parse_settings({"every_s": 2, "horizons_min": [60, 5], "method": "seasonal",
                               "limits": {"vmin": 0.9, "vmax": 1.1}, "scenarios": 0})
    assert probs == []
    assert (s.every_s, s.horizons_min, s.method, s.vmin, s.vmax, s.scenarios) == (
        2.0, (5.0, 60.0), "seasonal", 0.9, 1.1, 0)
    _, probs = parse_settings({"every_s": 0, "limits": {"vmin": 1.1, "vmax": 1.0},
                               "horizons_min": [], "method": "magic", "colour": 1,
                               "enabled": "yes", "scenarios": -1, "coverage": 1.0,
                               "resolution_s": 1.0})
    keys = sorted(p.key for p in probs)
    assert keys == ["forecast.colour", "forecast.coverage", "forecast.enabled",
                    "forecast.every_s", "forecast.history_days", "forecast.horizons_min",
                    "forecast.limits", "forecast.method", "forecast.scenarios"]


def test_a_bad_forecast_table_stops_the_config_with_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, _ = resolve("ieee33")
    good = tmp_path / "good.toml"
    good.write_text(text + "\n[forecast]\nevery_s = 2.5\nhorizons_min = [15]\n")
    assert settings_of(load_config(good)).every_s == 2.5
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n[forecast]\nevery_s = -1\n")
    with pytest.raises(ConfigError, match=r"forecast\.every_s"):
        load_config(bad)
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "forecast.every_s" in err and "Traceback" not in err


# --------------------------------------------------------------------------- history

def test_history_is_bounded_and_its_view_contiguous() -> None:
    h = History(16, 2)
    for k in range(100):
        h.append(np.array([k, -k], float), k)
    assert len(h) == 16 and h.count == 100
    v = h.view()
    assert v.shape == (15, 2) and v.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(v[:, 0], np.arange(85, 100))
    # a gap repeats the last row; a step back restarts
    h.append(np.array([200.0, 0.0]), 102)
    np.testing.assert_array_equal(h.view(3)[:, 0], [99, 99, 200])
    h.append(np.array([1.0, 1.0]), 50)
    assert len(h) == 1


def test_forecaster_history_stays_bounded(cfg: TwinConfig) -> None:
    f = Forecaster(cfg.network, cfg.plants, ForecastSettings(history_days=0.02))
    t = np.arange(200) * STEP
    vm, va = states(cfg, t)
    for k in range(200):
        f.feed_state(float(t[k]), vm[k], va[k])
    # 0.02 days = 29 bins of 60 s, plus the two the ring keeps spare
    assert len(f.history) == f.history.capacity == 31 and f.history.count == 199


# --------------------------------------------------------------------------- scheduling

def test_every_s_is_respected_and_one_job_runs_at_a_time(cfg: TwinConfig) -> None:
    f = Forecaster(cfg.network, cfg.plants, ForecastSettings(every_s=5.0, scenarios=4))
    t = 1e6 + np.arange(0, 600, 1.0)
    vm, va = states(cfg, t)
    assert f.poll(0.0) is None  # no state yet
    made = []
    for k in range(t.size):
        now = float(t[k])
        f.feed_state(now, vm[k], va[k])
        job = f.poll(now)
        if job is not None:
            assert f.poll(now + 100.0) is None  # one at a time
            f.complete(job(), now)
            made.append(now)
    gaps = np.diff(made)
    assert len(made) > 50 and gaps.min() >= 5.0
    # a job is picklable (the runner computes it in a worker process): same answer
    later = made[-1] + 5.0
    job = f.poll(later)
    assert job is not None
    here, there = job(), pickle.loads(pickle.dumps(job))()
    assert here.error is None and there.error is None
    for a, b in zip(here.volts, there.volts, strict=True):
        np.testing.assert_array_equal(a.vm, b.vm)
        np.testing.assert_array_equal(a.vm_hi, b.vm_hi)
    f.complete(here, later)
    r = f.latest
    assert r is not None and r.error is None and r.load_method == "persistence"
    # too little history for the seasonal lag: persistence, and it says so
    doc = f.as_json()
    assert doc is not None and doc["load_method"] == "persistence"
    for h in doc["horizons"]:
        assert len(h["vm_pu"]) == cfg.network.n_bus
        assert all(lo <= m <= hi for lo, m, hi in zip(h["vm_lo_pu"], h["vm_pu"],
                                                      h["vm_hi_pu"], strict=True))
        # persistence of the loads: the voltages of the latest minute
        np.testing.assert_allclose(h["vm_pu"], vm[-30], atol=2e-3)


def test_a_violation_is_predicted_before_it_happens(cfg: TwinConfig) -> None:
    """Two days of history with an evening peak; at 17:00 on day three the present is
    within limits, and the 60-minute forecast says bus voltages fall below 0.95."""
    f = Forecaster(cfg.network, cfg.plants, ForecastSettings(scenarios=20))
    t = np.arange(0, 2 * DAY + 17 * 3600 + 1, STEP) + 30.0
    vm, va = states(cfg, t, seed=2)
    for k in range(t.size):
        f.feed_state(float(t[k]), vm[k], va[k])
    now = float(t[-1])
    assert vm[-1].min() > 0.955  # the present is fine
    job = f.poll(now)
    assert job is not None
    events = f.complete(job(), now)
    r = f.latest
    assert r is not None and r.load_method == "learned" and r.seasonal_lag_s == DAY
    assert events and {k for k, _ in events} == {"voltage_violation_predicted"}
    details = [d for _, d in events]
    assert {d["horizon"] for d in details} == {"60m"}
    for d in details:
        assert d["lead_time_s"] == 3600.0 and d["kind"] == "under" and d["vm_pu"] < 0.95
        assert d["expected_at"] == pytest.approx(r.issued_at + 3600.0)
    # the truth an hour later agrees for the buses named
    later = np.arange(now, now + 3601, STEP)
    vm_l, _ = states(cfg, later, seed=3)
    buses = [cfg.network.index_of(d["bus"]) for d in details]
    assert vm_l[-1, buses].max() < 0.95
    # the same violation is not raised again by the next forecast
    job = f.poll(now + 10.0)
    assert job is not None and f.complete(job(), now + 10.0) == []


def test_seeding_puts_stored_states_before_the_live_ones(cfg: TwinConfig) -> None:
    f = Forecaster(cfg.network, cfg.plants, ForecastSettings())
    t = np.arange(0, 3 * 3600, STEP) + 30.0
    vm, va = states(cfg, t)
    live = slice(120, 180)
    for k in range(live.start, live.stop):
        f.feed_state(float(t[k]), vm[k], va[k])
    n_live = len(f.history)
    assert f.seed(t[:100], vm[:100], va[:100]) == 100
    assert len(f.history) == 100 + 20 + n_live  # seeded, gap filled, live
    assert f.history.last_bin == math.floor(t[live.stop - 2] / STEP)
    # stored states that overlap the live ones are another timeline: ignored
    assert f.seed(t[150:160], vm[150:160], va[150:160]) == 0


def test_a_forecast_from_the_first_closed_bin_is_persistence(cfg: TwinConfig) -> None:
    """The twin forecasts from its first states (and says which method)."""
    f = Forecaster(cfg.network, cfg.plants, ForecastSettings(resolution_s=1.0, history_days=0.01,
                                                               scenarios=3))
    t = 5e5 + np.arange(0, 2.5, 0.1)
    vm, va = states(cfg, t)
    for k in range(t.size):
        f.feed_state(float(t[k]), vm[k], va[k])
    job = f.poll(float(t[-1]))
    assert job is not None
    res = job()
    # two closed one-second bins and the open one
    assert res.error is None and res.load_method == "persistence" and res.history_rows == 3
    # sampled every second: the open bin holds the state of 500002.0 s
    assert res.issued_at == pytest.approx(5e5 + 2.0)
    np.testing.assert_allclose(res.volts[1].vm, vm[20], atol=1e-6)


def test_history_seeded_from_the_historian(cfg: TwinConfig, tmp_path: Path) -> None:
    """States stored by the historian writer (SQLite) come back thinned to one per
    sample_s and fill the forecaster's history before the live states."""
    from gateway.forecast import seed_from_historian
    from gateway.historian.writer import HistorianWriter, run_info_from_config

    url = f"sqlite:///{tmp_path / 'twin.db'}"
    t = 1e6 + np.arange(0, 1800, 0.5)  # half an hour of states at 2 Hz
    vm, va = states(cfg, t)
    with HistorianWriter(url, spool_dir=tmp_path / "spool") as w:
        w.start_run(run_info_from_config(cfg), started=t[0] - 1)
        for k in range(t.size):
            w.put_state(k, float(t[k]), vm[k], va[k])
        assert w.flush(60)
    s = ForecastSettings(history_days=0.5)
    times, vm_s, va_s = seed_from_historian(url, s, bus_ids=list(cfg.network.bus_ids))
    # one per max(sample_s, resolution_s / 6) = 10 s
    np.testing.assert_array_equal(times, t[::20])
    np.testing.assert_allclose(vm_s, vm[::20])
    # another feeder's states are not taken
    other = seed_from_historian(url, s, bus_ids=[1, 2, 3])
    assert other[0].size == 0
    f = Forecaster(cfg.network, cfg.plants, s)
    live = t[-1] + 600.0 + np.arange(0, 120, 1.0)
    vm_l, va_l = states(cfg, live, seed=5)
    for k in range(live.size):
        f.feed_state(float(live[k]), vm_l[k], va_l[k])
    seeded_bins = np.unique(np.floor(t / STEP))
    live_closed = np.unique(np.floor(live / STEP))[:-1]
    assert f.seed(times, vm_s, va_s) == seeded_bins.size
    # seeded minutes, the gap to the live ones filled, the live minutes closed so far
    assert f.history.last_bin == live_closed[-1]
    assert len(f.history) == live_closed[-1] - seeded_bins[0] + 1


async def test_the_worker_process_is_running_before_the_first_forecast(
        cfg: TwinConfig) -> None:
    """``start()`` (the gateway's start-up) spawns the forecast worker process: the first
    job at the first state does not (a spawn held the loop 4-8 ms in a live twin)."""
    import asyncio
    import multiprocessing

    from gateway.forecast import ForecastRunner, ForecastSettings
    from gateway.metrics import Metrics

    loop = asyncio.get_running_loop()
    before = {p.pid for p in multiprocessing.active_children()}
    r = ForecastRunner(cfg, ForecastSettings(), Metrics(), lambda *a: None, loop,
                       loop.time)
    try:
        assert {p.pid for p in multiprocessing.active_children()} == before
        await r.start()
        started = {p.pid for p in multiprocessing.active_children()} - before
        assert len(started) == 1
        pid = await loop.run_in_executor(r.pool, os.getpid)  # the job ran there
        assert started == {pid}
    finally:
        await r.close()
