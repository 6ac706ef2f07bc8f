"""The state ahead: load and PV forecasts, a power flow on them, |V| bands and violations.

A pure library (numpy and the project's power-flow mapping :mod:`estimator.pgm`); the
gateway's :mod:`gateway.forecast` feeds it the twin's own history and turns its answer
into events and metrics. Three parts:

**Loads** (:func:`fit_load_model`, :func:`predict_loads`), over an evenly spaced history
``hist`` (rows = time, step ``step_s``; columns = series, e.g. P and Q per bus; the last
row is "now"):

* *seasonal-naive*: ``x(t+h) = x(t+h-L)`` with ``L`` the longest configured seasonal lag
  (a week, else a day) the history covers; without one it falls back to persistence;
* *learned correction* (method ``"learned"``): one ridge regression per horizon, pooled
  over every column (each scaled by its mean absolute value), predicting the anomaly at the
  target ``a(t+h) = x(t+h) - base(t+h)`` from the anomaly now and its changes over the
  last 15 and 60 minutes (seasonal base), or from the changes of the series itself over
  those spans (persistence base). With a coefficient near 1 on the current anomaly it is
  "persistence plus the seasonal shape"; near 0 it is seasonal-naive; the data decide;
* *persistence* (method ``"persistence"``): ``x(t+h) = x(t)``, the baseline, computed the
  same way (same residual bookkeeping, same power flow).

Every fitted model keeps its in-sample forecast errors (one vector over all columns per
training instant): these are the uncertainty (below).

**PV** (:func:`pv_forecast`): clear-sky x persistence of clearness. The clear-sky power of
a plant is ``rating * GHI_cs(t) / 1000 W/m2`` with the Haurwitz clear-sky GHI
(``1098 cos z exp(-0.059 / cos z)``, :func:`clear_sky_ghi`) and the sun position from
Spencer's (1971) Fourier series for declination and equation of time
(:func:`cos_zenith`, within 0.35 deg: plenty for an irradiance envelope). The clearness
``k = P / P_cs`` averaged over the last 15 minutes (sun up) is carried forward:
``P(t+h) = min(rating, k * P_cs(t+h))``. A weather forecast, where configured, replaces the
persisted clearness by its own per horizon (``kc_forecast``). Tilt and orientation are not
modelled: their effect is mostly in ``k`` and cancels over short horizons.

**Voltages** (:func:`voltage_forecast`): a batch power flow (power-grid-model
Newton-Raphson through :func:`estimator.pgm.power_flow`) on the mean injections and on
``K`` error scenarios per horizon. The scenarios are the model's own past forecast errors
resampled as whole vectors (a residual bootstrap): errors of neighbouring loads move
together in the data and so they do in the scenarios, without a covariance model. The
band runs between the ``j``-th smallest and the ``j``-th largest scenario voltage with
``j = max(1, floor((K + 1)(1 - coverage) / 2))``: a new draw from the scenarios'
distribution falls inside with probability ``(K + 1 - 2j) / (K + 1)`` (order statistics,
distribution-free), which the sample quantiles of a small ensemble would understate (the
5-95 % quantiles of 20 draws hold a 21st only ~81 % of the time). A violation is predicted
where the mean forecast leaves ``[vmin, vmax]``; ``p_violation`` is the fraction of
scenarios outside the limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from estimator.errors import EstimatorError
from estimator.network import Network

__all__ = [
    "ForecastError",
    "LoadModel",
    "Violation",
    "VoltageForecast",
    "clear_sky_ghi",
    "cos_zenith",
    "fit_load_model",
    "persistence",
    "predict_loads",
    "pv_clear_sky_mw",
    "pv_forecast",
    "pv_relative_errors",
    "sample_errors",
    "seasonal_naive",
    "voltage_forecast",
]

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
DEFAULT_LAGS_S = (WEEK_S, DAY_S)
FEATURE_SPANS_S = (900.0, 3600.0)  # anomaly changes over the last 15 and 60 minutes
SMOOTH_S = 900.0  # seasonal value: mean over +- this around t + h - L
RECENT_S = 300.0  # "now": mean over the last 5 minutes
SAME_HOUR_S = 5400.0  # error scenarios: forecasts whose target was this close to now + h - 1 day
METHODS = ("learned", "seasonal", "persistence")
KC_WINDOW_S = 900.0  # clearness averaged over this long
KC_MIN_CLEAR = 0.05  # clearness counted only while P_cs > 5 % of rating
KC_MAX = 1.3
KC_DEFAULT = 0.75  # clearness before the first daylight sample (a typical mean)


class ForecastError(EstimatorError):
    """Forecast inputs that cannot be used (shapes, too little history, bad limits)."""


# --------------------------------------------------------------------------- sun, clear sky

def cos_zenith(time_s: np.ndarray | float, latitude: float | np.ndarray,
               longitude: float | np.ndarray) -> np.ndarray:
    """Cosine of the solar zenith angle at epoch seconds ``time_s`` (UTC), degrees N/E.

    Spencer (1971): with the fractional year ``g = 2 pi (doy - 1 + (hour - 12) / 24) / 365``
    the declination and the equation of time (minutes) are short Fourier series in ``g``;
    the hour angle is ``(true solar minutes / 4 - 180)`` degrees.
    """
    t = np.asarray(time_s, dtype=np.float64)
    days = np.floor(t / DAY_S)
    d64 = days.astype(np.int64).astype("datetime64[D]")
    doy = (d64 - d64.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.float64) + 1.0
    hour = (t - days * DAY_S) / 3600.0
    g = 2.0 * math.pi / 365.0 * (doy - 1.0 + (hour - 12.0) / 24.0)
    decl = (0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g)
            - 0.006758 * np.cos(2 * g) + 0.000907 * np.sin(2 * g)
            - 0.002697 * np.cos(3 * g) + 0.00148 * np.sin(3 * g))
    eot = 229.18 * (0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g)
                    - 0.014615 * np.cos(2 * g) - 0.040849 * np.sin(2 * g))
    solar_min = hour * 60.0 + eot + 4.0 * np.asarray(longitude, dtype=np.float64)
    h = np.radians(solar_min / 4.0 - 180.0)
    phi = np.radians(np.asarray(latitude, dtype=np.float64))
    return np.asarray(np.clip(np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl)
                              * np.cos(h), -1.0, 1.0))


def clear_sky_ghi(time_s: np.ndarray | float, latitude: float | np.ndarray,
                  longitude: float | np.ndarray) -> np.ndarray:
    """Clear-sky global horizontal irradiance (W/m2), Haurwitz model; 0 with the sun down."""
    cz = cos_zenith(time_s, latitude, longitude)
    safe = np.maximum(cz, 1e-3)
    return np.where(cz > 0.0, 1098.0 * safe * np.exp(-0.059 / safe), 0.0)


def pv_clear_sky_mw(time_s: np.ndarray | float, rating_mw: np.ndarray,
                    latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Clear-sky power per plant, ``(T, n_plants)`` (or ``(n_plants,)`` for a scalar time)."""
    t = np.asarray(time_s, dtype=np.float64)
    ghi = clear_sky_ghi(t[..., None], np.asarray(latitude, float), np.asarray(longitude, float))
    return np.asarray(ghi / 1000.0 * np.asarray(rating_mw, float))


