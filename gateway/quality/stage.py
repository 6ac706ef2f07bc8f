"""The data-quality stage: detect ▸ correct ▸ fill, plus the PV pseudo-measurements.

Per snapshot (``QualityStage.process``):

1. Every electrical channel (PMU, SCADA) keeps a ring of its last T-1 = 9 *cleaned*
   values. All rings are normalised per window (``models.features.normalise_windows``)
   and go through the measurement predictor (bidirectional LSTM, ONNX) in ONE batched
   onnxruntime call: batch = channels, sequence = 9.
2. The temporal-correlation statistic ``z = |x - x̂| / σ`` with a robust running spread
   (:mod:`gateway.quality.detector`) flags BAD values; BAD values are replaced by the prediction
   (BAD|CORRECTED) and missing ones filled (MISSING|CORRECTED).
3. Weather channels are not tested (irradiance legitimately jumps with clouds); a
   missing weather value holds the last one (MISSING|CORRECTED). The PV samples of a
   silent station carry its last whole sample by clear-sky-index persistence, and the
   forecast's sigma widens with the silence (:data:`STALE_WX_SIGMA`).
4. Each PV plant's weather channels are sampled every ``stride_s`` (model card) into a
   10-sample window; each sample also carries the inputs the card lists beyond the
   weather (the sun terms of ``models.pv_features``, from ``now`` and the plant's
   latitude/longitude); the PV forecaster (BiLSTM, ONNX) turns the window into the plant's
   output per unit of rating: ``pv_mw`` and ``pv_sigma_mw`` are the estimator's PSEUDO
   measurements (σ from the card's held-out error model: σ = a + b·g(p), g(p) = p or
   p(1 − p) as the card's ``sigma_pu.form`` says). A plant without coordinates, when the
   model needs them, gets the weak nameplate guess instead (P = 0.85 · GHI/1000 W/m² ·
   rating, σ = 30 % of rating, as with the quality stage disabled).

Look-ahead (software pipelining): the prediction of snapshot t+1 depends only on the
rings after snapshot t, so :meth:`QualityStage.lookahead` computes it (normalise ▸
BiLSTM) as soon as snapshot t is cleaned. The gateway calls it right after handing
snapshot t to the estimator: the ~0.2-0.4 ms of ONNX Runtime work then overlaps the
estimator's solve on the other core instead of sitting between a snapshot's last frame
and its estimate, and :meth:`process` is left with the detector's comparisons. The maths
are unchanged: :meth:`process` runs whatever look-ahead is still outstanding itself
(offline callers that never call :meth:`lookahead` get bit-identical results). A PV stride
sample costs its snapshot only the copy of its weather values; the sun terms and the
forecaster's run follow as two pieces, one per interval between snapshots (in
:meth:`lookahead`, or at the start of the next :meth:`process` when it is not called), so
the forecast from the sample of snapshot t is reported from snapshot t+2 on, online and
offline alike (the very first forecast is computed at once, and every forecast when
snapshots come 0.1 s or more apart: :data:`PV_INLINE_PERIOD_S`). With the predictor process,
the first snapshot's prediction is asked for when the stage is built.

With ``predictor_process=True`` (what the gateway uses) the look-ahead's ONNX Runtime
call runs in a child process (``python -m models.serve``, :class:`PredictorProcess`): the
windows go out over an AF_UNIX ``SOCK_SEQPACKET`` socket right after the handoff, the
outputs come back while the gateway ingests (:meth:`QualityStage.collect`, a reader
callback) and the gateway's thread keeps only the normalisation. An answer not there when
the next snapshot is cleaned is waited for at most :data:`LATE_WAIT_S` (0.3 ms); then the
stage predicts in-process (same numbers) and drops the late answer when it comes (a
real-time gateway's child shares the gateway's CPU: a busy gateway delays it). A lost or
silent child (no answer within :data:`REMOTE_TIMEOUT_S`) is closed, reported once through
``on_remote_lost`` and the stage predicts in-process (same model, same numbers) until a
new child is handed to it (:meth:`QualityStage.adopt_remote`; the gateway's
:class:`~gateway.quality.predictor.PredictorKeeper` starts one after a back-off delay).

``now`` is passed in (seconds); nothing here reads the clock except for the timings.
No torch: the predictor can be swapped for a callable (the bench's PyTorch-eager peer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gateway.quality.detector import DetectorParams, TemporalDetector, compiled_kernels
from gateway.quality.passthrough import NAMEPLATE_SIGMA, nameplate_mw
from gateway.quality.predictor import (
    LATE_WAIT_S,
    REMOTE_TIMEOUT_S,
    PredictorProcess,
    QualityError,
)
from gateway.snapshot import Flag

if TYPE_CHECKING:
    import asyncio

    from gateway.config import TwinConfig
    from gateway.quality.batch import PredictorBatcher
    from models.runtime import BoundModel, OnnxModel

Predictor = Callable[[np.ndarray], np.ndarray]
_MISSING = np.uint32(Flag.MISSING)
_NOT_MISSING = np.uint32(~np.uint32(Flag.MISSING))
_FILLED = np.uint32(Flag.MISSING | Flag.CORRECTED)
_PSEUDO = np.uint32(Flag.PSEUDO)
_CORRECTED = np.uint32(Flag.CORRECTED)
#: a gap longer than this (and than the predictor's window) is filled but flagged PSEUDO:
#: measured at 1 kHz on a PMU dropout, the fill's error is that of a real value up to
#: 0.1 s into the gap, then grows (2.2x at 0.25 s, 9x at 1 s, 27x after); the estimator
#: worker leaves PSEUDO values out where the feeder stays observable without them
MAX_FILL_S = 0.1
#: snapshots at least this far apart (10 Hz and slower: SCADA rates, `gridtwin evaluate`'s
#: 1 s traces) take a PV stride's whole work on the stride snapshot itself, 0.4-0.6 ms of
#: a period of 100 ms or more; deferred, its forecast was two periods old when reported
PV_INLINE_PERIOD_S = 0.1
#: a PV forecast from a silent weather station: its error grows towards STALE_WX_SIGMA
#: (of rating) with time constant STALE_WX_TAU_S. Measured on 12 three-hour traces
#: (1990-04-10, -07-15, -09-20, -11-05 from 08:00, 11:00, 14:00; seeds 31-34, none of
#: them the evaluation's): RMS error 5 % fresh, 13 % after 10-20 s of silence, 15 % at
#: 20-40 s, 23 % at 40-60 s, 21-27 % from one minute to hours; the card's sigma (3-5 %)
#: had stayed, ten times too small
STALE_WX_SIGMA, STALE_WX_TAU_S = 0.25, 30.0


@dataclass
class QualityResult:
    values: np.ndarray  # cleaned values, channel order
    flags: np.ndarray  # uint32, input flags OR-ed with BAD/CORRECTED/MISSING
    pv_mw: np.ndarray  # (n_plants,) PV pseudo-measurement, MW
    pv_sigma_mw: np.ndarray  # (n_plants,) its standard deviation, MW
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part
    z: np.ndarray | None = None  # detector statistic per channel (NaN where untested)


class QualityStage:
    """Stateful per-feed cleaner; one instance per twin config."""

    def __init__(self, cfg: TwinConfig, models_dir: Path | str | None = None, *,
                 threshold: float | None = None, predictor: Predictor | None = None,
                 pv_predictor: Predictor | None = None,
                 predictor_process: bool = False,
                 batch_loop: asyncio.AbstractEventLoop | None = None) -> None:
        from models.errors import ModelError
        from models.runtime import PREDICTOR, PV, load_model

        self.cfg = cfg
        self.m = len(cfg.channels)
        try:
            self.model = load_model(PREDICTOR, models_dir)
            self.pv_model = load_model(PV, models_dir) if cfg.plants else None
        except ModelError as exc:
            raise QualityError(f"quality stage: {exc}") from exc
        card = self.model.card
        if card.window != cfg.quality.window:
            raise QualityError(
                f"quality.window = {cfg.quality.window} but {self.model.path} was trained "
                f"with window {card.window}")
        self.hist_len = card.window - 1
        k = threshold if threshold is not None else cfg.quality.threshold
        if k is None:
            k = float(card.extra.get("threshold", 8.0))
        self.threshold = float(k)
        self._init_detector(float(card.extra.get("kappa", 0.0)))
        self._init_predictor(predictor)
        self._init_pv(pv_predictor)
        self._ahead = False  # the prediction for the next snapshot is in _pred/_s/_c
        #: with ``batch_loop``: the in-process look-aheads of every stage on that loop
        #: go out as one predictor call per loop turn (:mod:`gateway.quality.batch`)
        self._batcher: PredictorBatcher | None = None
        if batch_loop is not None and self._bound is not None:
            from gateway.quality.batch import PredictorBatcher

            self._batcher = PredictorBatcher.for_loop(self.model, batch_loop)
        self._queued = False  # the prepared windows wait in the batcher
        #: the predictor process's answer in flight is late: predicted in-process
        #: meanwhile, it is read and dropped when it comes
        self._stale = False
        #: snapshots predicted in-process because the child's answer was late
        self.late_answers = 0
        self._yn = np.zeros(self.det_idx.size, np.float32)
        #: seconds the last :meth:`lookahead` took in the caller's thread (predict + PV,
        #: or with the predictor process: normalise + send + PV; 0 when nothing was due)
        self.lookahead_s = 0.0
        #: called once with the reason when the predictor process is given up
        self.on_remote_lost: Callable[[str], None] | None = None
        self.remote: PredictorProcess | None = None
        #: why the predictor process could not be started (None: started or not asked)
        self.remote_error: str | None = None
        self._remote_args: tuple[int, int, Path | str | None] | None = None
        self._closed = False
        if predictor_process and self._bound is not None:
            self._remote_args = (self.det_idx.size, self.hist_len, models_dir)
            try:
                self.remote = self.start_remote()
            except QualityError as exc:  # same model in-process: slower, not wrong
                self.remote_error = str(exc)
            # the first snapshot's prediction (from the empty rings) now, not on its path
            self.lookahead()

    def _init_detector(self, kappa: float) -> None:
        """Electrical channels (tested) and the others (held); their σ_meas terms."""
        cfg = self.cfg
        det = [c for c in cfg.channels if c.electrical]
        self.det_idx = np.array([c.index for c in det], dtype=np.int64)
        k_div = np.array([c.k for c in det])
        # sigma_meas(x) = max(rel |x|, abs) / k  (Channel.sigma_at), floored at 1e-12
        self._rel_k = np.array([c.rel for c in det]) / k_div
        self._abs_k = np.maximum(np.array([c.abs for c in det]) / k_div, 1e-12)
        self.other_idx = np.array([c.index for c in cfg.channels if not c.electrical],
                                  dtype=np.int64)
        #: the compiled kernels (None with GRIDTWIN_JIT=0: the NumPy code, same numbers)
        self._kernels = compiled_kernels()
        if self._kernels is not None:
            self._kernels.warm()  # compiled (or loaded) now, not on the first snapshot
        #: the window preparation in one compiled pass (where its sums are NumPy's)
        self._fused = self._kernels is not None and self._kernels.sums_match(self.hist_len)
        self._di = _as_slice(self.det_idx)
        self._oi = _as_slice(self.other_idx)
        self.detector = TemporalDetector(len(det), self.hist_len, DetectorParams(
            threshold=self.threshold, kappa=kappa))
        #: missing snapshots in a row per electrical channel, and whether any is in a gap
        self._gap = np.zeros(len(det), np.int64)
        self._gaps = False
        #: fills of a longer gap are flagged PSEUDO: MAX_FILL_S, at least the window
        self.max_fill = max(self.hist_len, math.ceil(MAX_FILL_S * self.cfg.rate_hz - 1e-9))
        self._last_other = np.full(self.other_idx.size, np.nan)
        self._nan_m = np.full(self.m, np.nan)  # copied per snapshot (cheaper than np.full)

    def _init_predictor(self, predictor: Predictor | None) -> None:
        """The predictor and the per-snapshot scratch (no allocation on the steady path).

        By default the ONNX model with its input and output bound to preallocated buffers
        (IO binding); the prepared windows are written straight into the bound input. A
        callable (the bench's PyTorch peer) gets the same float32 (n, T-1, 1) array.
        """
        n_det = self.det_idx.size
        self._predict: Predictor | None = predictor
        self._bound: BoundModel | None = None
        if predictor is None and n_det:
            self._bound = self.model.bind(n_det)
            self._xn = self._bound.input
        else:
            self._xn = np.zeros((n_det, self.hist_len, 1), np.float32)
        self._c = np.empty(n_det)
        self._s = np.empty(n_det)
        self._dev = np.empty((n_det, self.hist_len))
        self._floor = np.empty(n_det)
        self._pred = np.empty(n_det)
        self._sigma_meas = np.empty(n_det)
        self._no_missing = np.zeros(n_det, bool)

    def _init_pv(self, pv_predictor: Predictor | None) -> None:
        """PV: weather channel indices per plant in the forecaster's feature order, the
        forecaster's card terms and its input ring."""
        from models.features import PV_FEATURES, minmax

        cfg = self.cfg
        self.n_plants = len(cfg.plants)
        self.rating = np.array([p.rating_mw for p in cfg.plants])
        wx = np.full((self.n_plants, len(PV_FEATURES)), -1, dtype=np.int64)
        for i, plant in enumerate(cfg.plants):
            for j, q in enumerate(PV_FEATURES):
                name = f"{plant.weather}.{q}" if plant.weather else ""
                if name in cfg.channel_index:
                    wx[i, j] = cfg.channel_index[name]
        self.wx_idx = wx
        self.pv_ok = (wx >= 0).all(axis=1)
        self._has_coords = np.array([p.latitude is not None and p.longitude is not None
                                     for p in cfg.plants], bool)
        self._plant_lat = np.array([p.latitude or 0.0 for p in cfg.plants], np.float64)
        self._plant_lon = np.array([p.longitude or 0.0 for p in cfg.plants], np.float64)
        self.pv_fallback = np.zeros(self.n_plants, bool)
        self._pv_predict: Predictor | None = None
        self._minmax = minmax
        window, n_inputs = 10, len(PV_FEATURES)
        if self.pv_model is not None:
            window, n_inputs = self._init_pv_model(self.pv_model, pv_predictor)
        self._pv_ring = np.zeros((self.n_plants, window, n_inputs))
        self._pv_last_t: float | None = None
        self._pv_out = np.zeros(self.n_plants)
        self._pv_sig = np.zeros(self.n_plants)
        #: the PV forecaster's work for the last stride sample, in pieces (see
        #: :meth:`_pv_step`): "" none, "sample" (weather and time taken), "forecast"
        #: (the sample is in the ring, the forecaster's run outstanding)
        self._pv_job = ""
        self._pv_sample: tuple[np.ndarray, float, bool, np.ndarray | None] | None = None
        #: per plant: when its station last sent a whole sample, that sample, and the
        #: age of the weather in the last sample (see _persist_weather)
        self._wx_fresh_t = np.full(self.n_plants, -np.inf)
        self._wx_fresh = np.full((self.n_plants, self.wx_idx.shape[1]), np.nan)
        self._pv_age = np.zeros(self.n_plants)
        #: a PV piece has had its turn since the last process() (see _pv_step)
        self._pv_turn = False
        self._pv_started = False  # a forecast has been made
        self._pv_prev_now = -math.inf  # the last snapshot's time (see _pv_step)

    def _init_pv_model(self, pv_model: OnnxModel, pv_predictor: Predictor | None
                       ) -> tuple[int, int]:
        """The forecaster card's ranges, stride, σ model and inputs; returns (window,
        number of inputs per sample)."""
        from models.errors import ModelError
        from models.features import PV_FEATURES
        from models.pv_features import PvInputs, needs_sun

        plants = self.cfg.plants
        pc = pv_model.card
        norm = pc.normalisation
        self.pv_lo = np.asarray(norm["min"], dtype=np.float64)
        self.pv_hi = np.asarray(norm["max"], dtype=np.float64)
        self.pv_stride_s = float(pc.extra.get("stride_s", 20.0))
        self.pv_window = pc.window
        sig = pc.extra.get("sigma_pu", {"abs": 0.03, "rel": 0.1})
        self.pv_sig_a = float(sig["abs"])
        self.pv_sig_b = float(sig["rel"])
        # sigma = a + b g(p): g(p) = p ("linear", the default) or p (1 - p)
        self.pv_sig_quad = sig.get("form", "linear") == "p(1-p)"
        self.pv_max = float(pc.extra.get("max_pu", 1.0))
        self._pv_predict = pv_predictor or pv_model.run
        # the card's inputs: the weather values, then the derived (sun) terms
        features = tuple(norm.get("features", PV_FEATURES))
        if len(features) != len(self.pv_lo):
            raise QualityError(f"{pv_model.path}: card lists {len(features)} PV "
                               f"inputs but {len(self.pv_lo)} normalisation ranges")
        # a plant without coordinates cannot get the sun terms: weak nameplate guess
        has_coords = self._has_coords
        if needs_sun(features):
            self.pv_fallback = ~has_coords
            self.pv_ok &= has_coords
        try:
            self._pv_inputs = PvInputs(
                features,
                [p.latitude if p.latitude is not None else 0.0 for p in plants],
                [p.longitude if p.longitude is not None else 0.0 for p in plants])
        except ModelError as exc:
            raise QualityError(f"quality stage: {exc}") from exc
        self.pv_n_inputs = len(features)
        if pv_predictor is None:  # ONNX Runtime's first run allocates: now, not live
            pv_model.run(np.zeros((len(plants), self.pv_window, self.pv_n_inputs),
                                  np.float32))
        return self.pv_window, self.pv_n_inputs

    @property
    def predictor_input(self) -> np.ndarray:
        """The float32 (n_electrical, T-1, 1) windows the predictor read for the last
        snapshot (normalised; the buffer is reused: copy it to keep it)."""
        return self._xn

    @property
    def predictor_bound(self) -> BoundModel | None:
        """The IO-bound ONNX predictor (None when a callable predictor was given)."""
        return self._bound

    # ------------------------------------------------------------------ per snapshot

    def process(self, values: np.ndarray, flags: np.ndarray, now: float) -> QualityResult:
        clock = time.perf_counter
        t0 = clock()
        x = np.asarray(values, dtype=np.float64)
        fin = np.asarray(flags, dtype=np.uint32)
        if x.shape != (self.m,) or fin.shape != (self.m,):
            raise QualityError(f"snapshot has {x.shape} values / {fin.shape} flags, "
                               f"config has {self.m} channels")
        # healthy snapshot (every value finite, no input flag): no masks needed below.
        # A non-finite sum means a NaN/inf somewhere (or an overflow: the general path
        # is taken, which is only slower)
        healthy = math.isfinite(np.add.reduce(x)) and not np.bitwise_or.reduce(fin)
        if healthy:
            missing = None
        else:
            missing = ~np.isfinite(x)
            missing |= (fin & _MISSING) != 0
        out = x.copy()
        out_flags = fin.copy()

        # 1. the prediction (normally computed ahead, right after the previous snapshot)
        di = self._di
        xd = x[di]
        t1 = t2 = clock()
        if self._queued:
            self._run_batch()
        if self._remote_busy():
            self._collect(wait=True)
            if not self._ahead:  # late: predict here, drop its answer when it comes
                self._late()
        if not self._ahead:
            self._predict_next()
            t2 = clock()
        self._ahead = False
        if self._pv_job and not self._pv_turn:  # no lookahead() since the last snapshot
            self._pv_piece()
        self._pv_turn = False
        pred, sigma_meas, s = self._pred, self._sigma_meas, self._s
        # 2. statistic, flags, replacement
        md = self._no_missing if missing is None else missing[di]
        res = self.detector.step(xd, md, pred, sigma_meas, s,
                                 self._returning(md) if self._gaps else None)
        out[di] = res.values
        if missing is None:
            out_flags[di] = res.flags
            if self._gaps:  # a gap just ended
                self._gap[:] = 0
                self._gaps = False
        else:
            out_flags[di] = (fin[di] & _NOT_MISSING) | res.flags
            self._count_gaps(missing[di], out_flags)
        z = self._nan_m.copy()
        z[di] = res.z
        # 3. weather / other channels: hold the last value over gaps
        oi = self._oi
        if self.other_idx.size:
            if missing is None:
                self._last_other = x[oi].copy()
            else:
                xo = x[oi]
                gap = missing[oi]
                if gap.any():
                    held = np.where(gap, self._last_other, xo)
                    filled = gap & np.isfinite(held)
                    out[oi] = held
                    out_flags[self.other_idx[filled]] |= _FILLED
                    self._last_other = np.where(np.isfinite(held), held, self._last_other)
                else:
                    self._last_other = xo.copy()
        t3 = clock()
        # 4. PV pseudo-measurements
        self._pv_step(out, now, missing)
        t4 = clock()
        return QualityResult(
            values=out, flags=out_flags, pv_mw=self._pv_out.copy(),
            pv_sigma_mw=self._pv_sig.copy(),
            timings={"prepare_s": t1 - t0, "predict_s": t2 - t1, "detect_s": t3 - t2,
                     "pv_s": t4 - t3, "total_s": t4 - t0},  # predict_s: 0 when done ahead
            z=z,
        )

    def _returning(self, missing: np.ndarray) -> np.ndarray:
        """Detector rows back now after a gap whose fills were PSEUDO: their histories
        hold predictions only, and are re-based on the value back
        (:meth:`TemporalDetector.step`)."""
        return np.flatnonzero((self._gap > self.max_fill) & ~missing)

    def _count_gaps(self, missing: np.ndarray, out_flags: np.ndarray) -> None:
        """Each electrical channel's run of missing snapshots; the fills of a run longer
        than :attr:`max_fill` snapshots get PSEUDO (see :data:`MAX_FILL_S`)."""
        gap = self._gap
        gap += 1
        gap[~missing] = 0
        self._gaps = bool(gap.any())
        if self._gaps:
            long = gap > self.max_fill
            if long.any():
                rows = self.det_idx[long]
                filled = (out_flags[rows] & _CORRECTED) != 0  # (no prediction: left NaN)
                out_flags[rows[filled]] |= _PSEUDO

    def new_regime(self) -> None:
        """The next snapshot starts a new regime: the feeder's topology changed (a
        reported switching or an identified one), so its flows may all jump at once. The
        detector does not take that jump for bad data; it re-bases its histories on that
        snapshot (:meth:`TemporalDetector.rebase`). Call it before :meth:`process`."""
        self.detector.rebase()

    def lookahead(self) -> None:
        """Prepare the next snapshot from what is known now: the predictor's output for
        every electrical channel (from the rings as the last :meth:`process` left them)
        and an outstanding PV forecast. Call it after the current snapshot was handed on;
        calling it twice, or never, changes nothing but when the work is done."""
        t0 = time.perf_counter()
        if self._pv_job and not self._pv_turn:
            self._pv_piece()
        self._pv_turn = True
        if self._stale:  # a late answer may have come meanwhile: drop it
            self._collect(wait=False)
        if (not self._ahead and not self._queued and not self._remote_busy()
                and not self._request_remote()):
            if self._batcher is not None:
                self._prepare_next()
                self._queued = True
                self._batcher.submit(self)
            else:
                self._predict_next()
                self._ahead = True
        self.lookahead_s = time.perf_counter() - t0

    @property
    def predictor_rows(self) -> np.ndarray:
        """The prepared windows of the next snapshot (what the batcher sends)."""
        return self._xn

    def take_batched(self, yn: np.ndarray | None) -> None:
        """The batcher's output rows for this stage (None: the call failed; the next
        :meth:`process` predicts for itself)."""
        self._queued = False
        if yn is not None:
            self._finish_next(yn)
            self._ahead = True

    def _run_batch(self) -> None:
        """This stage's windows still wait: run the batch now (every stage in it gets
        its rows). A failed call leaves this stage to predict for itself, which reports
        the predictor's error if it fails again."""
        assert self._batcher is not None
        try:
            self._batcher.run()
        except Exception:  # see the docstring: not swallowed
            self._queued = False

    def _remote_busy(self) -> bool:
        return self.remote is not None and self.remote.pending

    def _request_remote(self) -> bool:
        """Send the next windows to the predictor process; False: predict here."""
        if self.remote is None:
            return False
        self._prepare_next()
        try:
            self.remote.request(self._xn)
        except QualityError as exc:
            self._drop_remote(str(exc))
            return False
        return True

    def collect(self) -> None:
        """Take the predictor process's answer if it has come (the gateway's reader
        callback on :attr:`remote`'s socket): the look-ahead is then complete."""
        if self._remote_busy():
            self._collect(wait=False)

    def _collect(self, *, wait: bool) -> None:
        remote = self.remote
        assert remote is not None
        yn = self._yn
        try:
            got = remote.wait(yn, 0.0 if self._stale else LATE_WAIT_S) if wait \
                else remote.poll(yn)
        except QualityError as exc:
            self._drop_remote(str(exc))
            return
        if not got:
            silent = remote.silent_for(time.monotonic())
            if silent > REMOTE_TIMEOUT_S:
                self._drop_remote(f"predictor process silent for {silent * 1e3:.0f} ms")
            return
        if self._stale:  # the answer to a request predicted in-process meanwhile
            self._stale = False
            return
        self._finish_next(yn)
        self._ahead = True

    def _late(self) -> None:
        """The child's answer did not come in time: it is stale from now on (when the
        child is still there), and the caller predicts in-process."""
        if self._remote_busy():
            self._stale = True
            self.late_answers += 1

    def _drop_remote(self, reason: str) -> None:
        """Give up the predictor process: predict in this process from now on."""
        if self.remote is None:
            return
        self._stale = False
        if self.on_remote_lost is not None:
            self.on_remote_lost(reason)  # while its socket is open (to unregister it)
        remote, self.remote = self.remote, None
        remote.close()

    def start_remote(self) -> PredictorProcess:
        """A new predictor process for this stage, ready (blocks while it loads the
        model; reads no state of the stage that changes, so another thread may call it).
        QualityError when it cannot start or the stage was built without one."""
        if self._remote_args is None:
            raise QualityError("quality stage: built without predictor_process")
        return PredictorProcess(*self._remote_args)

    def adopt_remote(self, remote: PredictorProcess) -> bool:
        """Use ``remote`` (from :meth:`start_remote`) for the look-aheads from now on,
        after the previous one was dropped. False, and nothing changed, when the stage
        still has one or was closed (the caller closes ``remote``)."""
        if self.remote is not None or self._closed:
            return False
        self.remote = remote
        self.remote_error = None
        return True

    def close(self) -> None:
        """Stop the predictor process (if any); no other is adopted after this."""
        self._closed = True
        remote, self.remote = self.remote, None
        if remote is not None:
            remote.close()

    def _prepare_next(self) -> None:
        """The predictor's input for the next snapshot, one window per electrical channel
        (batch = channels): x_n = (w - mean(w)) / s, s = max(std(w), sigma_meas(mean(w)))
        (``models.features``); :meth:`_finish_next` turns f(x_n) into x̂."""
        win = self.detector.windows()
        c, s, dev = self._c, self._s, self._dev
        if self._fused:  # the compiled pass, its sums NumPy's (kernels.sums_match)
            assert self._kernels is not None
            self._kernels.prepare(win, c, dev, s, self._rel_k, self._abs_k, self._xn)
            return
        # c = mean(w)
        np.add.reduce(win, axis=1, out=c)
        np.divide(c, win.shape[1], out=c)
        np.subtract(win, c[:, None], out=dev)
        # s = max(sqrt(mean((w - c)^2)), sigma_meas(c)),  sigma_meas(c) = max(rel |c|, abs) / k
        np.einsum("ij,ij->i", dev, dev, out=s)
        if self._kernels is not None:  # the rest in one compiled pass
            self._kernels.normalise(dev, c, s, self._rel_k, self._abs_k, self._xn)
            return
        s *= 1.0 / dev.shape[1]
        np.sqrt(s, out=s)
        floor = self._floor
        np.abs(c, out=floor)
        floor *= self._rel_k
        np.maximum(floor, self._abs_k, out=floor)
        np.maximum(s, floor, out=s)
        xn = self._xn
        np.divide(dev, s[:, None], out=xn[:, :, 0])  # float64 maths, float32 result

    def _predict_next(self) -> None:
        """:meth:`_prepare_next`, the predictor in this process, :meth:`_finish_next`."""
        self._prepare_next()
        if self._bound is not None:
            yn = self._bound()
        elif self._predict is not None:
            yn = self._predict(self._xn)
        else:
            yn = self._yn
        self._finish_next(yn)

    def _finish_next(self, yn: np.ndarray) -> None:
        """x̂ = mean(w) + s f(x_n) from the network's output ``yn``, and sigma_meas(x̂),
        the detector's floor."""
        if self._kernels is not None:
            self._kernels.finish(self._s, np.asarray(yn).reshape(-1), self._c, self._rel_k,
                                 self._abs_k, self._pred, self._sigma_meas)
            return
        s, c = self._s, self._c
        # x̂ = mean(w) + s * f(x_n)
        pred = self._pred
        np.multiply(s, np.asarray(yn).reshape(-1), out=pred)
        pred += c
        sigma_meas = self._sigma_meas
        np.abs(pred, out=sigma_meas)
        sigma_meas *= self._rel_k
        np.maximum(sigma_meas, self._abs_k, out=sigma_meas)

    def _pv_step(self, cleaned: np.ndarray, now: float, missing: np.ndarray | None
                 ) -> None:
        """Take a PV stride sample when one is due. On the snapshot's own path only its
        weather values are kept; the model inputs, then the forecaster's run follow as
        two pieces (:meth:`_pv_piece`), one per interval between snapshots: in
        :meth:`lookahead` when it is called (the gateway: after the snapshot was handed
        on, where they overlap the estimator's solve; 0.4-0.6 ms at once had sat on the
        deadline path every stride), else at the start of the next :meth:`process`. So
        the forecast from the sample of snapshot t is reported from snapshot t+2 on,
        online and offline alike. The very first sample is forecast at once, and so is
        every sample of a snapshot :data:`PV_INLINE_PERIOD_S` or more after the one
        before (there is time, and two periods would make the forecast stale)."""
        if self._pv_predict is None or self.n_plants == 0:
            return
        slow = now - self._pv_prev_now >= PV_INLINE_PERIOD_S
        self._pv_prev_now = now
        if self._pv_last_t is not None and now - self._pv_last_t < self.pv_stride_s:
            return
        if self._pv_job:  # the last sample's pieces never got their turn: do them now
            self._pv_finish()
        weather = np.where(self.wx_idx >= 0, cleaned[np.maximum(self.wx_idx, 0)], np.nan)
        last = self._pv_last_t
        restart = last is None or now - last > 10 * self.pv_stride_s
        # keep the sampling grid (step by whole strides), unless starting or restarting
        # after a long gap
        self._pv_last_t = now if last is None or restart else (
            last + self.pv_stride_s * np.floor((now - last) / self.pv_stride_s))
        held: np.ndarray | None = None  # plants whose station's irradiance is silent now
        if missing is not None:
            irr = self.wx_idx[:, :3]  # ghi, dni, dhi; the others are held as they are
            held = np.asarray((missing[np.maximum(irr, 0)] & (irr >= 0)).any(axis=1))
        self._pv_sample = (weather, now, restart, held)
        self._pv_job = "sample"
        if slow or not self._pv_started:
            self._pv_finish()

    def _pv_piece(self) -> None:
        """One piece of the outstanding PV work: the sample's model inputs (the sun terms
        at its time) into the ring, or the forecaster's run on the ring."""
        if self._pv_job == "sample":
            self._pv_take_sample()
        else:
            self._pv_forecast()

    def _pv_finish(self) -> None:
        """Every outstanding PV piece, now."""
        while self._pv_job:
            self._pv_piece()

    def _pv_take_sample(self) -> None:
        assert self._pv_sample is not None
        weather, now, restart, held = self._pv_sample
        self._pv_sample = None
        self._pv_job = "forecast"
        weather = self._persist_weather(weather, now, held)
        sample = self._pv_inputs(weather, now)  # weather (+ sun terms at `now`)
        if self.pv_fallback.any():  # plants the forecaster cannot serve: the nameplate guess
            fb = self.pv_fallback
            self._pv_out[fb] = nameplate_mw(weather[fb, 0], self.rating[fb])
            self._pv_sig[fb] = NAMEPLATE_SIGMA * self.rating[fb]
        if restart:
            self._pv_ring[:] = sample[:, None, :]
        else:
            self._pv_ring[:, :-1] = self._pv_ring[:, 1:]
            self._pv_ring[:, -1] = sample

    def _persist_weather(self, weather: np.ndarray, now: float, held: np.ndarray | None
                         ) -> np.ndarray:
        """The sample's weather with each silent station's replaced by clear-sky-index
        persistence: its last whole sample, irradiance scaled by the sun's cos zenith now
        over then (zero once the sun has set), the rest held. Holding the irradiance
        itself kept a noon value into the night. Sets the plants' weather age, which
        widens their forecast's sigma (:data:`STALE_WX_SIGMA`)."""
        stale = np.zeros(self.n_plants, bool) if held is None else held & self._has_coords
        fresh = ~stale
        self._wx_fresh_t[fresh] = now
        self._wx_fresh[fresh] = weather[fresh]
        if not stale.any():
            if self._pv_age.any():
                self._pv_age[:] = 0.0
            return weather
        from models.solar import solar_position

        then = np.where(np.isfinite(self._wx_fresh_t), self._wx_fresh_t, now)
        cz = solar_position(np.vstack([np.full(self.n_plants, now), then]),
                            self._plant_lat, self._plant_lon).cos_zenith  # now, then
        self._pv_age = np.where(stale, now - self._wx_fresh_t, 0.0)
        ratio = np.clip(cz[0], 0.0, None) / np.maximum(cz[1], 0.05)
        out = weather.copy()
        last = self._wx_fresh
        for j, gain in ((0, ratio), (1, (cz[0] > 0).astype(np.float64)), (2, ratio)):
            out[stale, j] = last[stale, j] * gain[stale]  # ghi, dni, dhi
        out[stale, 3:] = last[stale, 3:]
        return out

    def _pv_forecast(self) -> None:
        """Run the PV forecaster on the sample rings (see :meth:`_pv_step`)."""
        assert self._pv_predict is not None
        self._pv_job = ""
        ok = self.pv_ok & np.isfinite(self._pv_ring).all(axis=(1, 2))
        if not ok.any():
            return
        self._pv_started = True
        xw = self._minmax(self._pv_ring[ok], self.pv_lo, self.pv_hi)
        pu = np.clip(np.asarray(self._pv_predict(xw), dtype=np.float64).reshape(-1),
                     0.0, self.pv_max)
        # σ = a + b g(p) (per unit of rating), g(p) = p or p (1 - p): the card's error model
        sig = self.pv_sig_a + self.pv_sig_b * (pu * (1.0 - pu) if self.pv_sig_quad else pu)
        age = self._pv_age[ok]
        if age.any():  # a silent station: the error grows to STALE_WX_SIGMA in a minute
            sig = np.hypot(sig, STALE_WX_SIGMA * -np.expm1(-age / STALE_WX_TAU_S))
        dark = self._pv_ring[ok, -1, 0] <= 1.0  # no irradiance: output is exactly 0
        pu = np.where(dark, 0.0, pu)
        sig = np.where(dark, 1e-3, sig)
        self._pv_out[ok] = pu * self.rating[ok]
        self._pv_sig[ok] = sig * self.rating[ok]


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """``idx`` as a slice when it is one contiguous block (indexing gives views, no
    copies), else ``idx`` itself."""
    n = idx.size
    if n and bool((idx == np.arange(idx[0], idx[0] + n)).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    return idx
