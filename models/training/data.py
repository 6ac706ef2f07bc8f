"""Training and evaluation data (numpy; ``hil`` is imported inside functions only).

* Measurement predictor: windows of ``T-1`` consecutive *measured* values of one channel
  with the channel's noise-free *truth* at the next step as target, all normalised by
  :func:`models.features.normalise_windows`. Windows touching a bad or missing value
  are skipped. Sources: scenario traces (``hil.trace``) or, for smoke runs and tests,
  :func:`synthetic_series` (slow periodic + AR(1) fluctuation + measurement noise).
* PV forecaster: station weather from ``hil.weather`` (TMY hourly + sub-hourly cloud
  model) with sensor noise, and the AC output of plants with hidden random parameters
  from ``hil.pvplant`` (the same physical truth the scenario traces use), per unit of
  rating. The weather window is 10 samples ``stride_s`` apart ending at the current time;
  each sample carries the measured weather and, when the model reads them, the sun terms
  of :mod:`models.pv_features` (from the sample's time and the site's coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from models.features import HIST, TARGET_CLIP, normalise_windows, sliding_windows
from models.pv_features import PV_SUN_FEATURES, feature_series

# weather sensor accuracy of the bundled config (maximum errors; sigma = figure / 3):
# pyranometers 2 % with a 5 W/m2 floor, 0.5 degC, 0.5 m/s, 5 deg
WEATHER_REL = np.array([0.02, 0.02, 0.02, 0.0, 0.0, 0.0])
WEATHER_ABS = np.array([5.0, 5.0, 5.0, 0.5, 0.5, 5.0])
# spacing of the PV window samples: 2 s (window spans 18 s). The station stands on the
# plant, so the plant follows the station within the footprint time (5-40 s); 20 s
# (180 s span, tuned for the old 20-120 s advection lag) was worse on the unseen site
# (MAPE 13.7 vs 11.2 %, same RMSE 6.6-6.7 % in a 1500-step trial)
PV_STRIDE_S = 2.0


def channel_sigma(rel: np.ndarray, abs_: np.ndarray, k: np.ndarray,
                  value: np.ndarray) -> np.ndarray:
    """Vectorised ``Channel.sigma_at``: max(rel*|value|, abs) / k."""
    return np.maximum(rel * np.abs(value), abs_) / k


# ------------------------------------------------------------------ measurement predictor


@dataclass
class PredictorData:
    x: np.ndarray  # (N, T-1, 1) float32 normalised windows
    y: np.ndarray  # (N,) float32 normalised targets
    centre: np.ndarray  # (N,) channel units
    scale: np.ndarray  # (N,)
    truth: np.ndarray  # (N,) the target in channel units
    group: np.ndarray  # (N,) int: channel index (or series index)


def windows_from_series(measured: np.ndarray, truth: np.ndarray, invalid: np.ndarray,
                        floor_fn: object, *, group: int = 0,
                        max_windows: int | None = None,
                        rng: np.random.Generator | None = None) -> PredictorData:
    """Windows of one channel: ``measured[i:i+9]`` -> ``truth[i+9]``.

    ``invalid`` marks bad or missing samples; a window or target touching one is skipped.
    ``floor_fn(centre) -> floor`` gives the per-window scale floor (measurement sigma).
    """
    w = sliding_windows(measured, HIST + 1)
    bad = sliding_windows(invalid, HIST + 1).any(axis=1)
    keep = np.flatnonzero(~bad)
    if max_windows is not None and keep.size > max_windows:
        assert rng is not None
        keep = np.sort(rng.choice(keep, max_windows, replace=False))
    hist = w[keep, :HIST]
    target = truth[keep + HIST]
    centre_guess = hist.mean(axis=1)
    floor = floor_fn(centre_guess)  # type: ignore[operator]
    xn, c, s = normalise_windows(hist, floor)
    yn = np.clip((target - c) / s, -TARGET_CLIP, TARGET_CLIP).astype(np.float32)
    return PredictorData(xn, yn, c, s, target, np.full(keep.size, group, np.int64))


def concat(parts: list[PredictorData]) -> PredictorData:
    return PredictorData(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                           ("x", "y", "centre", "scale", "truth", "group")))


def synthetic_series(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One synthetic channel: (measured, truth, relative noise sigma).

    truth = L (1 + a sin(2 pi t / P + phi) + b AR1(rho)), measured = truth + noise with
    sigma = rel |truth| / 3; level, amplitudes, period, correlation and noise are drawn
    log-uniformly over the ranges seen on feeder channels (kV, kA, MW at 1 s .. 1 min).
    """
    t = np.arange(n, dtype=np.float64)
    level = float(np.exp(rng.uniform(np.log(0.01), np.log(20.0)))) * rng.choice([-1.0, 1.0])
    a = float(np.exp(rng.uniform(np.log(0.005), np.log(0.5))))
    period = float(np.exp(rng.uniform(np.log(200.0), np.log(50000.0))))
    b = float(np.exp(rng.uniform(np.log(1e-4), np.log(0.05))))
    rho = 1.0 - float(np.exp(rng.uniform(np.log(1e-3), np.log(0.2))))
    e = rng.standard_normal(n)
    # ar_k = rho ar_{k-1} + sqrt(1 - rho^2) e_k
    ar = lfilter([np.sqrt(1.0 - rho * rho)], [1.0, -rho], e)
    truth = level * (1.0 + a * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
                     + b * ar)
    rel = float(np.exp(rng.uniform(np.log(1e-4), np.log(2e-2))))
    measured = truth + rng.standard_normal(n) * rel * np.abs(truth) / 3.0
    return measured, truth, rel