def _clearness(p_mw: np.ndarray, p_cs: np.ndarray, rating: np.ndarray) -> np.ndarray:
    """k = P / P_cs where the sun gives more than KC_MIN_CLEAR of rating, else NaN."""
    ok = p_cs > KC_MIN_CLEAR * rating
    k = np.divide(p_mw, p_cs, out=np.full(p_mw.shape, np.nan), where=ok)
    return np.clip(k, 0.0, KC_MAX)


def pv_forecast(time_s: np.ndarray, p_mw: np.ndarray, horizons_s: np.ndarray,
                rating_mw: np.ndarray, latitude: np.ndarray, longitude: np.ndarray, *,
                kc_forecast: np.ndarray | None = None, window_s: float = KC_WINDOW_S,
                method: str = "learned") -> np.ndarray:
    """PV per plant at ``now + horizons_s`` (``(n_h, n_plants)`` MW) from the recent output.

    ``time_s`` (T,) and ``p_mw`` (T, n_plants): the recent history, last row = now.
    ``method="persistence"`` returns the last output unchanged (the baseline); otherwise
    clear-sky x persistence of clearness, or ``kc_forecast`` (n_h, n_plants) where given
    (NaN entries fall back to the persisted clearness).
    """
    t = np.asarray(time_s, float)
    p = np.asarray(p_mw, float)
    h = np.asarray(horizons_s, float)
    rating = np.asarray(rating_mw, float)
    if p.ndim != 2 or p.shape[0] != t.shape[0] or p.shape[1] != rating.shape[0]:
        raise ForecastError(f"pv_forecast: p_mw {p.shape} does not match time {t.shape} "
                            f"and {rating.shape[0]} plants")
    if method == "persistence":
        return np.tile(p[-1], (h.size, 1))
    recent = t >= t[-1] - window_s
    cs_recent = pv_clear_sky_mw(t[recent], rating, latitude, longitude)
    k = _clearness(p[recent], cs_recent, rating)
    seen = np.isfinite(k).sum(axis=0)
    k_now = np.where(seen > 0, np.nansum(k, axis=0) / np.maximum(seen, 1), KC_DEFAULT)
    kc = np.tile(k_now, (h.size, 1))
    if kc_forecast is not None:
        kf = np.asarray(kc_forecast, float)
        if kf.shape != kc.shape:
            raise ForecastError(f"kc_forecast must be (n_horizons, n_plants) = {kc.shape}, "
                                f"got {kf.shape}")
        kc = np.where(np.isfinite(kf), np.clip(kf, 0.0, KC_MAX), kc)
    cs_ahead = pv_clear_sky_mw(t[-1] + h, rating, latitude, longitude)
    return np.asarray(np.minimum(rating, kc * cs_ahead))


