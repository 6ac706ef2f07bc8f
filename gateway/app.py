"""The running twin: transports → codec → aligner → quality → estimator, historian, metrics.

:class:`Gateway` wires the pieces (the aiohttp ``web_runner`` split: the gateway is the
*runner* owning the pipeline, each transport a *site* owning one socket):

1. every enabled stream gets a transport (by URL scheme) whose frames land in
   :meth:`Gateway.on_frame` with the arrival time ``now``;
2. the stream's decoder (GTNET-SKT codec, or the C37.118 decoder built from the CFG-2
   the PMU sent) turns bytes into (sequence, timestamp, values); per-stream statistics
   classify the frame; the aligner groups frames into snapshots (wait-for-all with a
   lag window; its timer is a ``call_later`` re-armed for the oldest pending slot);
3. each snapshot is stored raw, cleaned by the quality stage (detect ▸ correct ▸ fill,
   PV pseudo-measurements), stored corrected and handed to the estimator process via the
   supervisor (newest wins, deadline monitor, restarts); then, while the estimator
   solves it, the quality stage prepares the next snapshot's prediction
   (``QualityStage.lookahead``; the BiLSTM itself runs in the predictor process), so only
   the detector's comparisons stand between a snapshot and its handoff;
4. states come back, are stored, exposed at ``/state`` and measured (end-to-end latency:
   first frame of the snapshot received → its state back in the gateway).

The pipeline runs on one asyncio loop in one thread; the historian writer commits from
its own thread and the estimator is another process, so nothing here blocks on I/O.

Hot-path budget (1 kHz: three frames and one snapshot per millisecond): per frame only
decode, statistics and alignment; per snapshot the quality stage's detection, the handoff,
the look-ahead prediction of the next snapshot and the bookkeeping that cannot wait
(latency samples, one historian put for raw + corrected, one for the state, whose
encoding the writer thread does). Metrics are batched: latency
samples, counters and the per-flag per-kind counts accumulate in plain Python/numpy and
are flushed into the Prometheus registry every :data:`METRICS_FLUSH_S` and before every
scrape; ``/state`` is built from the latest estimate when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.aligner import Aligner
from gateway.codecs.decoders import make_decoder
from gateway.config import TwinConfig
from gateway.discipline import ingest_frame
from gateway.errors import FrameError, GatewayError, HistorianError
from gateway.handoff import FailMsg, StateMsg
from gateway.metrics import FLAG_NAMES, Metrics, MetricsServer, observe_many
from gateway.quality.passthrough import PassThroughQuality
from gateway.snapshot import Snapshot
from gateway.stats import StreamStats
from gateway.transports.base import Transport, TransportSpec, open_transport

log = logging.getLogger("gridtwin.gateway")

N_FLAG_BITS = 9
FLAG_WORDS = 1 << N_FLAG_BITS  # flag words counted per meter kind (bits above: ignored)
DECODE_SAMPLE = 8  # the decode-time histogram observes one frame in 8 (cheap hot path)
LATENCY_SAMPLES = 200_000
METRICS_FLUSH_S = 1.0  # batched metrics reach the registry at least this often
#: BIT_OF_WORD[w, b] = 1 when flag word w has bit b (flag-word counts -> per-bit counts)
BIT_OF_WORD = ((np.arange(FLAG_WORDS)[:, None] >> np.arange(N_FLAG_BITS)) & 1).astype(
    np.int64)


# --------------------------------------------------------------------------- gateway

@dataclass
class GatewayOptions:
    config_ref: str = "ieee33"  # what the estimator process loads (name or path)
    historian_url: str | None = None  # None: the config's; "" or "none": no historian
    spool_dir: str | None = None
    metrics_bind: str | None = None  # None: the config's; "": no server
    quality: bool | None = None  # None: the config's
    models_dir: str | None = None
    estimator: bool = True
    estimator_method: str | None = None
    spare: bool = True
    realtime: bool = False  # the estimator process asks for real-time scheduling too
    url_overrides: dict[str, str] | None = None  # stream name -> URL (tests, demo)


class Gateway:
    def __init__(self, cfg: TwinConfig, opts: GatewayOptions | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.opts = opts or GatewayOptions()
        self.clock = clock
        self.streams = cfg.enabled_streams
        if not self.streams:
            raise GatewayError(f"config {cfg.name}: no enabled stream")
        self.decoders = {s.name: make_decoder(s) for s in self.streams}
        self.stats = {s.name: StreamStats(s.name) for s in self.streams}
        self.aligner = Aligner.for_config(cfg, [d.layout for d in self.decoders.values()])
        kinds: dict[str, int] = {}
        for c in cfg.channels:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
        self._kind_names = list(kinds)
        self._kind_code = np.array([self._kind_names.index(c.kind) for c in cfg.channels],
                                   np.intp)
        # flag words counted per (kind, word): index kind * FLAG_WORDS + (flags & 511)
        self._kind_base = (self._kind_code * FLAG_WORDS).astype(np.intp)
        self._flag_words = np.zeros(len(self._kind_names) * FLAG_WORDS, np.int64)
        self._flag_words_flushed = np.zeros_like(self._flag_words)
        self.metrics = Metrics(streams=lambda: self.stats.values(), clock=clock,
                               channel_kinds=kinds)
        self.metrics.info.info({"version": _version(), "config": cfg.name,
                                "digest": cfg.digest[:12]})
        self._decode_h = {s.name: self.metrics.decode.labels(s.name) for s in self.streams}
        # batched metrics (flushed by _flush_metrics)
        self._obs_decode: dict[str, list[float]] = {s.name: [] for s in self.streams}
        self._obs_quality: list[float] = []
        self._obs_e2e: list[float] = []
        self._obs_handoff: list[float] = []
        self._obs_estimate: list[float] = []
        self._hist_counts: dict[str, int] = {}
        self._hist_children: dict[str, Any] = {}
        self._flushed = {"snapshots": 0, "states": 0, "chi2_failures": 0}
        self._chi2_failures = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.metrics.before_scrape.append(self._flush_metrics)
        self.transports: dict[str, Transport] = {}
        self.server: MetricsServer | None = None
        self.supervisor: Any = None
        self.historian: Any = None
        self.quality: Any = None
        self._last_state: tuple[StateMsg, float, bool, float, float] | None = None
        self._latest_json: dict[str, Any] | None = None
        self.e2e_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.handoff_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.quality_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.lookahead_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.align_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.estimate_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.snapshots = 0
        self.states = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_pv: bytes | None = None
        self._plant_names = [p.name for p in cfg.plants]
        self._bus_ids = [int(b) for b in cfg.network.bus_ids]
        self._hist_errors = 0
        self._incomplete_seen = 0
        self._skips_seen: dict[str, int] = {}
        self._n_frames = 0
        self._quality_errors = 0
        self._passthrough = PassThroughQuality(cfg)
        self._commands: Any = None  # gateway.commands.CommandLink when enabled (start)
        self.started_at = 0.0
        self.closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.started_at = self.clock()
        cfg, o = self.cfg, self.opts
        self._start_historian()
        self._start_quality()
        if cfg.commands.enabled:
            from gateway.commands import Command, CommandLink

            def sent(cmd: Command) -> None:  # at most one per min_interval_s
                self.metrics.commands_sent.inc()
                self.event("command_sent", "commands", cmd.detail())

            def failed(cmd: Command, reason: str) -> None:
                self.metrics.command_errors.inc()
                if self._commands.errors <= 5:
                    log.warning("command for snapshot %d not sent: %s", cmd.seq, reason)

            self._commands = CommandLink(cfg, on_sent=sent, on_error=failed).open()
            log.warning("commands ENABLED: %s curtailment to %s", cfg.commands.policy,
                        cfg.commands.url)
        if o.estimator:
            from gateway.supervisor import EstimatorSupervisor

            self.supervisor = EstimatorSupervisor(
                o.config_ref, deadline_s=cfg.estimator.deadline_s, on_state=self.on_state,
                on_fail=self.on_fail, on_event=self.event_estimator,
                method=o.estimator_method, spare=o.spare, clock=self.clock,
                extra_args=["--realtime"] if o.realtime else [])
            await self.supervisor.start()
            self.metrics.estimator_up.set(1)
        bind = cfg.metrics_bind if o.metrics_bind is None else o.metrics_bind
        if bind:
            self.server = MetricsServer(self.metrics, state=lambda: self.latest_state,
                                        streams=self.stream_summary, summary=self.summary)
            addr = await self.server.start(bind)
            log.info("metrics on http://%s:%d/metrics", *addr)
        for s in self.streams:
            url = (o.url_overrides or {}).get(s.name, s.url)
            dec = self.decoders[s.name]
            spec = TransportSpec(s.name, url, s.format, dec.size, s.idcode, s.allow,
                                 s.rate_hz)
            t = open_transport(spec, self.on_frame, on_drop=self.on_drop,
                               on_event=self.event_stream, clock=self.clock)
            await t.start()
            self.transports[s.name] = t
        self._flush_timer = self._loop.call_later(METRICS_FLUSH_S, self._on_flush_timer)
        # everything built so far lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again (shorter gen-2 pauses on the loop)
        gc.freeze()
        self.event("gateway_started", "gateway", {
            "config": cfg.name, "streams": {n: _addr(t) for n, t in self.transports.items()},
            "metrics": list(self.server.address) if self.server and self.server.address
            else None, "commands": cfg.commands.url if cfg.commands.enabled else None})

    def _start_historian(self) -> None:
        o = self.opts
        url = self.cfg.historian_url if o.historian_url is None else o.historian_url
        if not url or url == "none":
            return
        from gateway.historian.writer import HistorianWriter, run_info_from_config

        self.historian = HistorianWriter(url, spool_dir=o.spool_dir, clock=self.clock)
        self.historian.start()
        if o.realtime:
            _demote_thread(getattr(self.historian, "_thread", None))
        self.historian.start_run(run_info_from_config(self.cfg))

    def _start_quality(self) -> None:
        enabled = self.cfg.quality.enabled if self.opts.quality is None else self.opts.quality
        if enabled:
            try:
                from gateway.quality.stage import QualityStage

                q = QualityStage(self.cfg, self.opts.models_dir,
                                 predictor_process=self.cfg.quality.predictor_process)
                self.quality = q
                if q.remote_error is not None:
                    self._predictor_lost(q.remote_error)
                if q.remote is not None:
                    assert self._loop is not None
                    self._loop.add_reader(q.remote.fileno(), q.collect)
                    q.on_remote_lost = self._predictor_lost
                return
            except GatewayError as exc:
                log.error("quality stage unavailable (%s): values pass through unchecked "
                          "and PV gets a weak nameplate pseudo-measurement", exc)
                self.event("quality_unavailable", "quality", {"error": str(exc)})
        self.quality = PassThroughQuality(self.cfg)

    def _predictor_lost(self, reason: str) -> None:
        """The predictor process broke: unregister its socket; the stage goes on
        in-process (same model), so this is an event, not an outage."""
        q = self.quality
        if q.remote is not None and self._loop is not None:
            self._loop.remove_reader(q.remote.fileno())
        log.error("predictor process lost (%s): predicting in the gateway from now on",
                  reason)
        self.event("predictor_process_lost", "quality", {"reason": reason})

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.transports.values():
            with contextlib.suppress(Exception):
                await t.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        for snap in self.aligner.flush(self.clock()):
            self.on_snapshot(snap)
        if self.quality.remote is not None:
            assert self._loop is not None
            self._loop.remove_reader(self.quality.remote.fileno())
            self.quality.close()
        if self.supervisor is not None:
            await self.supervisor.close()
            self.metrics.estimator_up.set(0)
        if self._commands is not None:
            self._commands.close()  # no state comes back any more: nothing to decide
        self._flush_metrics()
        self.event("gateway_stopped", "gateway", self.summary())
        if self.server is not None:
            await self.server.close()
        if self.historian is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.historian.close)

    # ------------------------------------------------------------------ hot path
    def on_frame(self, stream: str, data: bytes, host: str | None, now: float) -> None:
        st = self.stats[stream]
        self._n_frames += 1
        timed = self._n_frames % DECODE_SAMPLE == 0
        if timed:
            t0 = time.perf_counter()
        try:
            out = self.decoders[stream].decode(data, now)
        except FrameError as exc:
            st.decode_error()
            if st.decode_errors <= 10 or st.decode_errors % 1000 == 0:
                log.warning("stream %s: frame %d undecodable: %s (%d so far)", stream,
                            st.received + st.decode_errors, exc, st.decode_errors)
            return
        if timed:
            self._obs_decode[stream].append(time.perf_counter() - t0)
        if out is None:  # a configuration/header frame
            return
        seq, ts, values = out
        for snap in ingest_frame(self, stream, seq, ts, values, now, len(data)):
            self.on_snapshot(snap)
        if self._timer is None:  # an armed timer is never later than the oldest slot's
            self._arm_timer()

    def _arm_timer(self) -> None:
        due = self.aligner.next_deadline()
        if due is None or due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = due
        self._timer = self._loop.call_later(max(0.0, due - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        for snap in self.aligner.tick(self.clock()):
            self.on_snapshot(snap)
        self._arm_timer()

    def on_snapshot(self, snap: Snapshot) -> None:
        """Clean, hand on to the estimator, then store and count (off the critical path)."""
        t0 = time.perf_counter()
        try:
            res = self.quality.process(snap.values, snap.flags, snap.source_time)
        except Exception as exc:  # keep ingesting: this snapshot goes on uncleaned
            self._quality_errors += 1
            if self._quality_errors <= 5:
                log.exception("quality stage failed on snapshot %d", snap.seq)
                self.event("quality_error", "quality", {"seq": snap.seq, "error": str(exc)})
            res = self._passthrough.process(snap.values, snap.flags, snap.source_time)
        dq = time.perf_counter() - t0
        flags = np.asarray(res.flags, np.uint32)
        pv = np.asarray(res.pv_mw, float)
        if self.supervisor is not None:
            clean = Snapshot(snap.seq, snap.source_time, snap.arrival_time, res.values,
                             flags, snap.published_time)
            self.supervisor.submit(clean, pv, np.asarray(res.pv_sigma_mw, float))
        # -- bookkeeping after the handoff (metrics batched: see _flush_metrics)
        self.snapshots += 1
        self._obs_quality.append(dq)
        self.quality_s.append(dq)
        self.align_s.append(snap.published_time - snap.arrival_time)
        if flags.any():
            # count flag words per meter kind: one bincount; bits are split at flush time
            self._flag_words += np.bincount(self._kind_base + (flags & (FLAG_WORDS - 1)),
                                            minlength=self._flag_words.size)
        h = self.historian
        if h is not None:
            # raw and corrected rows in one put; the writer thread encodes them. The
            # arrays are not touched again here (the aligner and the quality stage hand
            # out fresh ones per snapshot)
            self._put(h.put_snapshot, "measurements", snap.seq, snap.source_time,
                      snap.arrival_time, snap.values, snap.flags, res.values, flags,
                      also="corrected")
            pv_key = pv.tobytes()  # the forecast changes every stride, not every snapshot
            if pv.size and pv_key != self._last_pv and np.isfinite(pv).any():
                self._last_pv = pv_key
                names = self._plant_names
                self._put(h.put_forecasts, "forecasts", snap.seq, snap.source_time,
                          dict(zip(names, pv.tolist(), strict=True)),
                          dict(zip(names, np.asarray(res.pv_sigma_mw, float).tolist(),
                                   strict=True)))
        # -- the next snapshot's prediction, while the estimator solves this one
        try:
            self.quality.lookahead()
        except Exception as exc:  # process() retries it; keep ingesting
            self._quality_errors += 1
            if self._quality_errors <= 5:
                log.exception("quality look-ahead failed after snapshot %d", snap.seq)
                self.event("quality_error", "quality", {"seq": snap.seq, "error": str(exc)})
            return
        self.lookahead_s.append(self.quality.lookahead_s)

    def _sync_skips(self) -> None:
        if self.supervisor is None:
            return
        ss = self.supervisor.stats
        for reason in ("superseded", "stale", "no_estimator"):
            n = getattr(ss, reason)
            seen = self._skips_seen.get(reason, 0)
            if n != seen:
                self.metrics.skipped.labels(reason).inc(n - seen)
                self._skips_seen[reason] = n

    def flag_counts_by_bit(self) -> np.ndarray:
        """(n_kinds, N_FLAG_BITS) values flagged so far, per meter kind and flag bit."""
        words = self._flag_words.reshape(len(self._kind_names), FLAG_WORDS)
        return words @ BIT_OF_WORD  # type: ignore[no-any-return]

    @property
    def flag_counts(self) -> np.ndarray:
        """Values flagged so far per flag bit (every meter kind)."""
        return self.flag_counts_by_bit().sum(axis=0)  # type: ignore[no-any-return]

    def _on_flush_timer(self) -> None:
        self._flush_metrics()
        if not self.closed and self._loop is not None:
            self._flush_timer = self._loop.call_later(METRICS_FLUSH_S, self._on_flush_timer)

    def _flush_metrics(self) -> None:
        """Move the batched counts and latency samples into the Prometheus registry."""
        m = self.metrics
        for name, buf in self._obs_decode.items():
            if buf:
                observe_many(self._decode_h[name], buf)
                buf.clear()
        for hist, buf in ((m.quality, self._obs_quality), (m.e2e, self._obs_e2e),
                          (m.handoff, self._obs_handoff), (m.estimate, self._obs_estimate)):
            if buf:
                observe_many(hist, buf)
                buf.clear()
        f = self._flushed
        for key, counter, now_n in (("snapshots", m.snapshots, self.snapshots),
                                    ("states", m.states, self.states),
                                    ("chi2_failures", m.chi2_failures, self._chi2_failures)):
            if now_n != f[key]:
                counter.inc(now_n - f[key])
                f[key] = now_n
        inc = self.aligner.stats.incomplete
        if inc != self._incomplete_seen:
            m.incomplete.inc(inc - self._incomplete_seen)
            self._incomplete_seen = inc
        for kind, n in self._hist_counts.items():
            if n:
                child = self._hist_children.get(kind)
                if child is None:
                    child = self._hist_children[kind] = m.historian.labels(kind)
                child.inc(n)
        self._hist_counts.clear()
        if not np.array_equal(self._flag_words, self._flag_words_flushed):
            delta = self._flag_words - self._flag_words_flushed
            per = delta.reshape(len(self._kind_names), FLAG_WORDS) @ BIT_OF_WORD
            for k, b in zip(*np.nonzero(per), strict=True):
                m.flag_child(int(k), int(b)).inc(int(per[k, b]))
            self._flag_words_flushed[:] = self._flag_words
        self._sync_skips()
        last = self._last_state
        if last is not None:
            st = last[0]
            if math.isfinite(st.chi2):
                m.chi2.set(st.chi2)
                if math.isfinite(st.chi2_threshold):
                    m.chi2_threshold.set(st.chi2_threshold)
            if st.vm.size:
                m.vm_min.set(float(st.vm.min()))
                m.vm_max.set(float(st.vm.max()))
            m.state_time.set(st.source_time)

    def _put(self, fn: Callable[..., None], kind: str, *args: Any, also: str | None = None,
             **kw: Any) -> None:
        """Hand records to the historian; ``also`` names a second record kind the same
        call stores (put_snapshot: measurements and corrected)."""
        try:
            fn(*args, **kw)
        except HistorianError as exc:
            self.metrics.historian_dropped.inc(1 if also is None else 2)
            self._hist_errors += 1
            if self._hist_errors <= 5:
                log.error("historian refused a %s record: %s", kind, exc)
            return
        hc = self._hist_counts
        hc[kind] = hc.get(kind, 0) + 1
        if also is not None:
            hc[also] = hc.get(also, 0) + 1

    # ------------------------------------------------------------------ estimator side
    def on_state(self, st: StateMsg, received: float, met: bool) -> None:
        self.states += 1
        e2e = received - st.arrival_time
        hand = st.recv_time - st.send_time
        self.e2e_s.append(e2e)
        self.handoff_s.append(hand)
        self.estimate_s.append(st.t_solve_s)
        self._obs_e2e.append(e2e)
        self._obs_handoff.append(hand)
        self._obs_estimate.append(st.t_solve_s)
        if math.isfinite(st.chi2) and math.isfinite(st.chi2_threshold) and \
                st.chi2 > st.chi2_threshold:
            self._chi2_failures += 1
        self._last_state = (st, received, met, e2e, hand)
        self._latest_json = None
        cl = self._commands
        if cl is not None and st.converged:  # one comparison until a decision is due
            cl.on_state(st.vm, st.seq, received)
        if self.historian is not None:
            self._put(self.historian.put_state, "states", st.seq, st.source_time, st.vm,
                      st.va, chi2=st.chi2 if math.isfinite(st.chi2) else None,
                      iterations=st.iterations, converged=st.converged, deadline_met=met,
                      timings={"handoff_s": hand, "solve_s": st.t_solve_s, "e2e_s": e2e})

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
                "deadline_met": met,
                "latency_ms": {"e2e": e2e * 1e3, "handoff": hand * 1e3,
                               "estimate": st.t_solve_s * 1e3},
            }
        return self._latest_json

    def on_fail(self, f: FailMsg) -> None:
        self.metrics.failures.inc()
        self.event("estimate_failed", "estimator", {"seq": f.seq, "reason": f.reason})

    # ------------------------------------------------------------------ events
    def event(self, kind: str, source: str, detail: dict[str, Any]) -> None:
        self.metrics.events.labels(kind).inc()
        if self.historian is not None:
            self._put(self.historian.put_event, "events", self.clock(), kind, source,
                      _jsonable(detail))

    def event_estimator(self, kind: str, detail: dict[str, Any]) -> None:
        m = self.metrics
        if kind == "estimator_restarted":
            m.restarts.inc()
            m.estimator_up.set(1)
        elif kind == "estimator_crashed":
            m.estimator_up.set(0)
        elif kind == "deadline_missed":
            m.deadline_misses.inc()
            if self.historian is not None and self.supervisor.stats.deadline_misses > 100:
                return  # counted; stop flooding the events table
        self.event(kind, "estimator", detail)

    def event_stream(self, stream: str, kind: str, detail: dict[str, object]) -> None:
        if kind == "listening":
            return
        log.info("stream %s: %s %s", stream, kind, detail)
        self.event(f"stream_{kind}", stream, dict(detail))

    def on_drop(self, stream: str, host: str) -> None:
        st = self.stats[stream]
        st.dropped()
        if st.dropped_source <= 3:
            log.warning("stream %s: dropped a frame from %s (not in the allowlist)", stream,
                        host)

    # ------------------------------------------------------------------ reporting
    def stream_summary(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.stats.values()]

    def summary(self) -> dict[str, Any]:
        sup = self.supervisor
        ss = sup.stats if sup is not None else None
        cl = self._commands
        hist = None
        if self.historian is not None:
            with contextlib.suppress(Exception):
                hist = self.historian.stats().as_dict()
        return {
            "frames_received": sum(s.received for s in self.stats.values()),
            "decode_errors": sum(s.decode_errors for s in self.stats.values()),
            "frames_lost": sum(s.not_stored for s in self.stats.values()),
            "frames_late": sum(s.late for s in self.stats.values()),
            "snapshots": self.snapshots,
            "snapshots_incomplete": self.aligner.stats.incomplete,
            "states": self.states,
            "deadline_misses": ss.deadline_misses if ss else 0,
            "skipped": {"superseded": ss.superseded, "stale": ss.stale,
                        "no_estimator": ss.no_estimator} if ss else {},
            "estimator_restarts": ss.restarts if ss else 0,
            "estimator_failures": ss.failures if ss else 0,
            "estimator_pids": sup.pids() if sup else {},
            "restart_s": list(sup.restart_durations) if sup else [],
            "e2e_latency_ms": _pct_ms(self.e2e_s),
            "stage_latency_ms": {"align_wait": _pct_ms(self.align_s),
                                 "quality": _pct_ms(self.quality_s),
                                 "quality_lookahead": _pct_ms(self.lookahead_s),
                                 "estimate": _pct_ms(self.estimate_s)},
            "handoff_latency_us": {k: None if v is None else v * 1e3
                                   for k, v in _pct_ms(self.handoff_s).items()},
            "flags": {n: int(c) for n, c in zip(FLAG_NAMES, self.flag_counts, strict=True)},
            "streams": self.stream_summary(),
            "historian": hist,
            "quality": type(self.quality).__name__,
            "commands_sent": cl.sent if cl is not None else 0,
            "command_errors": cl.errors if cl is not None else 0,
        }


def _demote_thread(thread: Any) -> None:
    """Run a background thread (the historian's commits) at the lowest real-time priority
    while the pipeline thread runs at a higher one: storage may lag, the pipeline must not.
    It stays real-time so ordinary processes cannot preempt it while it holds the GIL
    (which would hold the pipeline thread up: priority inversion)."""
    import os

    tid = getattr(thread, "native_id", None)
    if tid is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))


def _pct_ms(xs: deque[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    a = np.fromiter(xs, float) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v
    return fix(d)  # type: ignore[no-any-return]


def _addr(t: Transport) -> Any:
    a = t.local_address
    return list(a) if a else t.spec.url


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gridtwin")
    except metadata.PackageNotFoundError:
        return "0"
