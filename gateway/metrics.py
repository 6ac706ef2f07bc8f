"""Prometheus metrics of the running twin and the tiny HTTP server exposing them.

Names follow the Prometheus conventions (``gridtwin_`` prefix, base units, ``_seconds``,
``_total`` for counters, ``_bytes``) and pass ``promtool check metrics``. Stage latencies
are histograms; per-stream frame accounting is read at scrape time from the gateway's
:class:`~gateway.stats.StreamStats` by a custom collector (no per-frame counter
increments on the hot path).

The server is a small asyncio HTTP/1.1 handler (no web framework): ``GET /metrics``
(text exposition format 0.0.4), ``GET /state`` (the latest estimate as JSON),
``GET /streams`` (per-stream statistics as JSON), ``GET /summary`` (run totals and
latency percentiles as JSON, what ``gridtwin demo`` reads), ``GET /healthz``. It binds to
127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway.stats import StreamStats

# latency buckets: 10 µs .. 1 s, dense around the 50 Hz / 1 kHz budgets
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2,
                   5e-2, 0.1, 0.25, 1.0)
FLAG_NAMES = ("bad", "suspect", "corrected", "missing", "pseudo", "late", "duplicate",
              "out_of_order", "stale", "time_suspect", "trigger")

#: every metric name exported (the deploy helper builds alerts and dashboards from it);
#: (name, type, labels, help)
METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("gridtwin_build_info", "gauge", ("version", "config", "digest"),
     "Build and config of this gateway (value 1)."),
    ("gridtwin_decode_seconds", "histogram", ("stream",),
     "Time to decode one frame (one frame in 8 is timed)."),
    ("gridtwin_quality_seconds", "histogram", (),
     "Data-quality stage (detect, correct, fill, PV forecast) per snapshot."),
    ("gridtwin_handoff_seconds", "histogram", (),
     "Gateway to estimator process handoff of one snapshot."),
    ("gridtwin_estimate_seconds", "histogram", (), "State estimation of one snapshot."),
    ("gridtwin_e2e_latency_seconds", "histogram", (),
     "First frame of a snapshot received to its state estimate back in the gateway."),
    ("gridtwin_frames_total", "counter", ("stream",), "Frames received and decoded."),
    ("gridtwin_frame_bytes_total", "counter", ("stream",), "Bytes of received frames."),
    ("gridtwin_decode_errors_total", "counter", ("stream",), "Frames that failed to decode."),
    ("gridtwin_frames_rejected_total", "counter", ("stream",),
     "Frames dropped because their source is not in the stream's allowlist."),
    ("gridtwin_frame_gaps_total", "counter", ("stream",),
     "Sequence numbers skipped (frames lost or reordered)."),
    ("gridtwin_frames_duplicate_total", "counter", ("stream",),
     "Frames whose sequence number was already seen."),
    ("gridtwin_frames_reordered_total", "counter", ("stream",),
     "Frames older than the newest seen of their stream."),
    ("gridtwin_frames_late_total", "counter", ("stream",),
     "Frames that arrived after their snapshot was published."),
    ("gridtwin_frames_dropped_total", "counter", ("stream", "reason"),
     "Frames not stored, by reason: duplicate, future (timestamp ahead of the local clock "
     "or an unconfirmed jump ahead), outlier (unconfirmed jump back, stray timestamp)."),
    ("gridtwin_stream_restarts_total", "counter", ("stream",),
     "Sender restarts recognised (sequence or time went back and continued from there)."),
    ("gridtwin_stream_rate_hertz", "gauge", ("stream",), "Frames per second, recent window."),
    ("gridtwin_stream_one_way_delay_seconds", "gauge", ("stream",),
     "Arrival minus source timestamp of the last frame."),
    ("gridtwin_stream_last_frame_timestamp_seconds", "gauge", ("stream",),
     "Arrival time (epoch) of the last frame."),
    ("gridtwin_stream_up", "gauge", ("stream",), "1 when a frame arrived in the last second."),
    ("gridtwin_snapshots_total", "counter", (), "Snapshots published by the aligner."),
    ("gridtwin_snapshots_incomplete_total", "counter", (),
     "Snapshots published with at least one stream missing."),
    ("gridtwin_snapshots_skipped_total", "counter", ("reason",),
     "Snapshots not estimated (superseded by a newer one, or no estimator running)."),
    ("gridtwin_flags_total", "counter", ("flag", "kind"),
     "Values flagged, by quality flag and meter kind."),
    ("gridtwin_channels", "gauge", ("kind",), "Measurement channels per meter kind."),
    ("gridtwin_states_total", "counter", (), "State estimates received from the estimator."),
    ("gridtwin_estimator_failures_total", "counter", (),
     "Snapshots the estimator could not solve (not observable, did not converge)."),
    ("gridtwin_deadline_misses_total", "counter", (),
     "Snapshots whose estimate was not back within the deadline."),
    ("gridtwin_estimator_restarts_total", "counter", (),
     "Estimator process restarts after a crash or hang."),
    ("gridtwin_estimator_up", "gauge", (), "1 while the estimator process is running."),
    ("gridtwin_state_chi2", "gauge", (), "Chi-square of the latest estimate."),
    ("gridtwin_state_chi2_threshold", "gauge", (),
     "Chi-square critical value (99 %, m - n degrees of freedom) of the latest estimate."),
    ("gridtwin_chi2_test_failures_total", "counter", (),
     "Estimates whose chi-square exceeded the critical value (bad data suspected)."),
    ("gridtwin_state_vm_min_pu", "gauge", (), "Lowest bus voltage magnitude of the latest "
     "estimate, per unit."),
    ("gridtwin_state_vm_max_pu", "gauge", (), "Highest bus voltage magnitude of the latest "
     "estimate, per unit."),
    ("gridtwin_state_timestamp_seconds", "gauge", (),
     "Source time (epoch) of the latest estimate."),
    ("gridtwin_bus_voltage_pu", "gauge", ("bus",),
     "Estimated voltage magnitude per bus (latest estimate, per unit; one series per bus "
     "of the feeder)."),
    ("gridtwin_historian_records_total", "counter", ("kind",),
     "Records handed to the historian writer."),
    ("gridtwin_historian_dropped_total", "counter", (),
     "Records the historian writer could not accept."),
    ("gridtwin_historian_up", "gauge", (),
     "1 while the historian database takes commits (the last connect or commit succeeded)."),
    ("gridtwin_historian_errors_total", "counter", (),
     "Failed historian commits and connections (outage, refused, timed out)."),
    ("gridtwin_historian_committed_total", "counter", (),
     "Rows committed to the historian database."),
    ("gridtwin_historian_spooled_total", "counter", (),
     "Rows written to the historian's disk spool (database down or slow)."),
    ("gridtwin_historian_replayed_total", "counter", (),
     "Rows committed from the spool (replay progress)."),
    ("gridtwin_historian_rejected_total", "counter", (),
     "Rows the database refused (kept in rejected.log beside the spool)."),
    ("gridtwin_historian_spool_records", "gauge", (), "Rows waiting in the spool."),
    ("gridtwin_historian_spool_bytes", "gauge", (), "Bytes waiting in the spool."),
    ("gridtwin_historian_queue_records", "gauge", (),
     "Rows waiting in the historian writer's memory queue."),
    ("gridtwin_historian_last_commit_timestamp_seconds", "gauge", (),
     "Time (epoch) of the last successful historian commit (0: none yet)."),
    ("gridtwin_events_total", "counter", ("kind",), "Events raised by the gateway."),
    ("gridtwin_predictor_late_total", "counter", (),
     "Snapshots the gateway predicted itself because the predictor process's answer was "
     "late (the child shares the gateway's CPU: a busy gateway delays it)."),
    ("gridtwin_commands_sent_total", "counter", (),
     "Volt-watt curtailment commands sent to the simulator ([commands] enabled)."),
    ("gridtwin_command_errors_total", "counter", (),
     "Commands that could not be sent (refused, no route, buffer full)."),
    ("gridtwin_forecast_min_vm_pu", "gauge", ("horizon",),
     "Lowest bus voltage magnitude of the latest forecast at each horizon (pu)."),
    ("gridtwin_forecast_max_vm_pu", "gauge", ("horizon",),
     "Highest bus voltage magnitude of the latest forecast at each horizon (pu)."),
    ("gridtwin_forecast_violations", "gauge", ("horizon",),
     "Buses the latest forecast puts outside the voltage limits at each horizon."),
)

#: name -> (type, labels, help)
_SPEC = {name: (kind, labels, doc) for name, kind, labels, doc in METRICS}


class _StreamCollector:
    """Reads per-stream counters and gauges from StreamStats at scrape time."""

    def __init__(self, source: Callable[[], Iterable[StreamStats]],
                 clock: Callable[[], float]) -> None:
        self.source = source
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        fams: dict[str, Any] = {}
        for name, kind, labels, doc in METRICS:
            if labels != ("stream",) or name == "gridtwin_decode_seconds":
                continue
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            short = name[:-6] if kind == "counter" else name
            fams[name] = cls(short, doc, labels=["stream"])
        drop = CounterMetricFamily("gridtwin_frames_dropped", _SPEC[
            "gridtwin_frames_dropped_total"][2], labels=["stream", "reason"])
        now = self.clock()
        for s in self.source():
            lab = [s.name]
            fams["gridtwin_frames_total"].add_metric(lab, s.received)
            fams["gridtwin_frame_bytes_total"].add_metric(lab, s.bytes)
            fams["gridtwin_decode_errors_total"].add_metric(lab, s.decode_errors)
            fams["gridtwin_frames_rejected_total"].add_metric(lab, s.dropped_source)
            fams["gridtwin_frame_gaps_total"].add_metric(lab, s.gaps)
            fams["gridtwin_frames_duplicate_total"].add_metric(lab, s.duplicates)
            fams["gridtwin_frames_reordered_total"].add_metric(lab, s.reordered)
            fams["gridtwin_frames_late_total"].add_metric(lab, s.late)
            fams["gridtwin_stream_rate_hertz"].add_metric(lab, s.rate(now))
            fams["gridtwin_stream_restarts_total"].add_metric(lab, s.restarts)
            for reason in ("duplicate", "future", "outlier"):
                n = s.dropped_by.get(reason, 0) + (s.duplicates if reason == "duplicate"
                                                   else 0)
                drop.add_metric([s.name, reason], n)
            owd = s.owd_last
            fams["gridtwin_stream_one_way_delay_seconds"].add_metric(
                lab, owd if math.isfinite(owd) else 0.0)
            last = s.last_arrival if math.isfinite(s.last_arrival) else 0.0
            fams["gridtwin_stream_last_frame_timestamp_seconds"].add_metric(lab, last)
            fams["gridtwin_stream_up"].add_metric(lab, 1.0 if now - last <= 1.0 else 0.0)
        yield from fams.values()
        yield drop


def follower(counter: Any) -> Callable[[int], None]:
    """A function that adds to Prometheus ``counter`` what a cumulative count (given at
    each call) grew by since the last call: components keep their own plain counts, and
    the gateway moves them into the registry before an exposition (``before_scrape``)."""
    seen = 0

    def follow(n: int) -> None:
        nonlocal seen
        if n > seen:
            counter.inc(n - seen)
            seen = n

    return follow


class Metrics:
    """The gateway's registry; stage histograms and counters as attributes."""

    def __init__(self, *, streams: Callable[[], Iterable[StreamStats]] | None = None,
                 clock: Callable[[], float] | None = None,
                 channel_kinds: dict[str, int] | None = None) -> None:
        import time

        self.registry = CollectorRegistry(auto_describe=False)
        self.info = Info("gridtwin_build", _SPEC["gridtwin_build_info"][2],
                         registry=self.registry)
        self.decode = self._histogram("gridtwin_decode_seconds")
        self.quality = self._histogram("gridtwin_quality_seconds")
        self.handoff = self._histogram("gridtwin_handoff_seconds")
        self.estimate = self._histogram("gridtwin_estimate_seconds")
        self.e2e = self._histogram("gridtwin_e2e_latency_seconds")
        self.snapshots = self._counter("gridtwin_snapshots_total")
        self.incomplete = self._counter("gridtwin_snapshots_incomplete_total")
        self.skipped = self._counter("gridtwin_snapshots_skipped_total")
        self.flags = self._counter("gridtwin_flags_total")
        self.channels = self._gauge("gridtwin_channels")
        self.chi2_threshold = self._gauge("gridtwin_state_chi2_threshold")
        self.chi2_failures = self._counter("gridtwin_chi2_test_failures_total")
        self.vm_min = self._gauge("gridtwin_state_vm_min_pu")
        self.vm_max = self._gauge("gridtwin_state_vm_max_pu")
        self.states = self._counter("gridtwin_states_total")
        self.failures = self._counter("gridtwin_estimator_failures_total")
        self.deadline_misses = self._counter("gridtwin_deadline_misses_total")
        self.restarts = self._counter("gridtwin_estimator_restarts_total")
        self.estimator_up = self._gauge("gridtwin_estimator_up")
        self.chi2 = self._gauge("gridtwin_state_chi2")
        self.state_time = self._gauge("gridtwin_state_timestamp_seconds")
        self.bus_vm = self._gauge("gridtwin_bus_voltage_pu")
        self.historian = self._counter("gridtwin_historian_records_total")
        self.historian_dropped = self._counter("gridtwin_historian_dropped_total")
        # the historian writer's own state, set from its stats at scrape time
        # (gateway.historian.telemetry)
        self.historian_up = self._gauge("gridtwin_historian_up")
        self.historian_errors = self._counter("gridtwin_historian_errors_total")
        self.historian_committed = self._counter("gridtwin_historian_committed_total")
        self.historian_spooled = self._counter("gridtwin_historian_spooled_total")
        self.historian_replayed = self._counter("gridtwin_historian_replayed_total")
        self.historian_rejected = self._counter("gridtwin_historian_rejected_total")
        self.historian_spool_records = self._gauge("gridtwin_historian_spool_records")
        self.historian_spool_bytes = self._gauge("gridtwin_historian_spool_bytes")
        self.historian_queue = self._gauge("gridtwin_historian_queue_records")
        self.historian_last_commit = self._gauge(
            "gridtwin_historian_last_commit_timestamp_seconds")
        self.events = self._counter("gridtwin_events_total")
        self.predictor_late = self._counter("gridtwin_predictor_late_total")
        self.commands_sent = self._counter("gridtwin_commands_sent_total")
        self.command_errors = self._counter("gridtwin_command_errors_total")
        self.forecast_min_vm = self._gauge("gridtwin_forecast_min_vm_pu")
        self.forecast_max_vm = self._gauge("gridtwin_forecast_max_vm_pu")
        self.forecast_violations = self._gauge("gridtwin_forecast_violations")
        for reason in ("superseded", "stale", "no_estimator"):
            self.skipped.labels(reason)
        kinds = channel_kinds or {"all": 0}
        self.kinds = list(kinds)
        for k, n in kinds.items():
            self.channels.labels(k).set(n)
        #: [kind][bit] counter children, pre-initialised so every series exists at 0
        self._flag_children = [[self.flags.labels(f, k) for f in FLAG_NAMES]
                               for k in self.kinds]
        if streams is not None:
            self.registry.register(_StreamCollector(streams, clock or time.time))  # type: ignore[arg-type]
        #: called before every exposition: the gateway flushes its batched counts here
        self.before_scrape: list[Callable[[], None]] = []

    # metrics as :data:`METRICS` describes them (one place for names, labels and help)
    def _histogram(self, name: str) -> Histogram:
        _, labels, doc = _SPEC[name]
        return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _counter(self, name: str) -> Counter:
        _, labels, doc = _SPEC[name]  # prometheus_client appends the _total itself
        return Counter(name.removesuffix("_total"), doc, labels, registry=self.registry)

    def _gauge(self, name: str) -> Gauge:
        _, labels, doc = _SPEC[name]
        return Gauge(name, doc, labels, registry=self.registry)

    def count_flags(self, kind: int, counts: Iterable[int]) -> None:
        """Add per-bit counts (bit 0 = BAD ... bit 8 = STALE) of meter kind ``kind``
        (index into the ``channel_kinds`` given at construction)."""
        for child, n in zip(self._flag_children[kind], counts, strict=False):
            if n:
                child.inc(n)

    def flag_child(self, kind: int, bit: int) -> Any:
        """The ``gridtwin_flags_total`` child of meter kind index ``kind`` and flag bit."""
        return self._flag_children[kind][bit]

    def exposition(self) -> bytes:
        for hook in self.before_scrape:
            hook()
        return generate_latest(self.registry)