def pv_relative_errors(time_s: np.ndarray, p_mw: np.ndarray, horizons_s: tuple[float, ...],
                       rating_mw: np.ndarray, latitude: np.ndarray, longitude: np.ndarray, *,
                       method: str = "learned", window_s: float = KC_WINDOW_S,
                       max_samples: int = 400) -> np.ndarray:
    """Past PV forecast errors relative to the clear-sky power at the target,
    ``(n_h, k, n_plants)``: the PV half of the uncertainty (multiply by ``P_cs(now + h)``).

    A vectorised backtest of :func:`pv_forecast` over an evenly spaced history (same
    clearness window, same default before the first daylight sample), kept only where the
    target is in daylight (``P_cs`` > 5 % of rating): night errors are zero by
    construction and would only narrow the band.
    """
    t = np.asarray(time_s, float)
    p = np.asarray(p_mw, float)
    rating = np.asarray(rating_mw, float)
    n = t.shape[0]
    out = []
    if n < 2:
        return np.zeros((len(horizons_s), 0, rating.shape[0]))
    step = float(t[1] - t[0])
    cs = pv_clear_sky_mw(t, rating, latitude, longitude)
    k = _clearness(p, cs, rating)
    w = max(1, _steps(window_s, step) + 1)
    c_sum = _cum(np.nan_to_num(k))
    c_cnt = _cum(np.isfinite(k).astype(np.float64))
    hi = np.arange(n)
    lo = np.maximum(0, hi - w + 1)
    cnt = c_cnt[hi + 1] - c_cnt[lo]
    k_bar = np.where(cnt > 0, (c_sum[hi + 1] - c_sum[lo]) / np.maximum(cnt, 1), KC_DEFAULT)
    for h in horizons_s:
        hs = max(1, _steps(h, step))
        if hs >= n:
            out.append(np.zeros((0, rating.shape[0])))
            continue
        target, cs_t = p[hs:], cs[hs:]
        fc = p[:-hs] if method == "persistence" else np.minimum(rating, k_bar[:-hs] * cs_t)
        day = np.all(cs_t > KC_MIN_CLEAR * rating, axis=1)
        rel = (target - fc)[day] / cs_t[day]
        out.append(rel[-max_samples:])
    m = min(o.shape[0] for o in out)
    return np.stack([o[o.shape[0] - m:] for o in out])


