"""The runner's components and how each one is opened (aiohttp's runner/site split).

:class:`~gateway.app.Gateway` starts these in order (historian, quality stage, command
link, estimator supervisor, metrics HTTP server, transports) and closes them in reverse.
Each ``open_*`` here builds one component from the config and the run options, starts it
and returns it (or ``None`` when the config turns it off); it knows nothing of the runner,
only of the callbacks it is given. A new kind of component adds one function here and one
line in the runner's start sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import Stream, TwinConfig
from gateway.errors import GatewayError, HistorianError
from gateway.metrics import Metrics, MetricsServer
from gateway.pipeline import StoreForecast, StoreLate, StoreSnapshot, StoreState
from gateway.quality.passthrough import PassThroughQuality
from gateway.telemetry import Telemetry, pct_ms
from gateway.transports.base import Transport, TransportSpec, open_transport

log = logging.getLogger("gridtwin.gateway")

EventSink = Callable[[str, str, dict[str, Any]], None]  # (kind, source, detail)
TOPOLOGY_READY_S = 60.0  # the identification process's start-up, at most


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
    #: the historian writer in its own process (gateway.historian.remote): no GIL shared
    #: with the pipeline thread. None: when ``realtime``
    historian_process: bool | None = None
    url_overrides: dict[str, str] | None = None  # stream name -> URL (tests, demo)
    bus_url: str | None = None  # None: the config's [bus] url; "": no bus
    forecast: bool | None = None  # None: the config's [forecast] enabled
    #: the in-process predictor calls of every gateway on this event loop go out as one
    #: call per loop turn (gateway.quality.batch): the fleet demo's edge processes
    batch_predictor: bool = False


def open_historian(cfg: TwinConfig, o: GatewayOptions, clock: Callable[[], float]) -> Any:
    """The historian writer (its thread, or its process, started; the run recorded), or
    None."""
    url = cfg.historian_url if o.historian_url is None else o.historian_url
    if not url or url == "none":
        return None
    from gateway.historian.writer import HistorianWriter, run_info_from_config

    h: Any
    if o.realtime if o.historian_process is None else o.historian_process:
        from gateway.historian.remote import HistorianProcess

        h = HistorianProcess(url, spool_dir=o.spool_dir, clock=clock)
    else:
        h = HistorianWriter(url, spool_dir=o.spool_dir, clock=clock)
    h.start()
    try:
        if o.realtime:
            pid = getattr(h, "pid", None)
            if pid is not None:
                from gateway.realtime import adopt

                log.info("historian process %d: %s", pid, adopt(pid, "historian"))
            else:
                demote_thread(getattr(h, "_thread", None))
        h.start_run(run_info_from_config(cfg))
    except BaseException:
        h.close()
        raise
    return h


def open_quality(cfg: TwinConfig, o: GatewayOptions, loop: asyncio.AbstractEventLoop,
                 event: EventSink) -> tuple[Any, Callable[[], None] | None]:
    """The quality stage and what closes it; the pass-through seam (nothing to close)
    when the stage is off or its models are unusable."""
    enabled = cfg.quality.enabled if o.quality is None else o.quality
    if not enabled:
        return PassThroughQuality(cfg), None
    from gateway.quality.stage import QualityStage  # onnxruntime only when enabled

    try:
        q = QualityStage(cfg, o.models_dir, predictor_process=cfg.quality.predictor_process,
                         batch_loop=loop if o.batch_predictor else None)
    except GatewayError as exc:
        log.error("quality stage unavailable (%s): values pass through unchecked "
                  "and PV gets a weak nameplate pseudo-measurement", exc)
        event("quality_unavailable", "quality", {"error": str(exc)})
        return PassThroughQuality(cfg), None

    from gateway.quality.predictor import PredictorKeeper

    adopt = None
    if o.realtime:  # the child starts with ordinary scheduling (SCHED_RESET_ON_FORK)
        from gateway.realtime import adopt as rt_adopt

        def adopt(pid: int) -> None:
            log.info("predictor process %d: %s", pid, rt_adopt(pid, "predictor"))

        if q.remote is not None:
            adopt(q.remote.proc.pid)
    # the child's socket feeds q.collect; a lost child is restarted with back-off (and
    # given the predictor's real-time role)
    keeper = PredictorKeeper(q, loop, event, adopt=adopt)
    q.on_remote_lost = keeper.lost

    def close() -> None:
        keeper.close()
        q.close()

    if q.remote_error is not None:
        keeper.start_failed(q.remote_error)
    return q, close


def open_commands(cfg: TwinConfig, metrics: Metrics, event: EventSink) -> Any:
    """The volt-watt command link to the simulator when ``[commands]`` is enabled."""
    if not cfg.commands.enabled:
        return None
    from gateway.commands import Command, CommandLink

    def sent(cmd: Command) -> None:  # at most one per min_interval_s
        metrics.commands_sent.inc()
        event("command_sent", "commands", cmd.detail())

    def failed(cmd: Command, reason: str) -> None:
        metrics.command_errors.inc()
        if link.errors <= 5:
            log.warning("command for snapshot %d not sent: %s", cmd.seq, reason)

    link = CommandLink(cfg, on_sent=sent, on_error=failed).open()
    log.warning("commands ENABLED: %s curtailment to %s", cfg.commands.policy,
                cfg.commands.url)
    return link


async def open_topology(cfg: TwinConfig, pipeline: Any, metrics: Metrics, event: EventSink,
                        loop: asyncio.AbstractEventLoop
                        ) -> tuple[Any, Callable[[], None]] | None:
    """Topology tracking (:class:`gateway.topology.LiveTopology`) when the config maps a
    switch status (or ``[topology] track`` says so), else None: the pipeline's status
    board, the tracker, its counters on the registry, and the one process hypothesis
    tests run in (a niced child: a test over 64 hypotheses is 40 ms of CPU, the first
    one 1.1 s while it builds their estimators; in a thread of the gateway it held the
    GIL against the hot path). The process is started, and has built the hypotheses'
    models, before this returns: its start-up (imports, 0.7 s of models) does not compete
    with the run. Returns the tracker and what closes it."""
    if not cfg.tracks_topology:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from gateway.topology import (
        LiveTopology,
        StatusBoard,
        TopologyCollector,
        child_init,
        child_ready,
    )

    board = StatusBoard(cfg)
    if not board.empty:
        pipeline.switches = board
    pool = None
    if cfg.topology.identify:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=child_init, initargs=(cfg,))
        try:
            await asyncio.wait_for(asyncio.wrap_future(pool.submit(child_ready)),
                                   TOPOLOGY_READY_S)
        except Exception as exc:  # identification is optional: track the statuses only
            log.error("topology identification unavailable: %s", exc)
            event("topology_identification_lost", "topology", {"error": str(exc)})
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
    topo = LiveTopology(cfg, event=event, submit=None if pool is None else pool.submit,
                        call_soon=loop.call_soon_threadsafe)
    pipeline.topology_of = topo.stamp  # before cleaning: a change re-bases the quality
    collector = TopologyCollector(topo.tracker)
    metrics.registry.register(collector)  # type: ignore[arg-type]

    def close() -> None:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        pipeline.switches = None
        pipeline.topology_of = None
        metrics.registry.unregister(collector)  # type: ignore[arg-type]

    return topo, close


async def open_estimator(cfg: TwinConfig, o: GatewayOptions, *, clock: Callable[[], float],
                         on_state: Any, on_fail: Any, on_event: Any) -> Any:
    """The estimator supervisor with its process ready, or None (``estimator=False``, or
    the fleet's workers estimate this twin)."""
    if not o.estimator or (cfg.bus.estimate == "workers" and
                           (cfg.bus.url if o.bus_url is None else o.bus_url)):
        return None
    from gateway.supervisor import EstimatorSupervisor

    sup = EstimatorSupervisor(
        o.config_ref, deadline_s=cfg.estimator.deadline_s, on_state=on_state,
        on_fail=on_fail, on_event=on_event, method=o.estimator_method, spare=o.spare,
        clock=clock, extra_args=["--realtime"] if o.realtime else [])
    await sup.start()
    return sup


async def open_bus(cfg: TwinConfig, o: GatewayOptions, *, clock: Callable[[], float],
                   on_state: Any) -> Any:
    """The bus link started, or None when no bus is configured. With ``[bus] estimate =
    "workers"`` the fleet's states come back through ``on_state``."""
    url = cfg.bus.url if o.bus_url is None else o.bus_url
    if not url:
        return None
    from gateway.bus.link import BusLink, bus_options

    link = BusLink(cfg, bus_options(cfg, url), clock=clock,
                   on_state=on_state if cfg.bus.estimate == "workers" else None)
    await link.start()
    return link


def open_forecast(cfg: TwinConfig, o: GatewayOptions, metrics: Metrics, event: EventSink,
                  loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> Any:
    """The feeder forecaster (its worker process starts with the first forecast), or
    None when ``[forecast]`` is off or the run says so (``forecast=False``)."""
    if o.forecast is False:
        return None
    from gateway.forecast import ForecastRunner

    return ForecastRunner.open(cfg, metrics, event, loop, clock,
                               cfg.historian_url if o.historian_url is None
                               else o.historian_url)


async def open_server(cfg: TwinConfig, o: GatewayOptions, metrics: Metrics, *,
                      state: Callable[[], dict[str, Any] | None],
                      streams: Callable[[], list[dict[str, Any]]],
                      summary: Callable[[], dict[str, Any]],
                      ready: Callable[[], list[str]]) -> MetricsServer | None:
    """The metrics HTTP server listening, or None when no address is configured."""
    bind = cfg.metrics_bind if o.metrics_bind is None else o.metrics_bind
    if not bind:
        return None
    server = MetricsServer(metrics, state=state, streams=streams, summary=summary,
                           ready=ready)
    try:
        addr = await server.start(bind)
    except OSError as exc:
        raise GatewayError(f"metrics_bind {bind!r}: cannot listen ({exc.strerror or exc})"
                           ) from exc
    log.info("metrics on http://%s:%d/metrics", *addr)
    return server


async def open_stream(s: Stream, o: GatewayOptions, frame_size: int, *,
                      on_frame: Any, on_drop: Any, on_event: Any,
                      clock: Callable[[], float], on_frames: Any = None) -> Transport:
    """The transport of one stream, started (its URL may be overridden for a run);
    ``on_frames`` takes a wake-up's frames at once from the transports that batch."""
    url = (o.url_overrides or {}).get(s.name, s.url)
    t = open_transport(
        TransportSpec(s.name, url, s.format, frame_size, s.idcode, s.allow, s.rate_hz,
                      read_timeout_s=s.read_timeout_s),
        on_frame, on_drop=on_drop, on_event=on_event, clock=clock, sink_many=on_frames)
    await t.start()
    return t


def open_live(server: MetricsServer, cfg: TwinConfig, *,
              state: Callable[[], dict[str, Any] | None],
              extras: Callable[[], dict[str, Any]], clock: Callable[[], float],
              historian: Callable[[], tuple[str, int | None]] | None = None) -> Any:
    """The operator's live page on ``server``'s address (read-only routes, ``/live``,
    ``/history`` from memory or, for longer ranges, the historian)."""
    from gateway.web.site import LiveSite

    site = LiveSite(cfg, state=state, extras=extras, clock=clock, historian=historian)
    server.routes.update(site.routes())
    server.stream_routes["/live"] = site.serve_live
    server.stream_routes["/history"] = site.serve_history
    return site


def live_extras(telemetry: Any, streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency (the last 1000 estimates), deadline misses and stream health for the page."""
    import itertools

    recent = deque(itertools.islice(reversed(telemetry.e2e_s), 1000))
    lat = pct_ms(recent)
    ss = telemetry.supervisor
    return {"latency_ms": {"p50": lat["p50"], "p99": lat["p99"]},
            "deadline_misses": ss.deadline_misses if ss else 0,
            "streams": [{"name": s["stream"], "up": bool(s.get("rate_hz", 0) > 0),
                         "rate_hz": s.get("rate_hz"), "lost": s.get("lost", 0)}
                        for s in streams]}


def readiness(gw: Any) -> list[str]:
    """The reasons ``gw`` is not ready (:func:`gateway.health.not_ready`)."""
    from gateway.health import not_ready

    sup, h = gw.supervisor, gw.historian
    st = gw.pipeline.last_state
    return not_ready(gw.clock(), streams=gw.pipeline.stats,
                     rates={s.name: s.rate_hz for s in gw.cfg.enabled_streams},
                     estimating=sup is not None or (gw.bus is not None and gw.bus.workers),
                     estimator_up=(sup is not None and sup.active is not None) or
                     (gw.bus is not None and gw.bus.edge.stats.connected),
                     last_state_at=None if st is None else st[1],
                     historian=None if h is None else h.stats())


def summary(gw: Any) -> dict[str, Any]:
    """The runner's summary: the telemetry's totals and each component's own figures."""
    sup, cl = gw.supervisor, gw.commands
    hist = None
    if gw.historian is not None:
        with contextlib.suppress(Exception):
            hist = gw.historian.stats().as_dict()
    return {
        **gw.telemetry.summary(),
        "restart_s": list(sup.restart_durations) if sup else [],
        "historian": hist,
        "quality": type(gw.quality).__name__,
        "predictor_late": getattr(gw.quality, "late_answers", None),
        "commands_sent": cl.sent if cl is not None else 0,
        "command_errors": cl.errors if cl is not None else 0,
        "bus": gw.bus.stats() if gw.bus is not None else None,
        "devices": gw.sensors.summary() if getattr(gw, "sensors", None) else None,
        "topology": gw.topology.summary() if getattr(gw, "topology", None) else None,
    }


def demote_thread(thread: Any) -> None:
    """Run a background thread (the historian's commits) at the historian's real-time
    priority (:mod:`gateway.realtime`): storage may lag, the pipeline must not. It stays
    real-time so ordinary processes cannot preempt it while it holds the GIL (which would
    hold the pipeline thread up: priority inversion)."""
    from gateway.realtime import set_realtime

    tid = getattr(thread, "native_id", None)
    if tid is None:
        return
    set_realtime("historian", tid=tid, nice=None)


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with non-finite floats as None (event details go to JSON columns)."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v
    return fix(d)  # type: ignore[no-any-return]


def address_of(t: Transport) -> Any:
    """Where a transport listens (host, port), else its URL (a client transport)."""
    a = t.local_address
    return list(a) if a else t.spec.url


def version() -> str:
    """The installed gridtwin version ("0" from a source tree without metadata)."""
    from importlib import metadata

    try:
        return metadata.version("gridtwin")
    except metadata.PackageNotFoundError:
        return "0"


class HistorianSink:
    """Carries the pipeline's store outputs and the runner's events to the historian
    writer, counting what it accepted (telemetry, batched) and what it refused."""

    def __init__(self, writer: Any, telemetry: Telemetry, metrics: Metrics) -> None:
        self.writer = writer
        self.telemetry = telemetry
        self.metrics = metrics
        self.errors = 0

    def put(self, fn: Callable[..., None], kind: str, *args: Any, also: str | None = None,
            **kw: Any) -> None:
        """Hand records to the writer; ``also`` names a second record kind the same call
        stores (put_snapshot: measurements and corrected)."""
        try:
            fn(*args, **kw)
        except HistorianError as exc:
            self.metrics.historian_dropped.inc(1 if also is None else 2)
            self.errors += 1
            if self.errors <= 5:
                log.error("historian refused a %s record: %s", kind, exc)
            return
        self.telemetry.stored(kind, also)

    def snapshot(self, o: StoreSnapshot) -> None:
        self.put(self.writer.put_snapshot, "measurements", o.seq, o.source_time,
                 o.arrival_time, o.raw_values, o.raw_flags, o.values, o.flags,
                 also="corrected")

    def late(self, o: StoreLate) -> None:
        self.put(self.writer.put_measurements, "measurements", o.seq, o.source_time,
                 o.arrival_time, o.values, o.flags)

    def forecast(self, o: StoreForecast) -> None:
        self.put(self.writer.put_forecasts, "forecasts", o.seq, o.time, o.pv_mw, o.sigma_mw)

    def state(self, o: StoreState) -> None:
        st = o.state
        self.put(self.writer.put_state, "states", st.seq, st.source_time, st.vm, st.va,
                 chi2=st.chi2 if math.isfinite(st.chi2) else None,
                 iterations=st.iterations, converged=st.converged,
                 deadline_met=o.deadline_met, topology=st.topology,
                 timings={"handoff_s": o.handoff_s, "solve_s": st.t_solve_s,
                          "e2e_s": o.e2e_s,
                          # where the rest of e2e went (one clock on one machine):
                          # waiting for the snapshot's last frame, the quality stage
                          # and its predictor, the state's way back into the loop
                          "align_s": st.published_time - st.arrival_time,
                          "clean_s": st.send_time - st.published_time,
                          "return_s": st.arrival_time + o.e2e_s - st.done_time,
                          # the J(x) quantile the estimate was tested against (it
                          # depends on the active set): graded per estimate later
                          "chi2_threshold": st.chi2_threshold})

    def event(self, time: float, kind: str, source: str, detail: dict[str, Any]) -> None:
        self.put(self.writer.put_event, "events", time, kind, source, jsonable(detail))

    async def close(self) -> None:
        """Commit what is queued and stop the writer thread (off the loop's thread)."""
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