def observe_many(hist: Any, values: Sequence[float]) -> None:
    """``hist.observe(v)`` for every ``v`` of ``values`` in one pass (bucket counts with
    numpy, one increment per bucket): the gateway batches its per-snapshot latencies and
    flushes them every second or at scrape time instead of observing each on the hot path.
    ``hist`` is a labelled-or-plain ``prometheus_client.Histogram`` (child)."""
    n = len(values)
    if n == 0:
        return
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another client version
        for v in values:
            hist.observe(float(v))
        return
    a = np.asarray(values, dtype=np.float64)
    # bucket i holds bounds[i-1] < v <= bounds[i] (prometheus_client's observe)
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), a, side="left")
    counts = np.bincount(idx, minlength=len(bounds))
    for i in np.flatnonzero(counts[:len(bounds)]).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(a.sum()))


# --------------------------------------------------------------------------- HTTP server

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class MetricsServer:
    """``/metrics``, ``/state``, ``/streams``, ``/summary``, ``/healthz`` over a minimal
    HTTP/1.1, read-only (only GET and HEAD are answered).

    Other parts add routes: :attr:`routes` maps a path to a handler of the query string
    returning (status, content type, body); :attr:`stream_routes` maps a path to a
    coroutine that owns the connection's writer (Server-Sent Events). ``/healthz`` is a
    readiness check: ``ready()`` returns the reasons the twin is not ready (none: 200 ok,
    else 503 with one reason per line)."""

    def __init__(self, metrics: Metrics, *, state: Callable[[], dict[str, Any] | None],
                 streams: Callable[[], list[dict[str, Any]]] | None = None,
                 summary: Callable[[], dict[str, Any]] | None = None,
                 ready: Callable[[], list[str]] | None = None) -> None:
        self.metrics = metrics
        self.state = state
        self.streams = streams or (lambda: [])
        self.summary = summary or (lambda: {})
        self.ready = ready or (lambda: [])
        self.routes: dict[str, Callable[[str], tuple[int, str, bytes]]] = {}
        self.stream_routes: dict[str, Callable[[asyncio.StreamWriter, str],
                                               Awaitable[None]]] = {}
        self._server: asyncio.base_events.Server | None = None

    async def start(self, bind: str) -> tuple[str, int]:
        host, _, port = bind.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._server = await asyncio.start_server(self._handle, host, int(port))
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.sockets:
            return None
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def route(self, method: str, target: str) -> tuple[int, str, bytes]:
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.exposition()
        if path == "/state":
            st = self.state()
            if st is None:
                return 503, "application/json", b'{"error": "no estimate yet"}\n'
            return 200, "application/json", json.dumps(st).encode() + b"\n"
        if path == "/streams":
            return 200, "application/json", json.dumps(self.streams()).encode() + b"\n"
        if path == "/summary":
            return 200, "application/json", json.dumps(
                self.summary(), default=_json_default).encode() + b"\n"
        if path in self.routes:
            return self.routes[path](query)
        if path in ("/healthz", "/"):
            why = self.ready()
            if why:
                return 503, "text/plain", ("\n".join(why) + "\n").encode()
            return 200, "text/plain", b"ok\n"
        return 404, "text/plain", (b"not found: try /, /metrics, /state, /streams, "
                                   b"/summary, /healthz\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        TimeoutError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split()
                if len(parts) != 3:
                    status, ctype, body = 400, "text/plain", b"bad request line\n"
                    method, keep = "GET", False
                else:
                    method, path, version = parts
                    hdrs = {k.strip().lower(): v.strip() for k, _, v in
                            (ln.partition(":") for ln in lines[1:] if ln)}
                    conn = hdrs.get("connection", "").lower()
                    keep = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
                    target, _, query = path.partition("?")
                    live = self.stream_routes.get(target)
                    if live is not None and method == "GET":
                        await live(writer, query)  # owns the connection from here on
                        return
                    status, ctype, body = self.route(method, path)
                resp = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode()
                writer.write(resp + (b"" if method == "HEAD" else body))
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def metric_names() -> list[str]:
    """Every exported metric family name (histograms also export _bucket/_sum/_count)."""
    return [n for n, *_ in METRICS]
