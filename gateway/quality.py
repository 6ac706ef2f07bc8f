"""The data-quality stage: detect ▸ correct ▸ fill, plus the PV pseudo-measurements.

Per snapshot (``QualityStage.process``):

1. Every electrical channel (PMU, SCADA) keeps a ring of its last T-1 = 9 *cleaned*
   values. All rings are normalised per window (``models.features.normalise_windows``)
   and go through the measurement predictor (bidirectional LSTM, ONNX) in ONE batched
   onnxruntime call: batch = channels, sequence = 9.
2. The temporal-correlation statistic ``z = |x - x̂| / σ`` with a robust running spread
   (``models.detector``) flags BAD values; BAD values are replaced by the prediction
   (BAD|CORRECTED) and missing ones filled (MISSING|CORRECTED).
3. Weather channels are not tested (irradiance legitimately jumps with clouds); a
   missing weather value holds the last one (MISSING|CORRECTED).
4. Each PV plant's weather channels are sampled every ``stride_s`` (model card) into a
   10-sample window; the PV forecaster (BiLSTM, ONNX) turns it into the plant's output
   per unit of rating: ``pv_mw`` and ``pv_sigma_mw`` are the estimator's PSEUDO
   measurements (σ from the card's held-out error model: σ = a + b·p).

``now`` is passed in (seconds); nothing here reads the clock except for the timings.
No torch: the predictor can be swapped for a callable (the bench's PyTorch-eager peer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gateway.errors import GatewayError
from gateway.snapshot import Flag

if TYPE_CHECKING:
    from gateway.config import TwinConfig

Predictor = Callable[[np.ndarray], np.ndarray]
_MISSING = np.uint32(Flag.MISSING)
_NOT_MISSING = np.uint32(~np.uint32(Flag.MISSING))
_FILLED = np.uint32(Flag.MISSING | Flag.CORRECTED)


class QualityError(GatewayError):
    """The quality stage cannot be set up (models missing, config and card disagree)."""


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
                 pv_predictor: Predictor | None = None) -> None:
        from models.detector import DetectorParams, TemporalDetector
        from models.errors import ModelError
        from models.features import PV_FEATURES
        from models.runtime import PREDICTOR, PV, load_model

        self.cfg = cfg
        m = len(cfg.channels)
        self.m = m
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
        self._predict: Predictor = predictor or self.model.run

        det = [c for c in cfg.channels if c.electrical]
        self.det_idx = np.array([c.index for c in det], dtype=np.int64)
        self._rel = np.array([c.rel for c in det])
        self._abs = np.array([c.abs for c in det])
        k_div = np.array([c.k for c in det])
        # sigma_meas(x) = max(rel |x|, abs) / k  (Channel.sigma_at), floored at 1e-12
        self._rel_k = self._rel / k_div
        self._abs_k = np.maximum(self._abs / k_div, 1e-12)
        self.other_idx = np.array([c.index for c in cfg.channels if not c.electrical],
                                  dtype=np.int64)
        # a contiguous block of electrical channels is indexed by a slice (views, no copies)
        n_det = self.det_idx.size
        contiguous = n_det > 0 and bool(
            (self.det_idx == np.arange(self.det_idx[0], self.det_idx[0] + n_det)).all())
        self._di: slice | np.ndarray = (
            slice(int(self.det_idx[0]), int(self.det_idx[0]) + n_det) if contiguous
            else self.det_idx)
        self.detector = TemporalDetector(len(det), self.hist_len, DetectorParams(
            threshold=self.threshold, kappa=float(card.extra.get("kappa", 0.0))))
        self._last_other = np.full(self.other_idx.size, np.nan)

        # PV: weather channel indices per plant in the forecaster's feature order
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
        self._pv_predict: Predictor | None = None
        if self.pv_model is not None:
            pc = self.pv_model.card
            norm = pc.normalisation
            self.pv_lo = np.asarray(norm["min"], dtype=np.float64)
            self.pv_hi = np.asarray(norm["max"], dtype=np.float64)
            self.pv_stride_s = float(pc.extra.get("stride_s", 20.0))
            self.pv_window = pc.window
            sig = pc.extra.get("sigma_pu", {"abs": 0.03, "rel": 0.1})
            self.pv_sig_a = float(sig["abs"])
            self.pv_sig_b = float(sig["rel"])
            self.pv_max = float(pc.extra.get("max_pu", 1.0))
            self._pv_predict = pv_predictor or self.pv_model.run
        self._pv_ring = np.zeros((self.n_plants, getattr(self, "pv_window", 10),
                                  len(PV_FEATURES)))
        self._pv_last_t: float | None = None
        self._pv_out = np.zeros(self.n_plants)
        self._pv_sig = np.zeros(self.n_plants)

    # ------------------------------------------------------------------ per snapshot

    def process(self, values: np.ndarray, flags: np.ndarray, now: float) -> QualityResult:
        clock = time.perf_counter
        t0 = clock()
        x = np.asarray(values, dtype=np.float64)
        fin = np.asarray(flags, dtype=np.uint32)
        if x.shape != (self.m,) or fin.shape != (self.m,):
            raise QualityError(f"snapshot has {x.shape} values / {fin.shape} flags, "
                               f"config has {self.m} channels")
        missing = ~np.isfinite(x)
        if fin.any():
            missing |= (fin & _MISSING) != 0
        out = x.copy()
        out_flags = fin.copy()

        # 1. one batched prediction for every electrical channel (batch = channels):
        #    x_n = (w - mean(w)) / max(std(w), sigma_meas(mean(w)))  (models.features)
        di = self._di
        xd = x[di]
        win = self.detector.windows()
        c = win.mean(axis=1)
        dev = win - c[:, None]
        s = np.sqrt(np.einsum("ij,ij->i", dev, dev) * (1.0 / dev.shape[1]))
        s = np.maximum(s, np.maximum(self._rel_k * np.abs(c), self._abs_k))
        xn = (dev / s[:, None]).astype(np.float32)[:, :, None]
        t1 = clock()
        yn = self._predict(xn)
        t2 = clock()
        # x̂ = mean(w) + s * f(x_n)
        pred = c + s * np.asarray(yn, dtype=np.float64).reshape(-1)
        sigma_meas = np.maximum(self._rel_k * np.abs(pred), self._abs_k)
        # 2. statistic, flags, replacement
        res = self.detector.step(xd, missing[di], pred, sigma_meas, s)
        out[di] = res.values
        out_flags[di] = (fin[di] & _NOT_MISSING) | res.flags
        z = np.full(self.m, np.nan)
        z[di] = res.z
        # 3. weather / other channels: hold the last value over gaps
        oi = self.other_idx
        if oi.size:
            xo = x[oi]
            gap = missing[oi]
            if gap.any():
                held = np.where(gap, self._last_other, xo)
                filled = gap & np.isfinite(held)
                out[oi] = held
                out_flags[oi[filled]] |= _FILLED
                self._last_other = np.where(np.isfinite(held), held, self._last_other)
            else:
                self._last_other = xo
        t3 = clock()
        # 4. PV pseudo-measurements
        self._pv_step(out, now)
        t4 = clock()
        return QualityResult(
            values=out, flags=out_flags, pv_mw=self._pv_out.copy(),
            pv_sigma_mw=self._pv_sig.copy(),
            timings={"prepare_s": t1 - t0, "predict_s": t2 - t1, "detect_s": t3 - t2,
                     "pv_s": t4 - t3, "total_s": t4 - t0},
            z=z,
        )

    def _pv_step(self, cleaned: np.ndarray, now: float) -> None:
        if self._pv_predict is None or self.n_plants == 0:
            return
        if self._pv_last_t is not None and now - self._pv_last_t < self.pv_stride_s:
            return
        from models.features import minmax

        sample = np.where(self.wx_idx >= 0, cleaned[np.maximum(self.wx_idx, 0)], np.nan)
        if self._pv_last_t is None or now - self._pv_last_t > 10 * self.pv_stride_s:
            self._pv_ring[:] = sample[:, None, :]  # start (or restart after a long gap)
            self._pv_last_t = now
        else:
            self._pv_ring[:, :-1] = self._pv_ring[:, 1:]
            self._pv_ring[:, -1] = sample
            # keep the sampling grid: step by whole strides
            self._pv_last_t += self.pv_stride_s * np.floor(
                (now - self._pv_last_t) / self.pv_stride_s)
        ok = self.pv_ok & np.isfinite(self._pv_ring).all(axis=(1, 2))
        if not ok.any():
            return
        xw = minmax(self._pv_ring[ok], self.pv_lo, self.pv_hi)
        pu = np.clip(np.asarray(self._pv_predict(xw), dtype=np.float64).reshape(-1),
                     0.0, self.pv_max)
        # σ = a + b p (per unit of rating), held-out error model from the card
        sig = self.pv_sig_a + self.pv_sig_b * pu
        dark = self._pv_ring[ok, -1, 0] <= 1.0  # no irradiance: output is exactly 0
        pu = np.where(dark, 0.0, pu)
        sig = np.where(dark, 1e-3, sig)
        self._pv_out[ok] = pu * self.rating[ok]
        self._pv_sig[ok] = sig * self.rating[ok]


def flag_names(bits: int) -> str:
    """'BAD|CORRECTED' for a flag word (for logs and the CLI)."""
    return str(Flag(bits)).replace("Flag.", "")