# --------------------------------------------------------------------------- loads

def persistence(hist: np.ndarray) -> np.ndarray:
    """The last row: the forecast of every horizon under persistence."""
    return np.asarray(hist[-1], dtype=np.float64)


def seasonal_naive(hist: np.ndarray, step_s: float, horizon_s: float,
                   lags_s: tuple[float, ...] = DEFAULT_LAGS_S) -> tuple[np.ndarray, float]:
    """``x(now + h - L)`` for the longest lag ``L`` the history covers; else persistence.

    Returns ``(values, L)`` with ``L = 0`` when it fell back to persistence (or the
    horizon is longer than every lag). Unsmoothed: the definition; the fitted models
    below smooth the seasonal value over a window (:data:`SMOOTH_S`).
    """
    n = hist.shape[0]
    hs = _steps(horizon_s, step_s)
    for lag in sorted(lags_s, reverse=True):
        ls = _steps(lag, step_s)
        if hs <= ls and n - 1 + hs - ls >= 0:
            return np.asarray(hist[n - 1 + hs - ls], dtype=np.float64), float(lag)
    return persistence(hist), 0.0


def _steps(seconds: float, step_s: float) -> int:
    return max(0, round(seconds / step_s))


@dataclass(frozen=True)
class LoadModel:
    """A fitted load forecaster (see the module docstring); one entry per horizon."""

    method: str
    step_s: float
    horizons_s: tuple[float, ...]
    lag_s: float  # seasonal lag used (0: persistence base)
    scale: np.ndarray  # per column
    coef: np.ndarray  # (n_h, n_features); zeros for "seasonal"/"persistence"
    residuals: np.ndarray  # (n_h, n_samples, n_cols) in-sample forecast errors, scaled
    n_train: int = 0

    def rows_needed(self) -> int:
        """History rows :func:`predict_loads` reads (the tail of the history)."""
        g = _Geometry.of(self.step_s, _steps(self.lag_s, self.step_s), self.method)
        return g.first + 1


@dataclass(frozen=True)
class _Geometry:
    """Window lengths in steps: seasonal lag, smoothing half-width, recent mean, spans."""

    lag: int
    half: int
    recent: int
    spans: tuple[int, ...]
    method: str

    @staticmethod
    def of(step_s: float, lag: int, method: str) -> _Geometry:
        return _Geometry(lag, _steps(SMOOTH_S, step_s), max(1, _steps(RECENT_S, step_s)),
                         tuple(max(1, _steps(s, step_s)) for s in FEATURE_SPANS_S), method)

    @property
    def first(self) -> int:
        """First row index whose features and base exist."""
        if self.method == "persistence":
            return 0
        need = self.recent - 1
        if self.method == "learned":
            need += max(self.spans)
        if self.lag:
            need = max(need, self.lag + self.half + (max(self.spans) if
                                                     self.method == "learned" else 0))
        return need


def _cum(h: np.ndarray) -> np.ndarray:
    c = np.zeros((h.shape[0] + 1, h.shape[1]))
    np.cumsum(h, axis=0, out=c[1:])
    return c


