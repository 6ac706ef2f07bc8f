"""MQTT sensor messages to the sensor board and the device registry, sans-IO.

:meth:`SensorIngest.feed` takes one MQTT message ``(topic, payload, now)`` as the
transport received it and decides everything: topic allowlist and size limit (counted
and dropped), the codec by topic (``spBv1.0/...``: Sparkplug B, anything else: SenML
JSON), malformed payloads (counted per device and dropped, never raised), duplicates
(Sparkplug: the same sequence number and timestamp again; SenML: every reading already
held), out-of-order readings (kept out of the board, counted), health metrics to the
registry, values to the :class:`~gateway.sensors.SensorBoard`. It returns the device
events the message caused. :meth:`tick` / :meth:`next_deadline` find silent devices.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.codecs.reading import Reading
from gateway.codecs.senml import decode_senml
from gateway.codecs.sparkplug import (
    NAMESPACE,
    SparkplugError,
    SparkplugSession,
    parse_topic,
    rebirth_request,
)
from gateway.devices import (
    FIRMWARE_METRICS,
    HEALTH_METRICS,
    MODEL_METRICS,
    DeviceEvent,
    DeviceRegistry,
)
from gateway.errors import FrameError
from gateway.sensors import SensorBoard
from gateway.sensors_config import DEFAULT_MAX_PAYLOAD, SensorsConfig, topic_matches

log = logging.getLogger("gridtwin.sensors")
LOGGED = 5  # malformed payloads logged (then counted only)
REBIRTH_INTERVAL_S = 10.0  # at most one rebirth request per edge node in this time


@dataclass(slots=True)
class IngestStats:
    messages: int = 0
    readings: int = 0
    malformed: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    not_allowed: int = 0
    too_large: int = 0
    unmapped: int = 0
    rebirths_requested: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


class SensorIngest:
    """Decode, deduplicate and route MQTT sensor messages (see the module docstring)."""

    def __init__(self, board: SensorBoard, registry: DeviceRegistry, *,
                 topics: tuple[str, ...] = ("#",),
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.board = board
        self.registry = registry
        self.topics = topics
        self.max_payload = max_payload
        self.session = SparkplugSession()
        self.stats = IngestStats()
        #: MQTT messages to publish (topic, payload): rebirth requests (NCMD)
        self.commands: list[tuple[str, bytes]] = []
        self._rebirth_at: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: Any, sc: SensorsConfig) -> SensorIngest:
        """Board and registry for a loaded twin config and its sensors settings."""
        index = cfg.channel_index
        sigma_at: dict[int, Callable[[float], float]] = {
            c.index: c.sigma_at for c in cfg.channels}
        board = SensorBoard.build(sc.sensors, index, sigma_at)
        loc = {c.name: (c.bus, c.branch) for c in cfg.channels}
        streams = [(s.name, s.format, s.rate_hz) for s in cfg.enabled_streams]
        carried = {cfg.channels[i].meter: s.name for s in cfg.enabled_streams
                   for i in s.channels}
        meters = [(m.id, m.kind, m.bus, m.branch, carried[m.id]) for m in cfg.meters
                  if m.id in carried]
        reg = DeviceRegistry.from_specs(sc.sensors, loc, streams, meters)
        m = sc.mqtt
        return cls(board, reg, topics=m.topics if m else ("#",),
                   max_payload=m.max_payload if m else DEFAULT_MAX_PAYLOAD)

    def allowed(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in self.topics)

    def feed(self, topic: str, payload: bytes, now: float) -> list[DeviceEvent]:
        """One message received at ``now``; the device events it caused."""
        st = self.stats
        if not self.allowed(topic):
            st.not_allowed += 1
            return []
        if len(payload) > self.max_payload:
            st.too_large += 1
            return []
        st.messages += 1
        if topic.startswith(NAMESPACE + "/"):
            return self._sparkplug(topic, payload, now)
        return self._senml(topic, payload, now)

    def _malformed(self, device: str | None, topic: str, exc: FrameError) -> None:
        self.stats.malformed += 1
        if device is not None:
            self.registry.error(device, "malformed")
        if self.stats.malformed <= LOGGED:
            log.warning("MQTT %s: malformed payload dropped: %s", topic, exc)

    def _sparkplug(self, topic: str, payload: bytes, now: float) -> list[DeviceEvent]:
        try:
            msg = self.session.feed(topic, payload, now)
        except SparkplugError as exc:
            dev = None
            with contextlib.suppress(SparkplugError):
                dev = parse_topic(topic).device_id
            self._malformed(dev, topic, exc)
            return []
        reg, st = self.registry, self.stats
        dev = msg.topic.device_id
        if msg.rebirth_needed:
            self._rebirth(msg.topic.node_id, now)
        if msg.seq_status == "duplicate":
            st.duplicates += 1
            reg.error(dev, "duplicates")
            return []
        if msg.seq_status == "gap":
            st.gaps += msg.missed
            reg.error(dev, "lost", msg.missed)
        if msg.unknown_aliases:
            reg.error(dev, "unknown_alias", msg.unknown_aliases)
        if msg.death:
            self.board.offline(dev)
            return reg.death(dev, now)
        names = [r.name for r in msg.readings]
        if msg.birth:
            out = reg.birth(dev, now, msg.attributes, names)
        else:
            stamp = max((r.time for r in msg.readings), default=None)
            out = reg.seen(dev, now, stamp, names)
        older = self._readings(msg.readings, now)[1]
        if msg.seq_status == "late" or older:
            st.out_of_order += 1
            reg.error(dev, "out_of_order")
        return out

    def _rebirth(self, node: str, now: float) -> None:
        """Ask ``node`` for its BIRTH again (unknown aliases, lost messages), at most
        once per :data:`REBIRTH_INTERVAL_S`."""
        if now - self._rebirth_at.get(node, -REBIRTH_INTERVAL_S) < REBIRTH_INTERVAL_S:
            return
        self._rebirth_at[node] = now
        self.stats.rebirths_requested += 1
        self.commands.append(rebirth_request(node, now))

    def take_commands(self) -> list[tuple[str, bytes]]:
        """The messages to publish since the last call."""
        out, self.commands = self.commands, []
        return out

    def _senml(self, topic: str, payload: bytes, now: float) -> list[DeviceEvent]:
        try:
            readings = decode_senml(payload, now)
        except FrameError as exc:
            self._malformed(None, topic, exc)
            return []
        out: list[DeviceEvent] = []
        by_dev: dict[str, list[Reading]] = {}
        for r in readings:
            by_dev.setdefault(r.device, []).append(r)
        for dev, rs in by_dev.items():
            fresh, older = self._readings(rs, now)
            if older:
                self.stats.out_of_order += 1
                self.registry.error(dev, "out_of_order")
            if not fresh and self._all_held(rs):
                self.stats.duplicates += 1
                self.registry.error(dev, "duplicates")
                continue
            out += self.registry.seen(dev, now, max(r.time for r in rs), [r.name for r in rs])
        return out

    def _all_held(self, rs: list[Reading]) -> bool:
        """Every reading the board maps is already held with the same timestamp (and
        there is at least one): the pack was delivered before."""
        chans = self.board.channels
        held = [ch.device_time == r.time for r in rs if r.numeric
                and (ch := chans.get((r.device, r.name))) is not None]
        return bool(held) and all(held)

    def _readings(self, readings: list[Reading], now: float) -> tuple[int, int]:
        """Route readings (health, model/firmware, values); how many values were new
        and how many older than the one held (out of order: not used)."""
        reg, board, st = self.registry, self.board, self.stats
        new = older = 0
        for r in readings:
            leaf = r.name.rsplit("/", 1)[-1].lower()
            if leaf in HEALTH_METRICS and r.value is not None:
                reg.health(r.device, r.name, r.value)
                continue
            if leaf in MODEL_METRICS | FIRMWARE_METRICS and isinstance(r.value, str):
                d = reg.devices.get(r.device)
                if d is not None:
                    if leaf in MODEL_METRICS:
                        d.model = r.value
                    else:
                        d.firmware = r.value
                continue
            if not isinstance(r.value, float):
                continue
            st.readings += 1
            res = board.update(r.device, r.name, r.value, r.time, now)
            if res == "new":
                new += 1
            elif res == "older":
                older += 1
            elif res == "unmapped":
                st.unmapped += 1
        return new, older

    def next_deadline(self) -> float | None:
        return self.registry.next_deadline()

    def tick(self, now: float) -> list[DeviceEvent]:
        return self.registry.tick(now)

    def devices_json(self, now: float, streams: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
        """``GET /devices``: the registry, the ingest counters and the channels' ages."""
        d = self.registry.as_json(now, streams or [])
        d["ingest"] = self.stats.as_dict()
        d["channels"] = self.board.channel_info(now)
        return d
