"""The estimator worker: ``python -m gateway.estimator_worker --config CFG --fd N``.

Started and supervised by the gateway (:mod:`gateway.supervisor`, through
:mod:`gateway.workers`); the live twin's only user of the estimator library. It builds the
measurement model (:mod:`gateway.se_model`) and the config's estimator once (factorize
once, solve many), says READY, then loops: receive one snapshot, estimate, send the state
back. The socket (inherited fd ``N``) is an AF_UNIX ``SOCK_SEQPACKET`` pair end; every
message is encoded and decoded by :mod:`gateway.handoff`, the one definition of the wire.

Weights: the estimator's nominal values (the percentage accuracies' reference, see
:mod:`estimator.linear`) come from the real snapshots, by the library's own rule. The
warm-up solve before READY only loads code and structural caches: its synthetic no-load
snapshot is forgotten (:meth:`~estimator.linear.LinearStateEstimator.forget_weights`), so
the live estimates equal ``gridtwin estimate`` on the same values.

Topology: a snapshot may name the switch states to estimate on (the gateway's topology
tracker, :mod:`gateway.topology`). :class:`SolverCache` keeps one solver per topology
met (its estimator built on the switched network, as
:class:`estimator.topology.TopologyBank` keeps one per hypothesis), so a topology that
comes back is a dictionary look-up with its factorizations still cached; only a topology
never seen before costs a model build. Each STATE names the topology it used.

``--method flat`` answers every snapshot with the flat start (1 pu, 0 rad) without any
estimator maths: it exists for supervision tests and the handoff benchmark only.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import select
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from gateway.handoff import (
    MAX_MESSAGE,
    SNAP,
    STOP,
    FailMsg,
    decode_snapshot,
    encode_ready,
    encode_state,
)
from gateway.realtime import go_realtime
from gateway.snapshot import Flag

DEFAULT_SPIN_US = 1000.0
#: sigma of a value the predictor corrected, in meter sigmas per second of snapshot
#: period (see measurement_scale): 50 at 1 s, 1 (the floor) at 50 Hz
CORRECTED_SIGMA_FACTOR = 50.0
#: J(x) above this many times its quantile: gross errors, removed by the LNR search
#: (measured on a 30 s, 50 Hz demo trace with 10 % bad data: the quality detector's first
#: five snapshots, before its window fills, let 5-17 gross errors each through, and their
#: angle errors of up to 0.1 rad made most of the run's angle RMSE)
GROSS_CHI2 = 3.0
#: sigma factor of a STALE value: past its stale age an edge sensor's value has an
#: error sigma of about σ0·sqrt(1 + age/τ) >= 2 σ0 (gateway.sensors), so 3 errs safe
STALE_SIGMA_FACTOR = 3.0
#: below this period snapshots come often enough to keep the process warm: no polling,
#: the CPU is better left to the gateway and the sender
MIN_SPIN_PERIOD_S = 0.004
#: below this snapshot period a bad-data search (2-6 ms on IEEE33) does not fit in one
#: period: the worker holds the prediction (the previous estimate; kalman: the filter's)
#: for a snapshot with gross errors instead (see _linear_solver)
HOLD_PERIOD_S = 0.004
#: ... for at most this long in a row; then the search runs (a lasting gross error, a
#: stuck meter, is removed by it and the filter does not coast on its prediction alone)
HOLD_MAX_S = 0.01

#: the cyclic garbage collector's own young-generation threshold (CPython's default),
#: which :class:`IdleCollector` applies between snapshots
GC_YOUNG = 700
#: ... and inside the snapshot loop only past this many (a worker never idle)
GC_YOUNG_BUSY = 20 * GC_YOUNG


class IdleCollector:
    """The cyclic garbage collector run between snapshots, never inside a solve.

    Why: Python collects when allocations reach a threshold, wherever that happens; in
    this process that is mostly inside a solve. Measured on a replayed 1 kHz stream
    (20 000 snapshots): 28 middle-generation collections of 0.5-1.1 ms and two full ones
    of 30 ms, each a missed deadline (or thirty). Built after the warm-up, the collector
    freezes what exists (imports, the model, the caches: never collected again),
    disables the automatic trigger, and collects the same generations on the same
    counts itself when the worker has nothing to do (:meth:`idle`). A worker that never
    idles (saturated) still collects, at :data:`GC_YOUNG_BUSY` (:meth:`busy`).
    """

    def __init__(self) -> None:
        gc.collect()
        gc.freeze()
        gc.disable()
        self.collections = [0, 0, 0]

    def idle(self) -> None:
        if gc.get_count()[0] >= GC_YOUNG:
            self._collect()

    def busy(self) -> None:
        if gc.get_count()[0] >= GC_YOUNG_BUSY:
            self._collect()

    def _collect(self) -> None:
        # CPython's own schedule: a middle collection once more than 10 young ones ran
        # since the last, a full one once more than 10 middle ones (gc.collect keeps
        # those counts)
        _, young_runs, middle_runs = gc.get_count()
        gen = 2 if middle_runs > 10 else 1 if young_runs > 10 else 0
        gc.collect(gen)
        self.collections[gen] += 1


#: solve(values, flags, pv_mw, pv_sigma_mw)
#:   -> (vm_pu, va_rad, chi2, chi2_threshold, iterations, converged)
SolveFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   tuple[np.ndarray, np.ndarray, float, float, int, bool]]


def build_solver(config: str, method: str) -> tuple[int, SolveFn]:
    """(number of buses, solve function) for the twin config (name or path)."""
    from gateway.config import load_config

    return solver_for(load_config(config), method)


def solver_for(cfg: Any, method: str, *, clean: bool = False,
               clock: Callable[[], float] = time.monotonic) -> tuple[int, SolveFn]:
    """(number of buses, solve function) for a loaded twin config: what the worker runs
    per snapshot (tests call it to compare the live path with ``gridtwin estimate``);
    ``clock``: how old its last answer is, for a hold (see :func:`_linear_solver`)."""
    n_bus = cfg.network.n_bus
    if method == "flat":
        vm = np.ones(n_bus)
        va = np.zeros(n_bus)

        def flat(values: np.ndarray, flags: np.ndarray, pv: np.ndarray, sig: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, float, float, int, bool]:
            return vm, va, 0.0, float("nan"), 0, True

        return n_bus, flat
    return n_bus, _linear_solver(cfg, method, clean=clean, clock=clock)


class SolverCache:
    """One solve function per topology (LRU over ``size``), the config's built at once.

    ``builds`` counts the solvers built: a topology coming back adds none (its
    estimator, and the factorizations it cached, are reused)."""

    def __init__(self, cfg: Any, method: str, *, clean: bool = False, size: int = 32
                 ) -> None:
        from estimator.topology import SwitchSet

        self.cfg, self.method, self.clean, self.size = cfg, method, clean, int(size)
        self.switches = SwitchSet.of(cfg.network)
        self.n_bus, solve = solver_for(cfg, method, clean=clean)
        normal = self.switches.normal
        self._fns: OrderedDict[tuple[bool, ...], tuple[SolveFn, str]] = OrderedDict(
            {normal: (solve, "normal")})
        self.builds = 1

    def solver(self, topology: tuple[bool, ...] | None) -> tuple[SolveFn, str]:
        """(solve function, label) of ``topology`` (None: the config's network)."""
        key = self.switches.normal if topology is None else topology
        hit = self._fns.get(key)
        if hit is not None:
            self._fns.move_to_end(key)
            return hit
        sw = self.switches
        if len(key) != len(sw.branches):
            raise ValueError(f"topology of {len(key)} switches, the network has "
                             f"{len(sw.branches)} switchable branches")
        cfg = replace(self.cfg, network=sw.network(key))
        hit = (solver_for(cfg, self.method, clean=self.clean)[1], sw.label(key))
        self.builds += 1
        self._fns[key] = hit
        if len(self._fns) > self.size:
            self._fns.popitem(last=False)
        return hit

    def idle(self) -> bool:
        """The work the last used solver left for the time between snapshots (a
        deferred re-weighting, :func:`_linear_solver`); False when there was none."""
        fn = next(reversed(self._fns.values()))[0]
        idle = getattr(fn, "idle", None)
        return bool(idle()) if idle is not None else False


def _linear_solver(cfg: Any, method: str, *, clean: bool = False,
                   clock: Callable[[], float] = time.monotonic) -> SolveFn:
    """The config's estimator (``linear``: the DT paper's constant-gain linear SE) on the
    config's measurement model. Values the quality stage flagged BAD and did not correct
    are left out; NaN values (missing, not filled) are inactive; the PV forecasts are
    the pseudo-measurements with the forecaster's own sigma; a value the predictor
    corrected (or filled) carries the predictor's error, :data:`CORRECTED_SIGMA_FACTOR`
    times the snapshot period (s) times the meter's sigma (at least the meter's), in the
    gain itself (see :func:`measurement_scale`). With the linear family (``linear``,
    ``tracking``, ``kalman``), a value flagged STALE (an edge sensor's latest value past
    its stale age, :mod:`gateway.sensors`) weighs less: its sigma times
    :data:`STALE_SIGMA_FACTOR`. With ``clean`` (the worker process's default,
    ``--no-clean`` to turn it off), when the static estimate's J(x) is above
    :data:`GROSS_CHI2` times its 99 % quantile (and no value is STALE: an aged value's
    error is what its factor accounts for, not bad data to remove), the
    largest-normalized-residual search (``estimator.badata``) removes what the quality
    stage let through (why: :data:`GROSS_CHI2`); below :data:`HOLD_PERIOD_S` a gross
    snapshot is held instead (:class:`_Holder`). A value flagged PSEUDO (the quality
    stage's fill of a gap longer than ``gateway.quality.stage.MAX_FILL_S``: a free-running
    prediction by then) is left out while the feeder stays observable without it
    (:class:`_LeaveOut`)."""
    from estimator.baselines import make_estimator
    from estimator.errors import DidNotConverge
    from estimator.linear import LinearStateEstimator
    from gateway.se_model import measurement_model

    model = measurement_model(cfg)
    period = 1.0 / cfg.rate_hz  # the snapshot period
    est = make_estimator(method, model, tolerance=cfg.estimator.tolerance,
                         max_iterations=cfg.estimator.max_iterations,
                         **({"period_s": period} if method == "kalman" else {}))
    chan_real, real_idx = model.channel_real, model.real_idx
    # the linear family weighs caller sigmas and sigma factors
    takes_sigma = isinstance(est, LinearStateEstimator) or hasattr(est, "nominal_sigma")
    # bad-data fallback for the static linear SE (re-solving a snapshot is idempotent
    # there) and the kalman one (its solve_clean redoes the last filter step); the
    # tracking filter would step once per re-solve
    cleaner = (getattr(est, "solve_clean", None) if clean and method in ("linear", "kalman")
               else None)
    holder = _Holder(est if cleaner and period < HOLD_PERIOD_S else None, period, clock)
    leave_out = _LeaveOut(real_idx)
    _warm_up(cfg, model, est, cleaner)
    idle = _deferred(est, period)

    def solve(values: np.ndarray, flags: np.ndarray, pv: np.ndarray, sig: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, float, float, int, bool]:
        z = model.values_to_pu(values, pv if pv.size else None)
        f = flags[chan_real]
        active, aged = _usable(z, f, real_idx)
        extra, kw = _weights(model, z, f, sig, period) if takes_sigma else ({}, {})
        try:
            st, active = leave_out.solve(est, z, active, f, kw)
            # the chi-square test of the snapshot as it arrived (what the metrics and the
            # GridtwinChiSquareFailing alert report: bad data the quality stage let through)
            chi2, chi2_thr = float(st.objective), float(st.chi2_threshold)
            if cleaner is not None and not aged.any() and chi2 > GROSS_CHI2 * chi2_thr:
                # gross errors the quality stage let through (its detector is still
                # warming up, or an error looks plausible): the estimator's own test
                # caught them (far above the quantile, not the 1 % of healthy snapshots
                # just above it); remove them by the largest normalized residual, or hold
                v_hold = holder.hold()
                if v_hold is not None:
                    return np.abs(v_hold), np.angle(v_hold), chi2, chi2_thr, 0, False
                holder.refuse(est, chi2, chi2_thr)
                st = cleaner(z, active=active, warm_start=st.v, **extra)
        except DidNotConverge as exc:
            if exc.last is None:
                raise
            v = np.asarray(exc.last)  # the last iterate, reported as not converged
            return np.abs(v), np.angle(v), float("nan"), float("nan"), exc.iterations, False
        v = np.asarray(st.v)
        holder.answered()
        return np.abs(v), np.angle(v), chi2, chi2_thr, int(st.iterations), True

    if idle is not None:
        solve.idle = idle  # type: ignore[attr-defined]
    return solve


def _weights(model: Any, z: np.ndarray, f: np.ndarray, sig: np.ndarray, period: float
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The linear family's keyword arguments: (the search's: the sigmas; the first
    solve's: the sigmas and, if any differs from 1, the sigma factors)."""
    extra: dict[str, Any] = {"sigma": measurement_sigmas(model, z, f, sig)}
    scale = measurement_scale(model, f, period)
    return extra, extra if scale is None else {**extra, "sigma_scale": scale}


class _LeaveOut:
    """The solve without the PSEUDO values (long fills), where the feeder is observable
    without them; else with them, and that set remembered as unobservable (no failed
    attempt per snapshot while a critical meter is silent)."""

    def __init__(self, real_idx: np.ndarray) -> None:
        self.real_idx = real_idx
        self.unobservable: set[bytes] = set()

    def solve(self, est: Any, z: np.ndarray, active: np.ndarray, f: np.ndarray,
              extra: dict[str, Any]) -> tuple[Any, np.ndarray]:
        """(the estimate, the measurement set it used)."""
        from estimator.errors import DidNotConverge, NotObservableError

        if not int(np.bitwise_or.reduce(f, initial=0)) & _PSEUDO_BIT:
            return est.solve(z, active=active, **extra), active
        pseudo = (f & np.uint32(_PSEUDO_BIT)) != 0
        key = pseudo.tobytes()
        if key not in self.unobservable:
            reduced = active.copy()
            reduced[self.real_idx[pseudo]] = False
            try:
                return est.solve(z, active=reduced, **extra), reduced
            except (NotObservableError, DidNotConverge):
                if len(self.unobservable) >= 64:
                    self.unobservable.clear()
                self.unobservable.add(key)
        return est.solve(z, active=active, **extra), active


class NotSearched(Exception):
    """A snapshot with gross errors left unestimated (see :meth:`_Holder.skip`): the
    worker answers it with a FAIL naming why."""


class _Holder:
    """The held answer to a snapshot with gross errors (below :data:`HOLD_PERIOD_S`,
    ``linear`` and ``kalman``; ``est`` None: never).

    There a search does not fit in a period (2-6 ms at 1 kHz, and it delayed the next
    several snapshots: 61 % of the 1 kHz deadline misses, docs/measured.md), so a
    snapshot that fails the gross test is answered with the prediction, the previous
    estimate one period old (``hold`` of :class:`~estimator.linear.LinearStateEstimator`; of
    :class:`~estimator.kalman.KalmanStateEstimator`: the filter's step taken back, no
    measurement update), nothing of this snapshot's values in it, and FLAGGED:
    ``converged`` false with 0 iterations and the snapshot's own failing J(x) (the
    historian stores both, the chi-square failure counts it, ``gridtwin demo`` reports
    ``states_held``, and the command controller acts on converged estimates only). At
    most :data:`HOLD_MAX_S` in a row: the next gross snapshot is searched as before (a
    stuck meter must not leave the twin on its prediction). With nothing to hold — the
    first snapshots, before the quality stage's detector has a history, or when this
    solve function's previous answer is older than :data:`HOLD_MAX_S` (``clock``: a
    topology that comes back, :class:`SolverCache`, or a stalled feed would otherwise
    hold an estimate from seconds ago) — a gross snapshot is not estimated
    (:meth:`skip`: a FAIL, its solve discarded) until gross snapshots have come for
    :data:`HOLD_MAX_S`; then it is searched. Why: the first snapshot's search took
    10-14 ms at 1 kHz (its gross errors before the detector has a history), and the ~20
    snapshots behind it were superseded; not estimating it costs that one and lets the
    first clean snapshot through at once.
    """

    def __init__(self, est: Any, period: float, clock: Callable[[], float]) -> None:
        self._hold: Callable[[], np.ndarray | None] | None = getattr(est, "hold", None)
        self.max = int(HOLD_MAX_S / period + 1e-9)  # snapshots in a row
        self.clock = clock
        self.held = 0  # held in a row
        self.last = -math.inf  # clock() at the last answer
        self.skipped_since: float | None = None  # clock() at the first skip in a row

    def hold(self) -> np.ndarray | None:
        """The prediction to answer with (the estimator's step taken back), or None: the
        search runs."""
        now = self.clock()
        if self._hold is None or self.held >= self.max or now - self.last > HOLD_MAX_S:
            return None
        v = self._hold()
        if v is not None:
            self.held += 1
            self.last = now
        return v

    def skip(self) -> bool:
        """Called when :meth:`hold` had nothing to hold: True while this gross snapshot
        should be left unestimated (the first gross snapshots in a row, for
        :data:`HOLD_MAX_S`), False: search it. Never after a run of holds reached its
        limit (that is a lasting error: searched)."""
        if self._hold is None or self.held >= self.max:
            return False
        now = self.clock()
        if self.skipped_since is None:
            self.skipped_since = now
        return now - self.skipped_since < HOLD_MAX_S

    def refuse(self, est: Any, chi2: float, threshold: float) -> None:
        """When :meth:`skip` says so: the estimator's solve taken back (``discard``) and
        :class:`NotSearched` raised (the worker's FAIL), naming why."""
        if not self.skip():
            return
        discard = getattr(est, "discard", None)
        if discard is not None:
            discard()
        raise NotSearched(
            f"J(x) = {chi2:.0f}, {chi2 / threshold:.0f} times its 99 % quantile, and no "
            "recent estimate to hold: not estimated (gross errors are searched once they "
            f"last {HOLD_MAX_S * 1e3:g} ms)")

    def answered(self) -> None:
        """An estimate of its own snapshot went out."""
        self.held = 0
        self.last = self.clock()
        self.skipped_since = None


def measurement_sigmas(model: Any, z: np.ndarray, flags: np.ndarray, pv_sigma_mw: np.ndarray
                       ) -> np.ndarray:
    """Per-measurement sigma (pu) overriding the model's: the PV forecasts' own sigma (the
    forecaster card's error model, per snapshot); NaN elsewhere (the model's, the meter's).
    A value the predictor corrected keeps the meter's sigma here: its factor is a sigma
    factor (:func:`measurement_scale`), so that it reaches the gain at once."""
    out = np.full(model.m, np.nan)
    if pv_sigma_mw.size and model.pseudo_idx.size:
        out[model.pseudo_idx] = np.asarray(pv_sigma_mw, float) * model.scale_pseudo
    return out


def measurement_scale(model: Any, flags: np.ndarray, period_s: float = 1.0
                      ) -> np.ndarray | None:
    """Per-measurement sigma factor for this snapshot (``sigma_scale`` of the linear
    family), None when every factor is 1: on a value the predictor corrected or filled
    ``max(1, CORRECTED_SIGMA_FACTOR * period_s)`` (:data:`CORRECTED_SIGMA_FACTOR`), on a
    STALE one :data:`STALE_SIGMA_FACTOR`.

    Why a factor in the gain and not only in J(x): J(x) and the residuals use the
    snapshot's sigmas but the constant gain keeps its nominal weights between
    re-weightings, so a corrected value with a large error given a large sigma still
    pulled the estimate with the meter's weight and spread its error over the other
    measurements' residuals (measured: the larger the factor given only as a sigma, the
    MORE healthy estimates failed the test, 18.7 % at factor 1, 31 % at 10). As a sigma
    factor the gain sees it (each pattern is factorized once: 5-19 ms per snapshot on
    IEEE33 at 1 s with 10 % bad data, where nearly every snapshot brings a new pattern).

    Why proportional to the period: the predictor's error is the feeder's movement it
    could not foresee since the last sample, which during a cloud ramp grows with the
    time between samples. Measured (docs/se-statistics.md): at 1 s the corrected values'
    error is 0.3-4.8 meter sigmas in the median but 33-101 in root mean square, and factor
    50 puts the healthy 99 % failure rate at 1.0 % (40 -> 1.8 %, 60 -> 0.6 %); at 50 Hz
    the same factor 50 leaves 0.07-0.14 % (too few: the test then misses what it should
    see), factor 1 is the calibrated one.
    """
    fix = max(1.0, CORRECTED_SIGMA_FACTOR * period_s)
    # no factor other than 1 can come (at 50 Hz and 1 kHz a corrected value's is 1):
    # known from one pass over the flags, without building the factors
    bits = (_CORRECTED_BIT if fix != 1.0 else 0) | (_STALE_BIT if STALE_SIGMA_FACTOR != 1.0
                                                   else 0)
    if not int(np.bitwise_or.reduce(flags, initial=0)) & bits:
        return None
    real = model.real_idx
    fixed = (flags & np.uint32(4)) != 0
    aged = (flags & np.uint32(256)) != 0
    out = np.ones(model.m)
    out[real[aged]] = STALE_SIGMA_FACTOR
    out[real[fixed]] = fix
    return None if np.all(out == 1.0) else out


_BAD, _CORRECTED, _STALE = (np.uint32(f) for f in (Flag.BAD, Flag.CORRECTED, Flag.STALE))
_CORRECTED_BIT, _STALE_BIT, _PSEUDO_BIT, _BAD_OR_CORRECTED = (
    int(Flag.CORRECTED), int(Flag.STALE), int(Flag.PSEUDO), np.uint32(Flag.BAD | Flag.CORRECTED))


def _usable(z: np.ndarray, f: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the values to estimate with, the aged ones) of measurement vector ``z`` whose
    real measurements (``real``: their indices in ``z``) carry the quality flags ``f``:
    NaN is out, and so is a value flagged BAD that the predictor did not replace."""
    active = np.isfinite(z)
    active[real] &= (f & _BAD_OR_CORRECTED) != _BAD  # not: BAD and not CORRECTED
    return active, (f & _STALE) != 0


def _deferred(est: Any, period: float) -> Callable[[], bool] | None:
    """Below :data:`HOLD_PERIOD_S`, the linear family's re-weightings are made between
    snapshots, not on one's deadline path (``defer_reweight``); the work to call there
    (``idle``), or None. There a snapshot failing the chi-square test grossly is held
    or refused (:class:`_Holder`) unless searched, so its first solve does not take its
    leverages (``lazy_failing_leverages``: above the same :data:`GROSS_CHI2`)."""
    from estimator.linear import LinearStateEstimator

    core = est if isinstance(est, LinearStateEstimator) else getattr(est, "static", None)
    if period >= HOLD_PERIOD_S or not isinstance(core, LinearStateEstimator):
        return None
    core.defer_reweight = True
    core.lazy_failing_leverages = GROSS_CHI2
    return core.idle


def _warm_up(cfg: Any, model: Any, est: Any, cleaner: Any = None) -> None:
    """Run the solve path once before saying READY (imports, BLAS, the structural caches:
    observability, null space), so the first live snapshot does not pay for them: one
    solve on the no-load flat profile (vm = base kV, everything else 0). Those values are
    not the feeder's, so the weights they set are forgotten and the warm start reset: the
    first real snapshot sets the nominal values (and factorizes). Then, when the worker
    cleans (``cleaner``: the estimator's bad-data search), that search once on the same
    profile with one gross error."""
    values = np.zeros(len(cfg.channels))
    net = cfg.network
    for c in cfg.channels:
        if c.quantity == "vm" and c.bus is not None:
            values[c.index] = float(net.base_kv[net.index_of(c.bus)])
    pv = np.zeros(len(cfg.plants))
    try:
        z = model.values_to_pu(values, pv if pv.size else None)
        est.solve(z)
        volts = np.flatnonzero(np.isfinite(z) & (z > 0.5))
        if cleaner is not None and volts.size:
            # the bad-data search too (its compiled fill iteration loads on first use,
            # about 15 ms): one voltage 30 % off
            z[volts[0]] *= 1.3
            cleaner(z)
    except Exception as exc:  # a warm-up failure only costs the first snapshot time
        print(f"estimator worker: warm-up solve failed ({exc}); continuing",
              file=sys.stderr)
    for name in ("forget_weights", "reset"):
        step = getattr(est, name, None)
        if step is not None:
            step()


class PeriodicReceiver:
    """Receive snapshots with a low wake-up latency.

    Snapshots arrive periodically, so the process sleeps until ``spin_s`` before the next
    one is due, then polls the socket without blocking (a spin of at most ``2 * spin_s``,
    capped at a quarter period) and only then blocks. Waking a process blocked in
    ``recv`` costs tens of microseconds to milliseconds on a loaded host (its caches gone
    cold); a process already polling sees the message at once. Below
    :data:`MIN_SPIN_PERIOD_S` snapshots come often enough to keep it warm and it always
    blocks; ``spin_s = 0`` always blocks.
    """

    def __init__(self, sock: socket.socket, spin_s: float) -> None:
        self.sock = sock
        self.spin_s = spin_s
        self.period: float | None = None
        self.last: float | None = None
        self.spun = 0
        self.blocked = 0
        self.early = 0

    def recv(self) -> tuple[bytes, float]:
        clock = time.time
        sock = self.sock
        msg: bytes | None = None
        if self.spin_s > 0 and self.period is not None and self.last is not None and \
                self.period >= MIN_SPIN_PERIOD_S:
            spin = min(self.spin_s, self.period / 4)
            expect = self.last + self.period
            wait = expect - spin - clock()
            if wait > 0:
                ready, _, _ = select.select([sock], [], [], wait)
                if ready:
                    msg = sock.recv(MAX_MESSAGE)
                    self.early += 1
            if msg is None:
                until = max(expect, clock()) + spin
                while clock() < until:
                    try:
                        msg = sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
                        self.spun += 1
                        break
                    except BlockingIOError:
                        continue
        if msg is None:
            msg = sock.recv(MAX_MESSAGE)
            self.blocked += 1
        now = clock()
        if self.last is not None:
            d = now - self.last
            if 0 < d < 1.0:
                # period: exponentially weighted mean of the inter-arrival times
                self.period = d if self.period is None else 0.9 * self.period + 0.1 * d
        self.last = now
        return msg, now


def serve(sock: socket.socket, n_bus: int, solve: SolveFn | SolverCache, t_build: float, *,
          spin_s: float = 0.0, collector: IdleCollector | None = None) -> int:
    """Answer snapshots until STOP or the socket closes (0); every failure is a FAIL.
    ``collector``: made here when not given (its first full collection is best made
    before the process takes a real-time priority)."""
    clock = time.time
    rx = PeriodicReceiver(sock, spin_s)
    idle = solve.idle if isinstance(solve, SolverCache) else getattr(solve, "idle", None)
    collector = collector or IdleCollector()
    sock.send(encode_ready(n_bus, os.getpid(), clock()))
    while True:
        msg, recv_time = rx.recv()
        if not msg or msg[:1] == STOP:
            if os.environ.get("GRIDTWIN_ESTIMATOR_DEBUG"):
                print(f"estimator {os.getpid()}: {rx.spun} received while polling, "
                      f"{rx.early} before the window, {rx.blocked} while blocked",
                      file=sys.stderr)
            return 0
        if msg[:1] != SNAP:
            continue
        sock.send(answer(msg, recv_time, solve, t_build, clock))
        _between(sock, idle, collector)


def _between(sock: socket.socket, idle: Callable[[], bool] | None,
             collector: IdleCollector) -> None:
    """After a state went out: the solver's deferred work, then the garbage collector,
    each only while no snapshot waits (else the next solve comes first)."""
    if idle is not None and not select.select([sock], [], [], 0)[0]:
        try:
            idle()
        except Exception as exc:  # the next solve retries it and reports a failure
            print(f"estimator worker: deferred re-weighting failed: {exc}", file=sys.stderr)
    if select.select([sock], [], [], 0)[0]:
        collector.busy()
    else:
        collector.idle()


def answer(msg: bytes, recv_time: float, solve: SolveFn | SolverCache, t_build: float,
           clock: Callable[[], float] = time.time) -> bytes:
    """The STATE (or, on any failure, FAIL) message answering one SNAP message; with a
    :class:`SolverCache`, estimated on the topology the snapshot names (the time to
    build a solver for a topology never seen before counts as solve time)."""
    seq, send_time = -1, float("nan")
    label = "normal"
    try:
        snap, pv, sig, send_time = decode_snapshot(msg)
        seq = snap.seq
        t0 = time.perf_counter()
        if isinstance(solve, SolverCache):
            fn, label = solve.solver(snap.topology)
        else:
            fn = solve
        vm, va, chi2, chi2_thr, iters, conv = fn(snap.values, snap.flags, pv, sig)
        t_solve = time.perf_counter() - t0
    except Exception as exc:  # report any failure (bad message, solver), keep serving
        return FailMsg(seq, send_time, recv_time, f"{type(exc).__name__}: {exc}").encode()
    times = (snap.source_time, snap.arrival_time, snap.published_time, send_time,
             recv_time, clock())
    return encode_state(seq, times, chi2, chi2_thr, t_build, t_solve, iters, conv, vm, va,
                        label)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.estimator_worker")
    p.add_argument("--config", required=True, help="twin config (bundled name or .toml)")
    p.add_argument("--fd", type=int, required=True, help="inherited SOCK_SEQPACKET fd")
    p.add_argument("--method", default=None, help="override the config's estimator method")
    p.add_argument("--spin-us", type=float, default=DEFAULT_SPIN_US,
                   help="poll the socket this long around the expected snapshot arrival "
                   "(0: always block)")
    p.add_argument("--no-clean", action="store_true",
                   help="no largest-normalized-residual search when J(x) is far above its "
                   "quantile (gross errors the quality stage let through)")
    p.add_argument("--realtime", action="store_true",
                   help="the estimator's SCHED_FIFO priority and CPU (gateway.realtime) if "
                   "allowed, else nice -10")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us, not Ctrl-C
    sock = socket.socket(fileno=args.fd)
    t0 = time.perf_counter()
    try:
        from gateway.config import load_config

        cfg = load_config(args.config)
        solvers = SolverCache(cfg, args.method or cfg.estimator.method,
                              clean=not args.no_clean)
    except Exception as exc:
        print(f"estimator worker: cannot build the estimator: {exc}", file=sys.stderr)
        return 3
    t_build = time.perf_counter() - t0
    collector = IdleCollector()  # (one full collection: ~40 ms)
    if args.realtime:
        # only now, after the imports, the build, the warm-up and that collection: a
        # spare started while the twin runs must not hold the CPU its active twin needs
        # at the same real-time priority (a SCHED_FIFO task runs until it blocks)
        go_realtime("estimator")
    try:
        return serve(sock, solvers.n_bus, solvers, t_build,
                     spin_s=max(0.0, args.spin_us) * 1e-6, collector=collector)
    except (BrokenPipeError, ConnectionResetError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
