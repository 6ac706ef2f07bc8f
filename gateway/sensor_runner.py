"""The edge sensors as a runner component: the MQTT transport, the ingest and its timer.

:func:`open_sensors` is what :class:`~gateway.app.Gateway` calls once its streams run,
when the config has an ``[mqtt]`` table: it builds the sans-IO
:class:`~gateway.sensor_ingest.SensorIngest` (sensor board and device registry), gives
the board to the pipeline (which fills the sensor channels of every snapshot it
publishes), opens the ``mqtt://`` transport whose messages go to the ingest, arms one
timer for the registry's silence deadline, exports device metrics on the gateway's
Prometheus registry and, when ``[mqtt] publish`` is set, starts the output publisher
(:mod:`gateway.mqtt_out`). Device events become the gateway's events (counted, stored).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.components import jsonable
from gateway.devices import DeviceEvent
from gateway.errors import GatewayError
from gateway.mqtt_out import StatePublisher
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import parse_mqtt_url, sensors_of
from gateway.transports.base import TransportSpec
from gateway.transports.mqtt import MqttTransport

log = logging.getLogger("gridtwin.sensors")

EventFn = Callable[[str, str, dict[str, Any]], None]  # (kind, source, detail)


class DeviceCollector:
    """``gridtwin_devices{quality}``, ``gridtwin_device_age_seconds{device}``,
    ``gridtwin_device_errors_total{device,kind}``, ``gridtwin_mqtt_messages_total{result}``."""

    def __init__(self, ingest: SensorIngest, clock: Callable[[], float]) -> None:
        self.ingest = ingest
        self.clock = clock

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        now = self.clock()
        reg = self.ingest.registry
        g = GaugeMetricFamily("gridtwin_devices", "Edge devices by quality.", labels=["quality"])
        for q, n in reg.counts(now).items():
            g.add_metric([q], n)
        yield g
        age = GaugeMetricFamily("gridtwin_device_age_seconds",
                                "Seconds since a device was last heard.", labels=["device"])
        err = CounterMetricFamily("gridtwin_device_errors", "Errors per device and kind.",
                                  labels=["device", "kind"])
        for d in reg.devices.values():
            if not d.edge:
                continue
            if d.last_seen is not None:
                age.add_metric([d.id], now - d.last_seen)
            for k, n in d.errors.items():
                err.add_metric([d.id, k], n)
        yield age
        yield err
        msgs = CounterMetricFamily("gridtwin_mqtt_messages", "MQTT sensor messages by result.",
                                   labels=["result"])
        for k, n in self.ingest.stats.as_dict().items():
            msgs.add_metric([k], n)
        yield msgs


class Sensors:
    """The running sensor component (see the module docstring)."""

    def __init__(self, ingest: SensorIngest, event: EventFn, clock: Callable[[], float],
                 streams: Callable[[], list[dict[str, Any]]]) -> None:
        self.ingest = ingest
        self.event = event
        self.clock = clock
        self.streams = streams
        self.transport: MqttTransport | None = None
        self.publisher: Any = None
        self.historian: Any = None  # a HistorianWriter: device rows on changes
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_message(self, stream: str, payload: bytes, topic: str | None, now: float) -> None:
        ing = self.ingest
        self.emit(ing.feed(topic or "", payload, now))
        if ing.commands and self.transport is not None:
            for t, p in ing.take_commands():
                self.transport.publish(t, p)
        self._arm()

    def on_drop(self, stream: str, topic: str) -> None:
        n = sum(self.transport.dropped.values()) if self.transport else 0
        if n <= 3:
            log.warning("mqtt: dropped a message on %s (not allowed or too large)", topic)

    def on_transport(self, stream: str, kind: str, detail: dict[str, object]) -> None:
        self.event(f"mqtt_{kind}", "mqtt", dict(detail))

    def emit(self, events: list[DeviceEvent]) -> None:
        for e in events:
            self.event(e.kind, "devices", {"device": e.device, **e.detail})
            d = self.ingest.registry.devices.get(e.device)
            if d is not None:
                self.store(d.as_json(self.clock()))

    def store(self, row: dict[str, Any]) -> None:
        """One device row to the historian (when one runs); a refusal is logged."""
        if self.historian is None:
            return
        try:
            self.historian.put_device(self.clock(), row)
        except GatewayError as exc:
            log.error("historian refused a device row: %s", exc)

    def _arm(self) -> None:
        """One timer for the registry's earliest silence deadline (re-armed earlier when
        a device with a shorter limit comes online)."""
        due = self.ingest.next_deadline()
        if self._loop is None or due is None or not math.isfinite(due) \
                or due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_later(max(0.0, due - self.clock()) + 0.001, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.emit(self.ingest.tick(self.clock()))
        self._arm()

    def devices(self) -> dict[str, Any]:
        """The ``GET /devices`` answer."""
        return self.ingest.devices_json(self.clock(), self.streams())

    def attach(self, gw: Any) -> None:
        """Join the runner (:class:`gateway.app.Gateway`): device rows to its historian,
        ``GET /devices`` on its HTTP server, the output publisher on its handoff and
        state hooks."""
        self.historian = gw.historian
        if gw.server is not None:
            gw.server.routes["/devices"] = self.devices_route
        pub = self.publisher
        if pub is not None:
            gw.on_handoff.append(lambda snap, pv, sig: pub.snapshot(snap))
            gw.on_new_state.append(lambda st, received: pub.state(st))

    def devices_route(self, query: str) -> tuple[int, str, bytes]:
        """``GET /devices`` on the twin's HTTP server: (status, content type, body)."""
        body = json.dumps(jsonable(self.devices()), default=str)
        return 200, "application/json", body.encode() + b"\n"

    def summary(self) -> dict[str, Any]:
        """Device counts for the run summary and the demo."""
        return self.ingest.registry.counts(self.clock())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for d in self.ingest.registry.devices.values():  # the final status of each
            if d.edge:
                self.store(d.as_json(self.clock()))
        if self.publisher is not None:
            await self.publisher.close()
        if self.transport is not None:
            await self.transport.close()


async def open_sensors(cfg: Any, pipeline: Any, metrics: Any, *, event: EventFn,
                       clock: Callable[[], float],
                       streams: Callable[[], list[dict[str, Any]]],
                       url: str | None = None) -> Sensors | None:
    """The sensor component running, or None when the config has no ``[mqtt]`` table.
    ``url`` overrides ``[mqtt] url`` (tests, demo: a broker on another port)."""
    sc = sensors_of(cfg)
    if sc.mqtt is None:
        return None
    m = sc.mqtt
    if url is not None:
        host, port, _ = parse_mqtt_url(url)
        m = replace(m, host=host, port=port)
    ingest = SensorIngest.from_config(cfg, sc)
    s = Sensors(ingest, event, clock, streams)
    s._loop = asyncio.get_running_loop()
    spec = TransportSpec("mqtt", url or f"mqtt://{m.host}:{m.port}/{m.topic}", format="mqtt")
    t = MqttTransport(spec, s.on_message, on_drop=s.on_drop, on_event=s.on_transport,
                      clock=clock, settings=m)
    await t.start()
    s.transport = t
    pipeline.sensors = ingest.board
    if metrics is not None:
        metrics.registry.register(DeviceCollector(ingest, clock))
    if m.publish:
        try:
            s.publisher = await StatePublisher.open(m, cfg, clock=clock)
        except BaseException:
            await t.close()
            raise
    return s
