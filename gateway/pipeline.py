"""The twin's pipeline, sans-IO: frame bytes and ``now`` in, what to hand off and store out.

:class:`Pipeline` is to the gateway what aioquic's ``QuicConnection`` is to its asyncio
protocol: it owns every decision and no socket, task or clock. The runner
(:class:`gateway.app.Gateway`) feeds it and carries out what it returns:

* :meth:`Pipeline.feed_frame` ``(stream, bytes, now)``: decode (the stream's
  :mod:`~gateway.codecs.decoders` decoder), per-stream statistics, alignment into
  snapshots; every snapshot published is cleaned by the quality stage and becomes
  outputs: a :class:`Handoff` (the cleaned snapshot and the PV pseudo-measurements, for
  the estimator), a :class:`StoreSnapshot` (raw + corrected rows) and, when the PV
  forecast changed, a :class:`StoreForecast`, then :data:`SETTLE`;
* :meth:`Pipeline.feed_frames` ``(stream, [bytes], [now])``: the frames one wake-up of a
  datagram socket read, with the outputs :meth:`feed_frame` would give one by one
  (decoded in one go; runs of in-sequence frames accounted and placed at once);
* :data:`SETTLE` marks the end of the urgent part: the runner hands the snapshots on
  first, then calls :meth:`Pipeline.settle`, which records the snapshots' telemetry and
  runs the quality stage's look-ahead (the next snapshot's prediction, which then overlaps
  the estimator's solve instead of delaying the handoff);
* :meth:`Pipeline.next_deadline` / :meth:`Pipeline.tick` ``(now)``: the aligner's lag
  window; the runner arms one timer for ``next_deadline()`` and calls ``tick`` when it
  fires (slots whose streams did not all arrive are published then);
* :meth:`Pipeline.feed_state` ``(state, received, met)``: an estimate came back; it is
  measured (end-to-end latency), kept as the latest state (``/state``) and stored
  (:class:`StoreState`).

The output lists are reused between calls (no allocation per frame): a caller reads a
returned list before it feeds the pipeline again. Stage timings use the ``perf`` counter
given at construction; the pipeline never reads the wall clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway import discipline as dsc
from gateway.aligner import Aligner
from gateway.codecs.decoders import C37Decoder, make_decoder
from gateway.errors import FrameError, GatewayError
from gateway.quality.passthrough import PassThroughQuality
from gateway.snapshot import Snapshot
from gateway.stats import StreamStats

if TYPE_CHECKING:
    from gateway.config import TwinConfig
    from gateway.handoff import StateMsg
    from gateway.telemetry import Telemetry

log = logging.getLogger("gridtwin.gateway")

_F8 = np.dtype(np.float64)
DECODE_SAMPLE = 8  # the decode-time histogram observes one frame in 8 (cheap hot path)
QUALITY_ERRORS_LOGGED = 5  # quality-stage failures logged and raised as events


# --------------------------------------------------------------------------- outputs

@dataclass(slots=True)
class Handoff:
    """Hand this cleaned snapshot and its PV pseudo-measurements to the estimator."""

    snapshot: Snapshot
    pv_mw: np.ndarray
    pv_sigma_mw: np.ndarray


@dataclass(slots=True)
class StoreSnapshot:
    """Store one snapshot raw (``raw_*``) and corrected (two historian records). The
    arrays are not touched again by the pipeline (the aligner and the quality stage hand
    out fresh ones per snapshot), so a writer thread may encode them later."""

    seq: int
    source_time: float
    arrival_time: float
    raw_values: np.ndarray
    raw_flags: np.ndarray
    values: np.ndarray
    flags: np.ndarray


@dataclass(slots=True)
class StoreLate:
    """Store one frame that arrived after its snapshot was published: a raw
    ``measurements`` row of its own (see :func:`gateway.discipline.late_row`)."""

    seq: int
    source_time: float
    arrival_time: float
    values: np.ndarray
    flags: np.ndarray


@dataclass(slots=True)
class StoreForecast:
    """Store the PV forecast (MW and its sigma per plant) current at snapshot ``seq``."""

    seq: int
    time: float
    pv_mw: dict[str, float]
    sigma_mw: dict[str, float]


@dataclass(slots=True)
class StoreState:
    """Store one estimate with the latencies measured for it."""

    state: StateMsg
    deadline_met: bool
    e2e_s: float
    handoff_s: float


@dataclass(slots=True)
class Event:
    """Raise an event (counted, and stored when there is a historian)."""

    kind: str
    source: str
    detail: dict[str, Any]


class Settle:
    """The outputs before this one are urgent; call :meth:`Pipeline.settle` after them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SETTLE"


SETTLE = Settle()

Output = Handoff | StoreSnapshot | StoreLate | StoreForecast | StoreState | Event | Settle


