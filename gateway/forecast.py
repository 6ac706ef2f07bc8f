"""The state ahead in the running twin: a sans-IO forecaster over the twin's own estimates.

:class:`Forecaster` is fed every estimate (``feed_state(t, vm, va)``, ``t`` the state's
source time) and asked, with the wall-clock ``now``, whether a forecast is due
(``poll(now)``, at most every ``every_s``). When it is, ``poll`` hands back a
:class:`ForecastJob`: a picklable callable holding everything it reads, which the runner
executes in a worker process (a refit and a batch power flow take ~10 ms and hold the GIL
for milliseconds: not on the loop, nor in a thread of the process, that hands snapshots
to the estimator), then gives the result back with ``complete(result, now)``,
which returns the events to raise and keeps the answer for ``GET /forecast`` and the
metrics. A test drives the same object with a fake clock and calls the job itself.

History. The estimated voltages give the bus injections ``S = V conj(Ybus V)``: loads
(``-S`` at every bus but the slack and the PV plant nodes) and the PV output (``S`` at the
plant nodes, which carry the plant alone). ``feed_state`` computes them at most every
``sample_s`` (default 1 s, so ~30 µs per second on the loop for IEEE33) and averages them
into bins of ``resolution_s`` (default 60 s); a closed bin is one row of a bounded history
of ``history_days`` (gaps are filled with the last row), and a forecast reads the open bin
as its latest row (so "now" is the latest state, not the last full minute). The ring is
written twice (rows ``i`` and ``i + capacity``) so the last ``n`` rows are always one
contiguous view: the job holds that view, not a copy (the executor pickles it off the
loop), while the loop keeps appending, which is safe as long as it reads fewer rows than
the capacity minus the rows appended meanwhile (one per ``resolution_s``; a job takes well
under one). With a historian, the history can be
seeded at start from its stored states (:func:`seed_from_historian`).

The forecast itself is :mod:`estimator.forecast`: loads by seasonal-naive plus a ridge
correction (persistence while the history is too short for anything else: the answer
says which), PV by clear-sky times persistence of clearness (plants without latitude and
longitude: persistence), a batch power flow on the mean and on ``scenarios`` bootstrap
error scenarios per horizon, the band at ``coverage``.

Config: an optional ``[forecast]`` table (:func:`parse_settings` names the key of every
problem; the config loader calls it, so a bad table stops ``gridtwin run`` with status 2)::

    [forecast]
    enabled = true            # default true
    every_s = 5.0             # a forecast at most this often (wall clock)
    horizons_min = [5, 15, 60]
    limits = { vmin = 0.95, vmax = 1.05 }
    method = "learned"        # or "seasonal", "persistence"
    resolution_s = 60.0       # history bin
    history_days = 3.0        # 8 or more lets the weekly lag in
    scenarios = 40            # error scenarios per horizon (0: no band)
    coverage = 0.9            # central band
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import estimator.forecast as fc
from estimator.errors import EstimatorError
from estimator.network import Network
from gateway.config.forecast import (
    ForecastSettings,
    horizon_label,
    parse_settings,
    settings_of,
)

log = logging.getLogger("gridtwin.forecast")

__all__ = ["ForecastJob", "ForecastResult", "ForecastSettings", "Forecaster", "History",
           "horizon_label", "parse_settings", "seed_from_historian", "settings_of"]


# --------------------------------------------------------------------------- history

class History:
    """A bounded ring of evenly spaced rows, written twice so the last ``n`` rows are one
    contiguous view (see the module docstring)."""

    def __init__(self, capacity: int, ncol: int) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((2 * self.capacity, ncol))
        self.count = 0  # rows appended so far
        self.last_bin: int | None = None  # bin index (time / resolution) of the last row

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def append(self, row: np.ndarray, bin_index: int) -> None:
        """Append the row of ``bin_index``; missing bins before it repeat the last row;
        a bin earlier than the last, or a gap longer than the capacity, restarts."""
        if self.last_bin is not None:
            gap = bin_index - self.last_bin
            if gap <= 0 or gap > self.capacity:
                self.count, self.last_bin = 0, None
            else:
                last = self.view(1)[0].copy()
                for _ in range(gap - 1):
                    self._put(last)
        self._put(row)
        self.last_bin = bin_index

    def _put(self, row: np.ndarray) -> None:
        i = self.count % self.capacity
        self._buf[i] = row
        self._buf[i + self.capacity] = row
        self.count += 1

    def view(self, n: int | None = None) -> np.ndarray:
        """The last ``n`` rows (all held, at most capacity - 1), oldest first, no copy."""
        n = len(self) if n is None else min(n, len(self))
        n = min(n, self.capacity - 1)
        end = (self.count - 1) % self.capacity + self.capacity + 1
        return self._buf[end - n:end]


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Layout:
    """What a forecast needs of the feeder besides the history (sent with every job)."""

    net: Network
    settings: ForecastSettings
    load_idx: np.ndarray  # buses with loads: every bus but the slack and the plant nodes
    plant_idx: np.ndarray  # plant nodes
    rating: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    pv_located: bool  # every plant has latitude and longitude (else PV persistence)

    @property
    def nl(self) -> int:
        return int(self.load_idx.size)

    @property
    def npl(self) -> int:
        return int(self.plant_idx.size)

    @property
    def pv_method(self) -> str:
        return self.settings.method if self.pv_located else "persistence"


@dataclass
class Fit:
    """A fitted load model and the PV forecast's past relative errors (refit_s apart)."""

    model: fc.LoadModel
    pv_rel: np.ndarray  # (n_h, k, n_plants)
    at: float  # source time it was fitted at
    rows: int  # history rows it saw