def synthetic_predictor_data(n_series: int, length: int, seed: int) -> PredictorData:
    """Windows from ``n_series`` synthetic channels (for smoke runs and tests)."""
    rng = np.random.default_rng(seed)
    parts = []
    for g in range(n_series):
        meas, truth, rel = synthetic_series(rng, length)
        parts.append(windows_from_series(
            meas, truth, np.zeros(length, bool),
            lambda c, rel=rel: np.maximum(rel * np.abs(c) / 3.0, 1e-9), group=g))
    return concat(parts)


def trace_predictor_data(trace: object, cfg: object, *, max_per_channel: int,
                         seed: int, kinds: tuple[str, ...] = ("pmu", "scada"),
                         time_slice: slice | None = None) -> PredictorData:
    """Windows of every electrical channel of a scenario trace (``hil.trace.Trace``)."""
    rng = np.random.default_rng(seed)
    sl = time_slice or slice(None)
    meas = trace.measured[sl]  # type: ignore[attr-defined]
    truth = trace.truth[sl]  # type: ignore[attr-defined]
    invalid = trace.bad[sl] | trace.missing[sl] | ~np.isfinite(meas)  # type: ignore[attr-defined]
    parts = []
    for ch in cfg.channels:  # type: ignore[attr-defined]
        if ch.kind not in kinds:
            continue
        j = ch.index
        parts.append(windows_from_series(
            meas[:, j], truth[:, j], invalid[:, j],
            lambda c, ch=ch: channel_sigma(ch.rel, ch.abs, ch.k, c),
            group=j, max_windows=max_per_channel, rng=rng))
    return concat(parts)


# ------------------------------------------------------------------------- PV forecaster


@dataclass
class PvData:
    x: np.ndarray  # (N, 10, F) raw input windows (measured weather with sensor noise + sun)
    y: np.ndarray  # (N,) true AC output per unit of rating
    ghi_now: np.ndarray  # (N,) measured GHI at the current sample
    day: np.ndarray  # (N,) day index (for splits)
    sun_up: np.ndarray  # (N,) bool: solar zenith < 90 deg at the current sample


