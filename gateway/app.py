"""The running twin: the runner that owns I/O and lifecycle around the sans-IO pipeline.

As aioquic's asyncio protocol drives its ``QuicConnection`` and aiohttp's runner its
sites, :class:`Gateway` does only what needs the outside world;
:class:`~gateway.pipeline.Pipeline` decides, :class:`~gateway.telemetry.Telemetry` counts.

1. :meth:`Gateway.start` starts the components (:mod:`gateway.components`) in order:
   historian, quality stage, command link, estimator supervisor, metrics HTTP server, one
   transport per stream. Each one started goes on a stack; when a later one fails, the
   started ones are closed in reverse order before the error goes up (no orphaned
   process, thread or socket). :meth:`Gateway.close` unwinds the same stack.
2. Frames go to :meth:`Pipeline.feed_frame` with their arrival time; the runner carries
   out the outputs (the handoff to the estimator first, then historian puts and events,
   then the pipeline settles: the quality look-ahead overlaps the estimator's solve) and
   arms one ``call_later`` for :meth:`Pipeline.next_deadline`, which calls ``tick``.
3. States go to :meth:`Pipeline.feed_state`; the command link sees converged ones.

One asyncio loop, one thread; the historian commits from its own thread, the estimator
and the predictor are other processes: nothing here blocks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import components as comp
from gateway import pipeline as pl
from gateway.components import GatewayOptions
from gateway.config import TwinConfig
from gateway.handoff import FailMsg, StateMsg
from gateway.metrics import MetricsServer
from gateway.pipeline import Output, Pipeline
from gateway.sensor_runner import Sensors, open_sensors
from gateway.telemetry import METRICS_FLUSH_S, Telemetry
from gateway.transports.base import Transport

log = logging.getLogger("gridtwin.gateway")

Closer = Callable[[], Awaitable[None] | None]


class Gateway:
    """The runner: components, sockets, timers; every decision is the pipeline's."""

    def __init__(self, cfg: TwinConfig, opts: GatewayOptions | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.opts = opts or GatewayOptions()
        self.clock = clock
        self.telemetry = Telemetry(cfg, clock=clock, version=comp.version())
        self.metrics = self.telemetry.metrics
        self.pipeline = Pipeline(cfg, self.telemetry)
        self.pipeline.handoff = self.pipeline.store = False  # until their components run
        self.transports: dict[str, Transport] = {}
        self.server: MetricsServer | None = None
        self.supervisor: Any = None
        self.historian: Any = None
        self._store: comp.HistorianSink | None = None  # carries store outputs to it
        self.commands: Any = None  # gateway.commands.CommandLink when enabled (start)
        self.live: Any = None  # gateway.web.site.LiveSite with the HTTP server
        self.bus: Any = None  # gateway.bus.link.BusLink when [bus] url is set
        self.sensors: Sensors | None = None  # edge sensors over MQTT ([mqtt] configured)
        self.forecast: Any = None  # gateway.forecast.ForecastRunner ([forecast] enabled)
        self.topology: Any = None  # gateway.topology.LiveTopology (switch statuses mapped)
        # who hears of each handoff, state and event (components add themselves at start)
        self.on_handoff: list[Callable[[Any, Any, Any], None]] = []
        self.on_new_state: list[Callable[[StateMsg, float], None]] = []
        self.on_event: list[Callable[[float, str, str, dict[str, Any]], None]] = []
        self._stack: list[tuple[str, Closer]] = []  # what start() started, to unwind
        #: what :meth:`execute` does with each kind of pipeline output
        self._run: dict[type, Callable[[Any], None]] = {
            pl.Handoff: self._handoff, pl.StoreSnapshot: self._stored("snapshot"),
            pl.StoreLate: self._stored("late"), pl.StoreForecast: self._stored("forecast"),
            pl.StoreState: self._stored("state"),
            pl.Settle: self._settle,
            pl.Event: lambda o: self.event(o.kind, o.source, o.detail)}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = 0.0
        self.closed = False

    # what callers and tests read (the pipeline and the telemetry own them)
    stats = property(lambda self: self.pipeline.stats)
    aligner = property(lambda self: self.pipeline.aligner)
    quality = property(lambda self: self.pipeline.quality)
    snapshots = property(lambda self: self.telemetry.snapshots)
    states = property(lambda self: self.telemetry.states)
    latest_state = property(lambda self: self.pipeline.latest_state)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every component in order; on a failure close the started ones, raise."""
        self._loop = asyncio.get_running_loop()
        self.started_at = self.clock()
        try:
            await self._start_components(self._loop)
        except BaseException:
            self.closed = True
            await self._unwind()
            raise
        self._flush_timer = self._loop.call_later(METRICS_FLUSH_S, self._on_flush_timer)
        # everything built so far lives as long as the process: keep the cyclic garbage
        # collector from walking it again and again (shorter gen-2 pauses on the loop)
        gc.freeze()
        self.event("gateway_started", "gateway", {
            "config": self.cfg.name,
            "streams": {n: comp.address_of(t) for n, t in self.transports.items()},
            "metrics": list(self.server.address) if self.server and self.server.address
            else None,
            "commands": self.cfg.commands.url if self.cfg.commands.enabled else None})

    async def _start_components(self, loop: asyncio.AbstractEventLoop) -> None:
        cfg, o, p = self.cfg, self.opts, self.pipeline
        self.historian = comp.open_historian(cfg, o, self.clock)
        if self.historian is not None:
            from gateway.historian.telemetry import metrics_hook

            self.metrics.before_scrape.append(metrics_hook(self.metrics, self.historian))
            self._store = comp.HistorianSink(self.historian, self.telemetry, self.metrics)
            self.on_event.append(self._store.event)
            p.store = True
            self.started("historian", self._store.close)
        self.started("run report", self.report_stopped)  # the last event before it closes
        p.quality, close_quality = comp.open_quality(cfg, o, loop, self.event)
        if hasattr(p.quality, "late_answers"):
            from gateway.quality.predictor import late_hook

            self.metrics.before_scrape.append(late_hook(self.metrics.predictor_late, p.quality))
        if close_quality is not None:
            self.started("quality stage", close_quality)
        topo = await comp.open_topology(cfg, p, self.metrics, self.event, loop)
        if topo is not None:  # before the estimator: it stamps each snapshot's topology
            self.topology = topo[0]
            self.on_handoff.append(self.topology.note_handoff)
            self.on_new_state.append(self.topology.on_estimate)
            self.started("topology", topo[1])
        self.commands = comp.open_commands(cfg, self.metrics, self.event)
        if self.commands is not None:
            self.on_new_state.append(self.commands.on_estimate)
            self.started("command link", self.commands.close)
        self.supervisor = await comp.open_estimator(
            cfg, o, clock=self.clock, on_state=self.on_state, on_fail=self.on_fail,
            on_event=self.event_estimator)
        if self.supervisor is not None:
            self.metrics.estimator_up.set(1)
            self.telemetry.supervisor = self.supervisor.stats
            p.handoff = True
            self.on_handoff.append(self.supervisor.submit)
            self.started("estimator", self._close_estimator)
        self.bus = await comp.open_bus(cfg, o, clock=self.clock, on_state=self.on_state)
        if self.bus is not None:
            p.handoff = True
            self.on_handoff.append(self.bus.snapshot)
            self.on_event.append(self.bus.event)
            if not self.bus.workers:  # the workers' states are theirs to publish
                self.on_new_state.append(self.bus.on_estimate)
            self.started("bus", self.bus.close)
        self.started("pipeline", self.drain)  # once the transports stopped
        self.forecast = comp.open_forecast(cfg, o, self.metrics, self.event, loop, self.clock)
        if self.forecast is not None:
            self.on_new_state.append(self.forecast.on_estimate)
            self.started("forecaster", self.forecast.close)
            await self.forecast.start()
        self.server = await comp.open_server(
            cfg, o, self.metrics, state=lambda: self.latest_state,
            streams=self.stream_summary, summary=self.summary, ready=self.not_ready)
        if self.server is not None:
            self.started("metrics server", self.server.close)
            self.live = comp.open_live(
                self.server, cfg, state=lambda: self.latest_state, extras=self.live_extras,
                clock=self.clock, historian=None if self.historian is None else
                lambda: (self.historian.url, self.historian.run_id))
            self.on_handoff.append(self.live.note_handoff)
            self.on_new_state.append(self.live.on_estimate)
            self.on_event.append(self.live.note_event)
            self.started("live view", self.live.close)
            if self.forecast is not None:
                self.server.routes["/forecast"] = self.forecast.route
        for s in cfg.enabled_streams:
            t = await comp.open_stream(s, o, p.decoders[s.name].size, on_frame=self.on_frame,
                                       on_drop=self.on_drop, on_event=self.event_stream,
                                       clock=self.clock, on_frames=self.on_frames)
            self.transports[s.name] = t
            self.started(f"stream {s.name}", t.close)
        self.sensors = await open_sensors(
            cfg, p, self.metrics, event=self.event, clock=self.clock,
            streams=self.stream_summary, url=(o.url_overrides or {}).get("mqtt"))
        if self.sensors is not None:
            self.started("sensors", self.sensors.close)
            self.sensors.attach(self)

    async def _close_estimator(self) -> None:
        await self.supervisor.close()
        self.metrics.estimator_up.set(0)

    def started(self, name: str, closer: Closer) -> None:
        """Record a component as running; ``closer`` stops it (in reverse start order)."""
        self._stack.append((name, closer))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._unwind()

    async def _unwind(self) -> None:
        while self._stack:
            name, closer = self._stack.pop()
            try:
                res = closer()
                if res is not None:
                    await res
            except Exception:  # keep closing the others
                log.exception("closing %s failed", name)

    def drain(self) -> None:
        """After the transports stopped: stop the timers, publish what is pending."""
        for t in (self._timer, self._flush_timer):
            if t is not None:
                t.cancel()
        self.execute(self.pipeline.flush(self.clock()))

    def report_stopped(self) -> None:
        """The last record before the historian closes: the run's summary as an event."""
        self.telemetry.flush()
        self.event("gateway_stopped", "gateway", self.summary())

    # ------------------------------------------------------------------ hot path
    def on_frame(self, stream: str, data: bytes, host: str | None, now: float) -> None:
        out = self.pipeline.feed_frame(stream, data, now)
        if out:
            self.execute(out)
        if self._timer is None:  # an armed timer is never later than the oldest slot's
            self._arm_timer()

    def on_frames(self, stream: str, frames: list[bytes], nows: list[float]) -> None:
        """A wake-up's frames of ``stream`` (UDP): decoded and aligned in one go."""
        out = self.pipeline.feed_frames(stream, frames, nows)
        if out:
            self.execute(out)
        if self._timer is None:
            self._arm_timer()

    def execute(self, outputs: list[Output]) -> None:
        """Carry out the pipeline's outputs in order (handoffs come first; store outputs
        come only while the historian runs). One dictionary look-up per output: this
        runs for every snapshot."""
        run = self._run
        for o in outputs:
            run[type(o)](o)

    def _settle(self, _: pl.Settle) -> None:
        out = self.pipeline.settle()
        if out:
            self.execute(out)

    def _handoff(self, o: pl.Handoff) -> None:
        for hand in self.on_handoff:
            hand(o.snapshot, o.pv_mw, o.pv_sigma_mw)

    def _stored(self, kind: str) -> Callable[[Any], None]:
        """The historian sink's method for ``kind`` (looked up when the output comes:
        store outputs come only while the historian runs)."""
        def put(o: Any) -> None:
            store = self._store
            assert store is not None
            getattr(store, kind)(o)
        return put

    def _arm_timer(self) -> None:
        due = self.pipeline.next_deadline()
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
        self.execute(self.pipeline.tick(self.clock()))
        self._arm_timer()

    def _on_flush_timer(self) -> None:
        self.telemetry.flush()
        if self.bus is not None:
            self.bus.health(self.clock(), self.stream_summary())
        if not self.closed and self._loop is not None:
            self._flush_timer = self._loop.call_later(METRICS_FLUSH_S, self._on_flush_timer)

    # ------------------------------------------------------------------ estimator side
    def on_state(self, st: StateMsg, received: float, met: bool) -> None:
        out = self.pipeline.feed_state(st, received, met)
        if out:
            self.execute(out)
        for hear in self.on_new_state:
            hear(st, received)

    def on_fail(self, f: FailMsg) -> None:
        self.metrics.failures.inc()
        self.event("estimate_failed", "estimator", {"seq": f.seq, "reason": f.reason})

    # ------------------------------------------------------------------ events
    def event(self, kind: str, source: str, detail: dict[str, Any]) -> None:
        self.metrics.events.labels(kind).inc()
        now = self.clock()
        for hear in self.on_event:
            hear(now, kind, source, detail)

    def event_estimator(self, kind: str, detail: dict[str, Any]) -> None:
        if self.telemetry.estimator_event(kind, stored=self.historian is not None):
            self.event(kind, "estimator", detail)

    def event_stream(self, stream: str, kind: str, detail: dict[str, object]) -> None:
        if kind == "listening":
            return
        log.info("stream %s: %s %s", stream, kind, detail)
        self.event(f"stream_{kind}", stream, dict(detail))

    def on_drop(self, stream: str, host: str) -> None:
        """A datagram from an address the stream does not allow: counted, logged thrice."""
        self.pipeline.dropped_source(stream, host)

    # ------------------------------------------------------------------ reporting
    def stream_summary(self) -> list[dict[str, Any]]:
        return self.telemetry.stream_summary()

    def not_ready(self) -> list[str]:
        """Why ``/healthz`` answers 503 (:mod:`gateway.health`); empty when ready."""
        return comp.readiness(self)

    def live_extras(self) -> dict[str, Any]:
        """What the live page shows beside the grid (built at most 10 times a second)."""
        return comp.live_extras(self.telemetry, self.stream_summary())

    def summary(self) -> dict[str, Any]:
        """Run totals: the pipeline's (telemetry) and what the components know."""
        return comp.summary(self)


__all__ = ["Gateway", "GatewayOptions"]