@dataclass
class ForecastResult:
    """One forecast: what the job computed from the history at ``issued_at``."""

    issued_at: float  # source time of the latest state in the history
    horizons_s: tuple[float, ...]
    volts: list[fc.VoltageForecast]
    pv_mw: np.ndarray  # (n_h, n_plants)
    load_method: str
    seasonal_lag_s: float
    history_rows: int
    fit: Fit | None = None
    error: str | None = None
    computed_at: float = math.nan


@dataclass
class ForecastJob:
    """Everything one forecast reads, frozen at ``poll``: picklable, so the runner can
    compute it in another process; calling it computes it here."""

    layout: Layout
    closed: np.ndarray  # the closed rows it needs (all of them when refitting): a view
    partial: np.ndarray  # the open bin: the latest row
    history_rows: int
    issued: float
    fit: Fit | None  # None: refit on ``rows``
    seed: int

    def __call__(self) -> ForecastResult:
        return compute(self)


@dataclass
class _Bin:
    index: int = -1
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n: int = 0


class Forecaster:
    """Sans-IO: estimates and ``now`` in, jobs and events out (see the module docstring)."""

    def __init__(self, net: Network, plants: Sequence[Any], settings: ForecastSettings,
                 *, seed: int = 0) -> None:
        self.net = net
        self.s = settings
        self.plant_names = [p.name for p in plants]
        self.plant_idx = np.array([net.index_of(p.node) for p in plants], dtype=np.intp)
        skip = set(self.plant_idx.tolist()) | {net.slack}
        self.load_idx = np.array([b for b in range(net.n_bus) if b not in skip], np.intp)
        self.layout = Layout(
            net, settings, self.load_idx, self.plant_idx,
            np.array([p.rating_mw for p in plants], dtype=np.float64),
            np.array([p.latitude or 0.0 for p in plants]),
            np.array([p.longitude or 0.0 for p in plants]),
            all(p.latitude is not None and p.longitude is not None for p in plants))
        self.nl, self.np_ = self.layout.nl, self.layout.npl
        # row: P_load (nl), Q_load (nl), P_pv MW (np), |V| slack
        self.ncol = 2 * self.nl + self.np_ + 1
        rows = round(settings.history_days * 86400.0 / settings.resolution_s) + 2
        self.history = History(max(rows, 16), self.ncol)
        self.ybus = net.ybus()
        self.rng = np.random.default_rng(seed)
        self._bin = _Bin(total=np.zeros(self.ncol))
        self._last_sample = -math.inf
        self._due = -math.inf
        self._running = False
        self._fit: Fit | None = None
        self.latest: ForecastResult | None = None
        self._violating: set[tuple[int, str]] = set()
        self.forecasts = 0
        self.failures = 0

    # -- input -----------------------------------------------------------------------
    def injections(self, vm: np.ndarray, va: np.ndarray) -> np.ndarray:
        """One history row from a state: loads (pu), PV (MW), slack |V|."""
        v = vm * np.exp(1j * va)
        s = v * np.conj(self.ybus @ v)
        row = np.empty(self.ncol)
        nl = self.nl
        row[:nl] = -s.real[self.load_idx]
        row[nl:2 * nl] = -s.imag[self.load_idx]
        row[2 * nl:2 * nl + self.np_] = s.real[self.plant_idx] * self.net.base_mva
        row[-1] = vm[self.net.slack]
        return row

    def feed_state(self, t: float, vm: np.ndarray, va: np.ndarray) -> None:
        """An estimate of source time ``t``: sampled at most every ``sample_s`` into the
        current bin; a bin closes into the history when ``t`` leaves it."""
        if t - self._last_sample < self.s.sample_s and t >= self._last_sample:
            return
        self._last_sample = t
        if not (np.all(np.isfinite(vm)) and np.all(np.isfinite(va))):
            return
        k = math.floor(t / self.s.resolution_s)
        b = self._bin
        if k != b.index:
            if b.n:
                self.history.append(b.total / b.n, b.index)
            b.index, b.n = k, 0
            b.total[:] = 0.0
        b.total += self.injections(np.asarray(vm, float), np.asarray(va, float))
        b.n += 1

    def seed(self, times: np.ndarray, vm: np.ndarray, va: np.ndarray) -> int:
        """Put stored states (oldest first) before the live history: the seeded rows,
        the gap to the first live row filled, then the live rows. Nothing when the stored
        states do not end before the live ones (another timeline). Rows seeded."""
        if len(times) == 0:
            return 0
        live, live_bin, cur, last = (self.history, self.history.last_bin, self._bin,
                                     self._last_sample)
        self.history = History(live.capacity, self.ncol)
        self._bin, self._last_sample = _Bin(total=np.zeros(self.ncol)), -math.inf
        for t, m, a in zip(times, vm, va, strict=True):
            self.feed_state(float(t), np.asarray(m, float), np.asarray(a, float))
        b = self._bin
        if b.n:
            self.history.append(b.total / b.n, b.index)
        seeded, new = self.history.count, self.history
        self.history, self._bin, self._last_sample = live, cur, last
        ends = new.last_bin
        if ends is None:
            return 0
        if live_bin is not None:
            rows = live.view()
            first = live_bin - len(rows) + 1
            if first <= ends or cur.index <= ends:
                return 0
            for j, row in enumerate(rows.copy()):
                new.append(row, first + j)
        elif cur.index >= 0 and cur.index <= ends:
            return 0
        self.history = new
        return seeded

    # -- scheduling ------------------------------------------------------------------
    def next_deadline(self) -> float:
        """Wall-clock time of the next forecast (it also needs a state)."""
        return self._due

    def poll(self, now: float) -> ForecastJob | None:
        """A job when a forecast is due at ``now`` and none is running; else None."""
        b = self._bin
        if self._running or now < self._due or not b.n:
            return None
        self._due = now + self.s.every_s
        self._running = True
        partial = b.total / b.n  # the open bin so far (a copy): "now" is the latest sample
        issued = self._last_sample
        n = len(self.history) + 1
        f = self._fit
        refit = (f is None or issued - f.at >= self.s.refit_s
                 or (f.model.method != self.s.method and n > f.rows))
        closed = self.history.view()
        if not refit:
            assert f is not None
            need = max(f.model.rows_needed(),
                       int(fc.KC_WINDOW_S / self.s.resolution_s) + 2)
            closed = closed[max(0, len(closed) - need):]
        seed = int(self.rng.integers(0, 2**31))
        return ForecastJob(self.layout, closed, partial, n, issued, None if refit else f,
                           seed)

    # -- output ----------------------------------------------------------------------
    def complete(self, res: ForecastResult, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Take a finished job's result; the events it raises as ``(kind, detail)``:
        ``voltage_violation_predicted`` for every bus newly forecast outside the limits
        (at its shortest such horizon; lead time = that horizon), ``forecast_failed``."""
        self._running = False
        res.computed_at = now
        if res.error is not None:
            self.failures += 1
            return [("forecast_failed", {"issued_at": res.issued_at, "error": res.error})]
        self._fit = res.fit
        self.latest = res
        self.forecasts += 1
        first: dict[tuple[int, str], fc.Violation] = {}
        for vf in res.volts:
            for v in vf.violations:
                first.setdefault((v.bus, v.kind), v)
        events = []
        for key, v in sorted(first.items(), key=lambda kv: kv[1].horizon_s):
            if key in self._violating:
                continue
            events.append(("voltage_violation_predicted", {
                "bus": v.bus, "kind": v.kind, "horizon": horizon_label(v.horizon_s),
                "horizon_s": v.horizon_s, "vm_pu": round(v.vm_pu, 5),
                "limit_pu": self.s.vmin if v.kind == "under" else self.s.vmax,
                "probability": round(v.probability, 3), "lead_time_s": v.horizon_s,
                "issued_at": res.issued_at, "expected_at": res.issued_at + v.horizon_s}))
        self._violating = set(first)
        return events

    def summary_by_horizon(self) -> list[tuple[str, float, float, int]]:
        """(horizon label, min |V|, max |V|, buses violating) of the latest forecast."""
        if self.latest is None:
            return []
        return [(horizon_label(v.horizon_s), float(v.vm.min()), float(v.vm.max()),
                 len(v.violations)) for v in self.latest.volts]

    def as_json(self) -> dict[str, Any] | None:
        """The latest forecast as the ``GET /forecast`` object (None before the first)."""
        r = self.latest
        if r is None:
            return None
        s = self.s
        return {
            "issued_at": r.issued_at, "computed_at": r.computed_at,
            "load_method": r.load_method, "seasonal_lag_s": r.seasonal_lag_s,
            "pv_method": self.layout.pv_method,
            "history_rows": r.history_rows, "resolution_s": s.resolution_s,
            "limits": {"vmin": s.vmin, "vmax": s.vmax}, "coverage": s.coverage,
            "scenarios": s.scenarios, "bus": [int(b) for b in self.net.bus_ids],
            "horizons": [{
                "horizon": horizon_label(v.horizon_s), "horizon_s": v.horizon_s,
                "at": r.issued_at + v.horizon_s,
                "vm_pu": _r(v.vm), "vm_lo_pu": _r(v.vm_lo), "vm_hi_pu": _r(v.vm_hi),
                "min_vm_pu": float(v.vm.min()), "max_vm_pu": float(v.vm.max()),
                "pv_mw": dict(zip(self.plant_names, _r(r.pv_mw[i]), strict=True)),
                "violations": [{"bus": x.bus, "kind": x.kind, "vm_pu": round(x.vm_pu, 5),
                                "probability": round(x.probability, 3)}
                               for x in v.violations],
            } for i, v in enumerate(r.volts)],
        }


def _r(a: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in a]


# --------------------------------------------------------------------------- the work

def compute(job: ForecastJob) -> ForecastResult:
    """A forecast from a job (any thread or process: it reads only the job)."""
    lay = job.layout
    hz = lay.settings.horizons_s
    try:
        return _forecast(job)
    except (EstimatorError, np.linalg.LinAlgError, ValueError) as exc:
        return ForecastResult(job.issued, hz, [], np.zeros((len(hz), lay.npl)), "none", 0.0,
                              job.history_rows, job.fit, error=str(exc))


def _fit(lay: Layout, rows: np.ndarray, times: np.ndarray, issued: float, n: int) -> Fit:
    """Fit the load model (persistence while the history is too short for the configured
    method) and the PV forecast's past errors."""
    s, nl, npl = lay.settings, lay.nl, lay.npl
    loads = rows[:, :2 * nl]
    model = fc.fit_load_model(loads, s.resolution_s, s.horizons_s, method=s.method)
    if model.method != "persistence" and (
            model.residuals.shape[1] == 0 or len(loads) < model.rows_needed()):
        model = fc.fit_load_model(loads, s.resolution_s, s.horizons_s, method="persistence")
    pv_rel = np.zeros((len(s.horizons_s), 0, npl))
    if npl and lay.pv_located:
        pv_rel = fc.pv_relative_errors(times, rows[:, 2 * nl:2 * nl + npl], s.horizons_s,
                                       lay.rating, lay.lat, lay.lon, method=lay.pv_method)
    return Fit(model, pv_rel, issued, n)


def _forecast(job: ForecastJob) -> ForecastResult:
    lay, issued = job.layout, job.issued
    rows = np.vstack([job.closed, job.partial])  # a copy: the view is the loop's to write
    s, nl, npl, net = lay.settings, lay.nl, lay.npl, lay.net
    hz = s.horizons_s
    times = issued - s.resolution_s * np.arange(len(rows))[::-1]
    fit = job.fit or _fit(lay, rows, times, issued, job.history_rows)
    pred = fc.predict_loads(fit.model, rows[:, :2 * nl])
    recent = slice(max(0, len(rows) - int(fc.KC_WINDOW_S / s.resolution_s) - 1), None)
    pv = fc.pv_forecast(times[recent], rows[recent, 2 * nl:2 * nl + npl], np.array(hz),
                        lay.rating, lay.lat, lay.lon, method=lay.pv_method) if npl else \
        np.zeros((len(hz), 0))
    p = np.zeros((len(hz), net.n_bus))
    q = np.zeros((len(hz), net.n_bus))
    p[:, lay.load_idx] = -pred[:, :nl]
    q[:, lay.load_idx] = -pred[:, nl:]
    p[:, lay.plant_idx] = pv / net.base_mva
    pe = qe = None
    k = s.scenarios
    if k > 0:
        rng = np.random.default_rng(job.seed)
        err = fc.sample_errors(fit.model, k, rng)
        pe = np.zeros((len(hz), k, net.n_bus))
        qe = np.zeros_like(pe)
        pe[:, :, lay.load_idx] = -err[:, :, :nl]
        qe[:, :, lay.load_idx] = -err[:, :, nl:]
        if fit.pv_rel.shape[1]:
            cs = fc.pv_clear_sky_mw(issued + np.array(hz), lay.rating, lay.lat, lay.lon)
            pick = rng.integers(0, fit.pv_rel.shape[1], size=k)
            pe[:, :, lay.plant_idx] = fit.pv_rel[:, pick, :] * cs[:, None, :] / net.base_mva
    volts = fc.voltage_forecast(net, hz, p, q, pe, qe, vmin=s.vmin, vmax=s.vmax,
                                coverage=s.coverage, vm_slack=float(rows[-1, -1]))
    return ForecastResult(issued, hz, volts, pv, fit.model.method, fit.model.lag_s,
                          job.history_rows, fit)


# --------------------------------------------------------------------------- historian

def seed_from_historian(url: str, settings: ForecastSettings, *,
                        bus_ids: Sequence[int] | None = None, chunk_s: float = 600.0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States of the last ``history_days`` in the historian, one per ``sample_s`` but at
    least ``resolution_s / 6`` apart (read in chunks of ``chunk_s``, thinned as read: a day
    at 50 Hz is millions of rows; six states a bin average well enough). Returns
    ``(times, vm, va)`` of the run with the latest state, empty when the database holds no
    states or they are of other buses than ``bus_ids``. Blocking: run it off the loop."""
    from gateway.historian.reader import HistorianReader

    times: list[np.ndarray] = []
    vms: list[np.ndarray] = []
    vas: list[np.ndarray] = []
    empty = np.zeros(0), np.zeros((0, 0)), np.zeros((0, 0))
    with HistorianReader(url) as rd:
        last = rd.db.query("SELECT run_id, source_time FROM states "
                           "ORDER BY source_time DESC LIMIT 1")
        if not last:
            return empty
        run, end = int(last[0][0]), float(last[0][1])
        if bus_ids is not None and list(rd.bus_ids(run) or ()) != list(bus_ids):
            return empty  # another feeder's states
        t = end - settings.history_days * 86400.0
        prev = -math.inf  # the sample slot last kept (slots straddle the chunks)
        every = max(settings.sample_s, settings.resolution_s / 6.0)
        while t <= end:
            st = rd.states(t, t + chunk_s, run_id=run)
            if len(st):
                keep, prev = _thin(st.source_time, every, prev)
                times.append(st.source_time[keep])
                vms.append(st.vm[keep])
                vas.append(st.va[keep])
            t += chunk_s
    if not times:
        return empty
    return np.concatenate(times), np.concatenate(vms), np.concatenate(vas)


def _thin(t: np.ndarray, every_s: float, prev: float) -> tuple[np.ndarray, float]:
    """Indices of the first sample in each ``every_s`` slot (``prev``: the slot kept
    last, before ``t``), and the last slot."""
    slot = np.floor(t / every_s)
    keep = np.flatnonzero(slot != np.r_[prev, slot[:-1]])
    return keep, float(slot[-1])


# --------------------------------------------------------------------------- runner side

class ForecastRunner:
    """The thin I/O around a :class:`Forecaster` in the running gateway: the jobs go to
    one worker *process* (a batch power flow holds the GIL for milliseconds: in a thread
    it would hold up the loop that hands snapshots to the estimator), events and gauges
    when one completes, the historian seeding at start (a thread). Everything else runs
    on the event loop."""

    def __init__(self, cfg: Any, settings: ForecastSettings, metrics: Any,
                 event: Callable[[str, str, dict[str, Any]], None],
                 loop: Any, clock: Callable[[], float]) -> None:
        self.fc = Forecaster(cfg.network, cfg.plants, settings)
        self.metrics = metrics
        self.event = event
        self.loop = loop
        self.clock = clock
        self.pool = _worker_pool()
        self.closed = False

    @classmethod
    def open(cls, cfg: Any, metrics: Any, event: Callable[[str, str, dict[str, Any]], None],
             loop: Any, clock: Callable[[], float], historian_url: str | None = None
             ) -> ForecastRunner | None:
        """The runner when ``[forecast]`` is enabled (else None); with a historian URL, the
        history is seeded from its states (read in a thread)."""
        settings = settings_of(cfg)
        if not settings.enabled:
            return None
        r = cls(cfg, settings, metrics, event, loop, clock)
        if historian_url and historian_url != "none":
            fut = loop.run_in_executor(None, lambda: seed_from_historian(
                historian_url, settings, bus_ids=[int(b) for b in cfg.network.bus_ids]))
            fut.add_done_callback(r._seeded)
        return r

    async def start(self) -> None:
        """Start the worker process now, before any data. Why: the executor spawns it
        at the first job, and that (fork and exec of a large process, the executor's
        own threads) held the loop for 4-8 ms, twice, in a live twin's first 30 ms: a
        dozen snapshots missed at 1 kHz."""
        try:
            await self.loop.run_in_executor(self.pool, os.getpid)
        except Exception as exc:  # a new pool is made at the next job: forecast then
            log.warning("forecast: worker process not started ahead (%s)", exc)

    def _seeded(self, fut: Any) -> None:
        try:
            times, vm, va = fut.result()
        except Exception as exc:  # a missing or unreadable database: forecast from live data
            log.warning("forecast: history not seeded from the historian (%s)", exc)
            return
        n = self.fc.seed(times, vm, va)
        log.info("forecast: %d history rows seeded from %d stored states", n, len(times))

    def on_estimate(self, st: Any, received: float) -> None:
        """The runner's state hook: a converged estimate is fed (loop thread)."""
        if st.converged:
            self.on_state(st.source_time, st.vm, st.va, received)

    def on_state(self, t: float, vm: np.ndarray, va: np.ndarray, now: float) -> None:
        """An estimate arrived (loop thread): fed; a due forecast goes to the worker."""
        self.fc.feed_state(t, vm, va)
        job = self.fc.poll(now)
        if job is None:
            return
        if self.closed:
            self.fc.complete(_failed(job, "gateway closing"), now)
            return
        try:
            fut = self.loop.run_in_executor(self.pool, job)
        except BrokenProcessPool:  # the worker died: a new one for the next forecast
            self.pool = _worker_pool()
            self._finish(_failed(job, "forecast worker process lost"))
            return
        fut.add_done_callback(lambda f: self._done(f, job))

    def _done(self, fut: Any, job: ForecastJob) -> None:
        try:
            res = fut.result()
        except BrokenProcessPool:
            if not self.closed:
                self.pool = _worker_pool()
            res = _failed(job, "forecast worker process lost")
        except Exception as exc:  # a bug in the job: counted and said, the twin goes on
            log.exception("forecast job failed")
            res = _failed(job, repr(exc))
        self._finish(res)

    def _finish(self, res: ForecastResult) -> None:
        if res.error is not None and self.fc.failures < 5:
            log.warning("forecast failed: %s", res.error)
        for kind, detail in self.fc.complete(res, self.clock()):
            self.event(kind, "forecast", detail)
        for label, lo, hi, n in self.fc.summary_by_horizon():
            self.metrics.forecast_min_vm.labels(label).set(lo)
            self.metrics.forecast_max_vm.labels(label).set(hi)
            self.metrics.forecast_violations.labels(label).set(n)

    def as_json(self) -> dict[str, Any] | None:
        return self.fc.as_json()

    def route(self, query: str) -> tuple[int, str, bytes]:
        """``GET /forecast`` (a route of the metrics server): 503 before the first."""
        doc = self.fc.as_json()
        if doc is None:
            return 503, "application/json", b'{"error": "no forecast yet"}\n'
        return 200, "application/json", json.dumps(doc).encode() + b"\n"

    async def close(self) -> None:
        """Stop the worker process (waiting for a running job, off the loop)."""
        self.closed = True
        pool = self.pool
        await self.loop.run_in_executor(None, lambda: pool.shutdown(wait=True,
                                                                    cancel_futures=True))


def _failed(job: ForecastJob, reason: str) -> ForecastResult:
    hz = job.layout.settings.horizons_s
    return ForecastResult(job.issued, hz, [], np.zeros((len(hz), job.layout.npl)), "none",
                          0.0, job.history_rows, job.fit, error=reason)


def _worker_pool() -> ProcessPoolExecutor:
    """One spawned worker process (not forked: the gateway has threads) that runs below
    the pipeline's priority."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)


def _worker_init() -> None:
    """In the worker: ordinary scheduling (a real-time gateway's policy is inherited) and
    a lower priority. Best effort: a refusal changes nothing else."""
    import contextlib
    import os

    from gateway.realtime import unpin

    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(10)
    unpin()