# --------------------------------------------------------------------------- pipeline

class Pipeline:
    """Decode ▸ statistics ▸ align ▸ clean, for the enabled streams of one twin config.

    ``quality`` is the quality stage (anything with ``process``/``lookahead``/
    ``lookahead_s`` like :class:`~gateway.quality.QualityStage`); it may be replaced
    while running (the runner starts it after building the pipeline); without one, values
    pass through. ``handoff`` and ``store`` say whether :class:`Handoff` and ``Store*``
    outputs are wanted (the runner turns them off when no estimator or historian runs).
    """

    #: switch states the latest estimate used (its label, gateway.topology; "normal": the
    #: config's), as the estimator reported it
    topology: str = "normal"

    def __init__(self, cfg: TwinConfig, telemetry: Telemetry, *, quality: Any = None,
                 perf: Callable[[], float] = time.perf_counter) -> None:
        streams = cfg.enabled_streams
        if not streams:
            raise GatewayError(f"config {cfg.name}: no enabled stream")
        self.decoders = {s.name: make_decoder(s) for s in streams}
        # C37.118 decoders: per-point STAT flags for the aligner, session events to raise
        self._c37 = {n: d for n, d in self.decoders.items() if isinstance(d, C37Decoder)}
        self.stats = {s.name: StreamStats(s.name) for s in streams}
        self.aligner = Aligner.for_config(cfg, [d.layout for d in self.decoders.values()])
        self.telemetry = telemetry
        telemetry.watch(self.stats, self.aligner.stats)
        self.passthrough = PassThroughQuality(cfg)
        self.quality: Any = quality if quality is not None else self.passthrough
        #: the sensor board (gateway.sensors) when edge sensors are configured: it fills
        #: the sensor channels of every snapshot published, before cleaning
        self.sensors: Any = None
        #: the switch status board (gateway.topology.StatusBoard) when switch statuses are
        #: mapped: fed every decoded frame, it gives each snapshot its statuses
        self.switches: Any = None
        #: when topology is tracked (gateway.topology.LiveTopology.stamp): stamps each
        #: snapshot published with its topology before cleaning; True when it changed,
        #: and the quality stage is then told that a new regime starts
        self.topology_of: Callable[[Snapshot], bool] | None = None
        self.perf = perf
        self.handoff = True
        self.store = True
        self.quality_errors = 0
        self._n_channels = len(cfg.channels)
        self._plant_names = [p.name for p in cfg.plants]
        self._bus_ids = [int(b) for b in cfg.network.bus_ids]
        self._out: list[Output] = []
        self._batch_out: list[Output] = []
        self._settle_out: list[Output] = []
        self._state_out: list[Output] = []
        self._cleaned: list[tuple[float, float, np.ndarray]] = []  # awaiting settle()
        self._last_seq = -1
        self._n_frames = 0
        self._last_pv: bytes | None = None
        self._last_state: tuple[StateMsg, float, bool, float, float] | None = None
        self._latest_json: dict[str, Any] | None = None

    # ------------------------------------------------------------------ frames
    def feed_frame(self, stream: str, data: bytes, now: float) -> list[Output]:
        """One frame of ``stream`` received at ``now``; the outputs of the snapshots it
        completed (empty for most frames; the list is reused by the next call)."""
        out = self._out
        if out:
            out.clear()
        st = self.stats[stream]
        self._n_frames += 1
        timed = self._n_frames % DECODE_SAMPLE == 0
        if timed:
            t0 = self.perf()
        c37 = self._c37.get(stream)
        try:
            dec = self.decoders[stream].decode(data, now)
        except FrameError as exc:
            st.decode_error()
            if st.decode_errors <= 10 or st.decode_errors % 1000 == 0:
                log.warning("stream %s: frame %d undecodable: %s (%d so far)", stream,
                            st.received + st.decode_errors, exc, st.decode_errors)
            if c37 is not None and c37.events:
                self._c37_events(stream, c37, out)
            return out
        if c37 is not None and c37.events:
            self._c37_events(stream, c37, out)
        if timed:
            self.telemetry.obs_decode[stream].append(self.perf() - t0)
        if dec is None:  # a configuration/header frame
            return out
        seq, ts, values = dec
        if self.switches is not None:
            self.switches.feed(stream, values, c37)
        snaps = dsc.ingest_frame(st, self.aligner, stream, seq, ts, values, now, len(data),
                                 flags=None if c37 is None else c37.flags)
        if dsc.pending(st, self.aligner):
            rows, events = dsc.drain(self.stats, self.aligner, stream, self._n_channels)
            if self.store:
                out.extend(StoreLate(*r) for r in rows)
            out.extend(Event(*e) for e in events)
        if snaps:
            for snap in snaps:
                self._clean(snap)
            out.append(SETTLE)
        return out

    def feed_frames(self, stream: str, frames: list[bytes],
                    nows: list[float]) -> list[Output]:
        """The frames of ``stream`` that one wake-up read, each with its arrival time:
        the outputs :meth:`feed_frame` gives for them one after the other, concatenated
        (the list is reused by the next call). GTNET-SKT frames are decoded in one go;
        runs of ordinary frames (in sequence, timestamps that agree: see
        :meth:`Aligner.plan_run`) are accounted and placed at once, any other frame
        takes :meth:`feed_frame`."""
        batch = self._batch_out
        batch.clear()
        codec = getattr(self.decoders[stream], "codec", None)
        n = len(frames)
        if codec is None or n < 2 or not codec.batchable(frames):
            for data, now in zip(frames, nows, strict=True):
                batch.extend(self.feed_frame(stream, data, now))
            return batch
        t0 = self.perf()
        seqs, tss, values = codec.parse_many(frames)
        per_frame = (self.perf() - t0) / n
        st, al, size = self.stats[stream], self.aligner, codec.size
        k = 0
        while k < n:
            m = 0
            if not dsc.pending(st, al) and st.dropped_by is al.stats.dropped_by_stream[stream]:
                m = st.run_length(seqs[k:], tss[k:])
            plan = al.plan_run(stream, seqs[k:], tss[k:], nows[k:], m) if m else None
            m = 0 if plan is None else len(plan.keys)
            if m == 0:
                batch.extend(self.feed_frame(stream, frames[k], nows[k]))
                k += 1
                continue
            assert plan is not None
            self._decode_samples(stream, m, per_frame)
            st.take_run(seqs[k:k + m], tss[k:k + m], nows[k:k + m], size)
            placed = al.place_run(plan, seqs[k:k + m], nows[k:k + m], values[k:k + m])
            fed = k  # the next frame whose switch statuses the board has not seen
            if placed:
                out = self._out
                out.clear()
                for j, snaps in placed:
                    fed = self._feed_statuses(stream, values, fed, k + j + 1)
                    for snap in snaps:
                        self._clean(snap)
                    out.append(SETTLE)
                batch.extend(out)
            self._feed_statuses(stream, values, fed, k + m)
            k += m
        return batch

    def _feed_statuses(self, stream: str, values: np.ndarray, start: int, end: int) -> int:
        """Give the status board rows ``start:end`` of a batch (in frame order, so each
        snapshot takes the statuses of the frames up to the one that completed it, as
        frame by frame); the next row it has not seen."""
        if self.switches is not None:
            for row in values[start:end]:
                self.switches.feed(stream, row)
        return end

    def _decode_samples(self, stream: str, m: int, per_frame: float) -> None:
        """Count ``m`` frames decoded in a batch; the decode-time histogram gets the
        batch's time per frame for the one frame in :data:`DECODE_SAMPLE` it samples."""
        n0 = self._n_frames
        self._n_frames = n0 + m
        samples = (n0 + m) // DECODE_SAMPLE - n0 // DECODE_SAMPLE
        if samples:
            self.telemetry.obs_decode[stream].extend([per_frame] * samples)

    @staticmethod
    def _c37_events(stream: str, dec: C37Decoder, out: list[Output]) -> None:
        """The C37.118 decoder's events (configuration accepted, remapped, changed or
        refused naming both PMU lists, STAT flag changes) as ``stream_<kind>`` events."""
        for ev in dec.take_events():
            out.append(Event(f"stream_{ev.kind}", stream, ev.detail()))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has work: the oldest pending slot's lag window expires."""
        return self.aligner.next_deadline()

    def tick(self, now: float) -> list[Output]:
        """Publish the slots whose lag window expired at ``now``; their outputs."""
        return self._publish(self.aligner.tick(now))

    def flush(self, now: float) -> list[Output]:
        """Publish every pending slot (shutdown); their outputs."""
        return self._publish(self.aligner.flush(now))

    def _publish(self, snaps: list[Snapshot]) -> list[Output]:
        out = self._out
        out.clear()
        if snaps:
            for snap in snaps:
                self._clean(snap)
            out.append(SETTLE)
        return out

    # ------------------------------------------------------------------ snapshots
    def _clean(self, snap: Snapshot) -> None:
        """Clean one snapshot; queue its handoff first, then what to store."""
        out = self._out
        if self.sensors is not None:
            self.sensors.fill(snap.values, snap.flags, snap.arrival_time)
        if self.switches is not None:
            snap.statuses = self.switches.take()
        if self.topology_of is not None and self.topology_of(snap):
            self.quality.new_regime()  # the switching's jump is no bad data
        t0 = self.perf()
        try:
            res = self.quality.process(snap.values, snap.flags, snap.source_time)
        except Exception as exc:  # keep ingesting: this snapshot goes on uncleaned
            self._quality_failed(exc, snap.seq, "quality stage failed on snapshot %d")
            res = self.passthrough.process(snap.values, snap.flags, snap.source_time)
        dq = self.perf() - t0
        flags = np.asarray(res.flags, np.uint32)
        pv = np.asarray(res.pv_mw, float)
        if self.handoff:
            vals = res.values
            # the quality stages hand out fresh 1-D float64 rows: skip the checks then
            new = Snapshot.trusted if (type(vals) is np.ndarray and vals.dtype == _F8
                                       and vals.shape == flags.shape
                                       and vals.ndim == 1) else Snapshot
            clean = new(snap.seq, snap.source_time, snap.arrival_time, vals, flags,
                        snap.published_time, snap.statuses, snap.topology)
            out.append(Handoff(clean, pv, np.asarray(res.pv_sigma_mw, float)))
        self._cleaned.append((dq, snap.published_time - snap.arrival_time, flags))
        self._last_seq = snap.seq
        if not self.store:
            return
        out.append(StoreSnapshot(snap.seq, snap.source_time, snap.arrival_time, snap.values,
                                 snap.flags, res.values, flags))
        pv_key = pv.tobytes()  # the forecast changes every stride, not every snapshot
        if pv.size and pv_key != self._last_pv and np.isfinite(pv).any():
            self._last_pv = pv_key
            names = self._plant_names
            out.append(StoreForecast(
                snap.seq, snap.source_time, dict(zip(names, pv.tolist(), strict=True)),
                dict(zip(names, np.asarray(res.pv_sigma_mw, float).tolist(), strict=True))))

    def settle(self) -> list[Output]:
        """After the handoff: count the snapshots just cleaned and prepare the next one
        (the quality stage's look-ahead, while the estimator solves). Events out."""
        out = self._settle_out
        out.clear()
        if not self._cleaned:
            return out
        tel = self.telemetry
        for dq, wait, flags in self._cleaned:
            tel.snapshot(dq, wait, flags)
        self._cleaned.clear()
        try:
            self.quality.lookahead()
        except Exception as exc:  # process() retries it; keep ingesting
            self._quality_failed(exc, self._last_seq,
                                 "quality look-ahead failed after snapshot %d", out)
            return out
        tel.lookahead_s.append(self.quality.lookahead_s)
        return out

    def _quality_failed(self, exc: Exception, seq: int, what: str,
                        out: list[Output] | None = None) -> None:
        self.quality_errors += 1
        if self.quality_errors <= QUALITY_ERRORS_LOGGED:
            log.exception(what, seq)
            (self._out if out is None else out).append(
                Event("quality_error", "quality", {"seq": seq, "error": str(exc)}))

    # ------------------------------------------------------------------ states
    def feed_state(self, st: StateMsg, received: float, met: bool) -> list[Output]:
        """An estimate came back at ``received`` (``met``: within its deadline): measure
        it, keep it as the latest state; what to store (the list is reused)."""
        out = self._state_out
        out.clear()
        e2e = received - st.arrival_time
        hand = st.recv_time - st.send_time
        self.telemetry.state(st, e2e, hand)
        self._last_state = (st, received, met, e2e, hand)
        self.topology = st.topology
        self._latest_json = None
        if self.store:
            out.append(StoreState(st, met, e2e, hand))
        return out

    def dropped_source(self, stream: str, host: str) -> None:
        """A frame from an address the stream does not allow (the transport dropped it)."""
        st = self.stats[stream]
        st.dropped()
        if st.dropped_source <= 3:
            log.warning("stream %s: dropped a frame from %s (not in the allowlist)", stream,
                        host)

    @property
    def last_state(self) -> tuple[StateMsg, float, bool, float, float] | None:
        """(state, received time, deadline met, e2e s, handoff s) of the newest estimate."""
        return self._last_state

    @property
    def latest_state(self) -> dict[str, Any] | None:
        """The latest estimate as the ``/state`` JSON object (built when asked for)."""
        if self._latest_json is None and self._last_state is not None:
            st, received, met, e2e, hand = self._last_state
            self._latest_json = {
                "seq": st.seq, "source_time": st.source_time, "received_time": received,
                "bus": self._bus_ids, "vm_pu": st.vm.tolist(), "va_rad": st.va.tolist(),
                "chi2": st.chi2 if math.isfinite(st.chi2) else None,
                "chi2_threshold": st.chi2_threshold if math.isfinite(st.chi2_threshold)
                else None,
                "iterations": st.iterations, "converged": st.converged,
                "deadline_met": met, "topology": self.topology,
                "latency_ms": {"e2e": e2e * 1e3, "handoff": hand * 1e3,
                               "estimate": st.t_solve_s * 1e3},
            }
        return self._latest_json