def pv_windows(weather: np.ndarray, pu: np.ndarray, stride: int, window: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(T, F) inputs, (T,) output -> windows (N, window, F) ending at each sample.

    Window ``i`` holds samples ``e - (window-1) stride, ..., e - stride, e`` with
    ``e = (window-1) stride + i``; its target is the output at ``e`` (now, not later).
    """
    span = (window - 1) * stride
    ends = np.arange(span, weather.shape[0])
    idx = ends[:, None] - span + stride * np.arange(window)[None, :]
    return weather[idx], pu[ends]


def measured_weather(wx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """True (T, 6) station weather -> what the bundled config's sensors report:
    Gaussian noise ``sigma = max(rel |x|, abs) / 3``, wind speed clipped at 0 and
    direction wrapped to [0, 360) exactly as ``hil.scenario`` does (irradiance is not
    clipped there: a pyranometer's zero offset reads slightly negative at night)."""
    sig = np.maximum(WEATHER_REL * np.abs(wx), WEATHER_ABS) / 3.0
    meas = wx + rng.standard_normal(wx.shape) * sig
    meas[:, 4] = np.maximum(meas[:, 4], 0.0)
    meas[:, 5] = meas[:, 5] % 360.0
    return meas


def pv_dataset(site: str, days: list[int], *, seed: int, step_s: float = 1.0,
               plants_per_day: int = 4, stride_s: float = PV_STRIDE_S, window: int = 10,
               night_keep: float = 0.02, subsample: int = 10, year: int = 2021,
               features: tuple[str, ...] = PV_SUN_FEATURES) -> PvData:
    """Simulated measured station weather and true plant output at ``site`` on ``days``.

    Uses ``hil.weather`` / ``hil.pvplant`` (the scenario's physical truth: the station
    stands on the plant, the plant sees the footprint average of the cloud field). Each
    day (local standard time, day of year ``d`` counted from 0) gets its own station and
    ``plants_per_day`` plants with freshly drawn hidden parameters and footprints; every
    ``subsample``-th window (random phase) with the sun up is kept, plus ``night_keep``
    of the night ones. ``features`` (:mod:`models.pv_features`) are built per sample from
    the measured weather, the sample's time and the TMY site's coordinates.
    """
    from hil import pvplant, weather

    rng = np.random.default_rng(seed)
    tmy = weather.load_tmy(site)
    stride = max(1, round(stride_s / step_s))
    span = (window - 1) * stride
    xs, ys, gs, ds, us = [], [], [], [], []
    jan1 = float(np.datetime64(f"{year}-01-01T00:00:00", "s").astype(np.int64))
    for d in days:
        # local standard midnight of day d, in UTC epoch seconds
        t0 = jan1 + d * 86400.0 - tmy.tz_hours * 3600.0
        t = t0 + np.arange(0.0, 86400.0, step_s)
        st = weather.station_weather(site, t, rng)
        wx = st.stack()
        up = st.geo.zenith[span:] < 90.0
        for _ in range(plants_per_day):
            loc = weather.plant_irradiance(st, rng)
            par = pvplant.draw_params(rng, 1.0, tmy.latitude)
            out = pvplant.plant_output(par, loc, st, t - t[0])
            feats = feature_series(measured_weather(wx, rng), t, tmy.latitude, tmy.longitude,
                                   features)
            x, y = pv_windows(feats, out.p_ac_mw / par.rating_mw, stride, window)
            keep = up | (rng.random(y.size) < night_keep)
            sel = np.flatnonzero(keep)[rng.integers(0, subsample)::subsample]
            xs.append(x[sel])
            ys.append(y[sel])
            gs.append(x[sel, -1, 0])
            ds.append(np.full(sel.size, d))
            us.append(up[sel])
    return PvData(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32),
                  np.concatenate(gs), np.concatenate(ds), np.concatenate(us))