def _mean(c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of rows ``lo..hi`` (inclusive) from the cumulative sum ``c``."""
    return np.asarray((c[hi + 1] - c[lo]) / (hi - lo + 1)[:, None])


def _seasonal(c: np.ndarray, j: np.ndarray, g: _Geometry, hs: int) -> np.ndarray:
    """Smoothed seasonal value for target rows ``j``: the mean over ``j - L +- w`` with
    ``w`` clipped so that it never reads past the issue time ``j - hs``."""
    w = min(g.half, g.lag - hs)
    return _mean(c, j - g.lag - w, j - g.lag + w)


def _recent(c: np.ndarray, i: np.ndarray, g: _Geometry) -> np.ndarray:
    return _mean(c, i - g.recent + 1, i)


def _design(c: np.ndarray, i: np.ndarray, hs: int, g: _Geometry
            ) -> tuple[np.ndarray, np.ndarray]:
    """(base for targets ``i + hs``, features ``(len(i), n_cols, n_feat)``) at rows ``i``.

    Seasonal base: features are the current anomaly (recent mean minus its own smoothed
    seasonal value) and its changes over the spans; persistence base (no lag): the recent
    mean and its changes over the spans."""
    rec = _recent(c, i, g)
    if g.method != "learned":  # seasonal-naive (or persistence): the base, no features
        base = _seasonal(c, i + hs, g, hs) if g.lag else rec
        return base, np.zeros((*rec.shape, 2 + len(g.spans)))
    if g.lag:
        base = _seasonal(c, i + hs, g, hs)
        a = rec - _seasonal(c, i, g, 0)
        cols = [a] + [a - (_recent(c, i - s, g) - _seasonal(c, i - s, g, 0))
                      for s in g.spans]
    else:
        base = rec
        cols = [np.zeros_like(rec)] + [rec - _recent(c, i - s, g) for s in g.spans]
    return base, np.stack([np.ones_like(rec), *cols], axis=-1)


def fit_load_model(hist: np.ndarray, step_s: float, horizons_s: tuple[float, ...], *,
                   method: str = "learned", lags_s: tuple[float, ...] = DEFAULT_LAGS_S,
                   train_s: float = DAY_S + SAME_HOUR_S, alpha: float = 1.0,
                   max_residuals: int = 400
                   ) -> LoadModel:
    """Fit the load forecaster on ``hist`` (rows = time at ``step_s``, last row = now).

    The training instants are the last ``train_s`` of the history whose targets are known;
    the seasonal lag is the longest of ``lags_s`` that leaves at least one training
    instant for the longest horizon (none: persistence base). ``alpha``: ridge penalty on
    the scaled features. Residuals: in-sample error vectors of the forecasts whose target
    was near the same time yesterday (the last ``max_residuals`` when there is no day).
    """
    if method not in METHODS:
        raise ForecastError(f"unknown load forecast method {method!r}; use one of "
                            f"{', '.join(METHODS)}")
    h = np.asarray(hist, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] < 1:
        raise ForecastError(f"load history must be (T >= 1, n_cols), got {h.shape}")
    n, ncol = h.shape
    hsteps = [max(1, _steps(x, step_s)) for x in horizons_s]
    lag = 0
    if method != "persistence":
        for cand in sorted(lags_s, reverse=True):
            ls = _steps(cand, step_s)
            if ls >= max(hsteps) and n - 1 - max(hsteps) >= _Geometry.of(
                    step_s, ls, method).first:
                lag = ls
                break
    g = _Geometry.of(step_s, lag, method)
    scale = np.maximum(np.mean(np.abs(h), axis=0), 1e-9)
    c = _cum(h / scale)
    coefs, resid, n_train = [], [], 0
    for hsx in hsteps:
        last = n - 1 - hsx
        idx = np.arange(max(g.first, last - _steps(train_s, step_s)), last + 1)
        if idx.size == 0:
            coefs.append(np.zeros(2 + len(g.spans)))
            resid.append(np.zeros((0, ncol)))
            continue
        target = (c[idx + hsx + 1] - c[idx + hsx])  # the raw (scaled) value at the target
        if method == "persistence":
            coef = np.zeros(2 + len(g.spans))
            err = target - (c[idx + 1] - c[idx])
        else:
            base, feats = _design(c, idx, hsx, g)
            coef = np.zeros(feats.shape[-1])
            if method == "learned":
                coef = _ridge(feats.reshape(-1, feats.shape[-1]),
                              (target - base).reshape(-1), alpha)
            err = target - base - feats @ coef
        coefs.append(coef)
        resid.append(_pick_residuals(err, idx + hsx, n - 1 + hsx, step_s, max_residuals))
        n_train = max(n_train, int(idx.size))
    k = min(r.shape[0] for r in resid)
    return LoadModel(method=method, step_s=float(step_s),
                     horizons_s=tuple(float(x) for x in horizons_s),
                     lag_s=float(lag * step_s), scale=scale, coef=np.array(coefs),
                     residuals=np.stack([r[len(r) - k:] for r in resid]), n_train=n_train)


def _pick_residuals(err: np.ndarray, targets: np.ndarray, ahead: int, step_s: float,
                    max_residuals: int) -> np.ndarray:
    """The error vectors that describe the coming forecasts best: those whose target was
    within +-SAME_HOUR_S of the same time yesterday (``ahead - 1 day``) when the training
    covers it (errors of an evening ramp are not those of a quiet night), else the last
    ``max_residuals``."""
    day = _steps(DAY_S, step_s)
    near = np.abs(targets - (ahead - day)) <= _steps(SAME_HOUR_S, step_s)
    if near.sum() >= min(max_residuals, _steps(SAME_HOUR_S, step_s)):
        return np.asarray(err[near][-max_residuals:])
    return np.asarray(err[-max_residuals:])


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin |X w - y|^2 + alpha |w|^2 (intercept penalised too: features are scaled)."""
    a = x.T @ x + alpha * np.eye(x.shape[1])
    return np.asarray(np.linalg.solve(a, x.T @ y))


def predict_loads(model: LoadModel, hist: np.ndarray) -> np.ndarray:
    """Forecast ``(n_h, n_cols)`` at ``now + horizons`` from ``hist`` (last row = now)."""
    need = model.rows_needed()
    h = np.asarray(hist[-need:], dtype=np.float64) / model.scale
    n = h.shape[0]
    if n < need:
        raise ForecastError(f"history of {n} rows is shorter than the model needs "
                            f"({need} rows at {model.step_s:g} s)")
    g = _Geometry.of(model.step_s, _steps(model.lag_s, model.step_s), model.method)
    c = _cum(h)
    i = np.array([n - 1])
    out = np.empty((len(model.horizons_s), h.shape[1]))
    for k, hz in enumerate(model.horizons_s):
        hsx = max(1, _steps(hz, model.step_s))
        if model.method == "persistence":
            pred = h[-1]
        else:
            base, feats = _design(c, i, hsx, g)
            pred = base[0] + feats[0] @ model.coef[k]
        out[k] = pred * model.scale
    return out


def sample_errors(model: LoadModel, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_h, k, n_cols)`` forecast-error scenarios (unscaled): past error vectors drawn
    with replacement, whole rows at a time (the residual bootstrap)."""
    r = model.residuals
    if r.shape[1] == 0 or k <= 0:
        return np.zeros((r.shape[0], max(k, 0), r.shape[2]))
    pick = rng.integers(0, r.shape[1], size=k)
    return np.asarray(r[:, pick, :] * model.scale)


# --------------------------------------------------------------------------- voltages

@dataclass(frozen=True)
class Violation:
    """A bus whose mean forecast leaves the limits at one horizon."""

    bus: int  # external bus id
    horizon_s: float
    vm_pu: float
    kind: str  # "under" or "over"
    probability: float  # fraction of scenarios outside the limits


@dataclass(frozen=True)
class VoltageForecast:
    """|V| per bus at one horizon: mean forecast, band, violation probability."""

    horizon_s: float
    vm: np.ndarray
    vm_lo: np.ndarray
    vm_hi: np.ndarray
    p_violation: np.ndarray
    violations: tuple[Violation, ...]


def voltage_forecast(net: Network, horizons_s: tuple[float, ...] | list[float],
                     p_inj: np.ndarray, q_inj: np.ndarray,
                     p_err: np.ndarray | None = None, q_err: np.ndarray | None = None, *,
                     vmin: float = 0.95, vmax: float = 1.05, coverage: float = 0.9,
                     vm_slack: float | None = None, threading: int = -1
                     ) -> list[VoltageForecast]:
    """Power flow on the forecast injections of every horizon (one batch) and bands.

    ``p_inj``/``q_inj``: ``(n_h, n_bus)`` mean net injections (pu, generation - load);
    ``p_err``/``q_err``: ``(n_h, K, n_bus)`` error scenarios added to them (pu), or None
    (the band collapses onto the mean). ``vm_slack``: the substation voltage to hold
    (default the case's). Raises ForecastError on bad shapes or limits, EstimatorError if
    the power flow diverges.
    """
    from estimator.pgm import power_flow

    hz = [float(x) for x in horizons_s]
    p = np.asarray(p_inj, float)
    q = np.asarray(q_inj, float)
    nh, nb = len(hz), net.n_bus
    if p.shape != (nh, nb) or q.shape != (nh, nb):
        raise ForecastError(f"injections must be ({nh}, {nb}), got {p.shape} and {q.shape}")
    if not (0.0 < vmin < vmax):
        raise ForecastError(f"limits need 0 < vmin < vmax, got {vmin}, {vmax}")
    if not (0.0 < coverage < 1.0):
        raise ForecastError(f"coverage must be in (0, 1), got {coverage}")
    k = 0
    if p_err is not None or q_err is not None:
        pe = np.zeros((nh, 0, nb)) if p_err is None else np.asarray(p_err, float)
        qe = np.zeros_like(pe) if q_err is None else np.asarray(q_err, float)
        if p_err is None:
            pe = np.zeros_like(qe)
        if pe.shape != qe.shape or pe.ndim != 3 or pe.shape[0] != nh or pe.shape[2] != nb:
            raise ForecastError(f"error scenarios must be ({nh}, K, {nb}), got {pe.shape} "
                                f"and {qe.shape}")
        k = pe.shape[1]
    rows_p = [p[:, None, :]]
    rows_q = [q[:, None, :]]
    if k:
        rows_p.append(p[:, None, :] + pe)
        rows_q.append(q[:, None, :] + qe)
    bp = np.concatenate(rows_p, axis=1).reshape(nh * (1 + k), nb)
    bq = np.concatenate(rows_q, axis=1).reshape(nh * (1 + k), nb)
    grid = net if vm_slack is None else replace(net, vm_slack=float(vm_slack))
    vm = np.abs(power_flow(grid, bp, bq, batch=True, threading=threading)).reshape(
        nh, 1 + k, nb)
    j = max(1, math.floor((k + 1) * (1.0 - coverage) / 2.0)) if k else 1
    out = []
    for i, h in enumerate(hz):
        mean = vm[i, 0]
        ens = np.sort(vm[i, 1:] if k else vm[i, :1], axis=0)
        lo = np.minimum(ens[j - 1], mean)
        hi = np.maximum(ens[len(ens) - j], mean)
        outside = (ens < vmin) | (ens > vmax)
        pv = outside.mean(axis=0)
        viol = tuple(
            Violation(int(net.bus_ids[b]), h, float(mean[b]),
                      "under" if mean[b] < vmin else "over", float(pv[b]))
            for b in np.flatnonzero((mean < vmin) | (mean > vmax)))
        out.append(VoltageForecast(h, mean, lo, hi, pv, viol))
    return out
