"""The device registry, sans-IO: every device the twin hears, and what became of it.

One entry per device: the configured streams (RTDS/PMU: one device per stream) and the
edge sensors of ``[[sensors]]``, plus every device that announced itself without being
configured (a Sparkplug BIRTH, a SenML pack from an unknown base name): those are
**unassigned**, listed with the config lines that would add them. Each entry has its id,
kind, location (bus/branch of the channels it feeds), model/firmware where known,
nominal period, last seen, message and error counts, clock offset, quality (``good``,
``stale``, ``offline``, ``unassigned``) and the battery/health values the device reports.

Changes are events for the runner (:class:`DeviceEvent`): ``device_new`` (first heard
of an unconfigured device), ``device_online`` (a BIRTH, or the first message after being
offline) and ``device_offline`` (a DEATH, or silent for longer than its ``max_age_s``:
found by :meth:`DeviceRegistry.tick` at :meth:`DeviceRegistry.next_deadline`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.sensors_config import SensorSpec

#: metric names (last path component, lower case) kept as health, not as values
HEALTH_METRICS = {"battery", "battery_pct", "battery_v", "rssi", "snr", "health",
                  "uptime_s", "internal_temp", "status"}
#: metric names giving the model and firmware (Sparkplug "Properties/..." or plain)
MODEL_METRICS = {"model", "hardware", "hw_model"}
FIRMWARE_METRICS = {"firmware", "fw", "fw_version", "firmware_version"}
UNASSIGNED_MAX_AGE_S = 600.0
#: unassigned devices the registry lists at most: a publisher inventing device names
#: cannot grow it without bound (the ones beyond are counted in ``refused``)
MAX_UNASSIGNED = 1000


@dataclass(slots=True)
class DeviceEvent:
    kind: str  # device_new, device_online, device_offline
    device: str
    detail: dict[str, Any]


@dataclass
class Device:
    id: str
    key: str  # what the wire calls it (Sparkplug group/node[/device], SenML base name)
    kind: str
    assigned: bool = True
    bus: list[int] = field(default_factory=list)
    branch: list[int] = field(default_factory=list)
    model: str | None = None
    firmware: str | None = None
    period_s: float | None = None
    stale_s: float = math.inf
    max_age_s: float = UNASSIGNED_MAX_AGE_S
    online: bool = False
    first_seen: float | None = None
    last_seen: float | None = None
    messages: int = 0
    births: int = 0
    deaths: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    health: dict[str, float | str] = field(default_factory=dict)
    clock_offset_s: float | None = None  # reception minus device time, latest
    metrics: list[str] = field(default_factory=list)  # seen on the wire
    stream: str | None = None  # the stream carrying it (stream and meter devices)

    @property
    def edge(self) -> bool:
        """An MQTT edge device (not a stream or a meter a stream carries)."""
        return self.stream is None

    def quality(self, now: float) -> str:
        if not self.assigned:
            return "unassigned"
        if not self.online or self.last_seen is None:
            return "offline"
        return "stale" if now - self.last_seen > self.stale_s else "good"

    def config_lines(self) -> list[str]:
        """The ``[[sensors]]`` entry that would assign this device (channels to fill in)."""
        sid = self.key.rstrip("/").rsplit("/", 1)[-1] or self.key
        chans = ", ".join(f'"{m}" = "METER.QUANTITY"' for m in self.metrics
                          if m.rsplit("/", 1)[-1].lower() not in HEALTH_METRICS) or ""
        return ["[[sensors]]", f'id = "{sid}"', 'kind = "other"', f'device = "{self.key}"',
                f"channels = {{ {chans} }}", "period_s = 60"]

    def as_json(self, now: float) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "device": self.key, "kind": self.kind,
            "quality": self.quality(now), "online": self.online, "bus": self.bus,
            "branch": self.branch, "model": self.model, "firmware": self.firmware,
            "period_s": self.period_s, "last_seen": self.last_seen,
            "age_s": now - self.last_seen if self.last_seen is not None else None,
            "messages": self.messages, "births": self.births, "deaths": self.deaths,
            "errors": dict(self.errors), "health": dict(self.health),
            "clock_offset_s": self.clock_offset_s}
        if not self.assigned:
            d["config"] = "\n".join(self.config_lines())
        return d


class DeviceRegistry:
    """Configured and discovered devices, keyed by their wire name."""

    def __init__(self, max_unassigned: int = MAX_UNASSIGNED) -> None:
        self.devices: dict[str, Device] = {}
        self.max_unassigned = max_unassigned
        self.unassigned = 0
        self.refused = 0  # messages of unknown devices beyond MAX_UNASSIGNED

    @classmethod
    def from_specs(cls, specs: Iterable[SensorSpec],
                   locations: dict[str, tuple[int | None, int | None]] | None = None,
                   streams: Iterable[tuple[str, str, float]] = (),
                   meters: Iterable[tuple[str, str, int | None, int | None, str]] = ()
                   ) -> DeviceRegistry:
        """The configured devices: sensors (``locations``: channel name -> (bus,
        branch)), streams (``(name, format, rate_hz)``) and the meters the streams
        carry (``(meter id, kind, bus, branch, stream)``: their state is the stream's)."""
        r = cls()
        loc = locations or {}
        rates: dict[str, float] = {}
        for name, fmt, rate in streams:
            rates[name] = rate
            r.devices[f"stream:{name}"] = Device(name, f"stream:{name}", fmt, stream=name,
                                                 period_s=1.0 / rate if rate else None)
        for mid, kind, bus, branch, stream in meters:
            rate = rates.get(stream, 0.0)
            r.devices[f"meter:{mid}"] = Device(
                mid, f"meter:{mid}", kind, bus=[] if bus is None else [bus],
                branch=[] if branch is None else [branch], stream=stream,
                period_s=1.0 / rate if rate else None)
        for s in specs:
            d = Device(s.id, s.device, s.kind, model=s.model, firmware=s.firmware,
                       period_s=s.period_s, stale_s=s.stale_s, max_age_s=s.max_age_s)
            for ch in s.channels.values():
                bus, branch = loc.get(ch, (None, None))
                if bus is not None and bus not in d.bus:
                    d.bus.append(bus)
                if branch is not None and branch not in d.branch:
                    d.branch.append(branch)
            r.devices[s.device] = d
        return r

    def _get(self, key: str, now: float, out: list[DeviceEvent]) -> Device | None:
        d = self.devices.get(key)
        if d is None:
            if self.unassigned >= self.max_unassigned:
                self.refused += 1
                return None
            self.unassigned += 1
            d = Device(key, key, "unknown", assigned=False)
            self.devices[key] = d
            out.append(DeviceEvent("device_new", key, {"config": "\n".join(
                d.config_lines())}))
        if d.first_seen is None:
            d.first_seen = now
        return d

    def seen(self, key: str, now: float, device_time: float | None = None,
             metrics: Iterable[str] = ()) -> list[DeviceEvent]:
        """A message of device ``key`` received at ``now``; its events."""
        out: list[DeviceEvent] = []
        d = self._get(key, now, out)
        if d is None:
            return out
        d.messages += 1
        d.last_seen = now
        if device_time is not None and math.isfinite(device_time):
            d.clock_offset_s = now - device_time
        for m in metrics:
            if m not in d.metrics:
                d.metrics.append(m)
        if not d.online:
            d.online = True
            out.append(DeviceEvent("device_online", key, {"id": d.id, "how": "data"}))
        return out

    def birth(self, key: str, now: float, attributes: dict[str, str],
              metrics: Iterable[str] = ()) -> list[DeviceEvent]:
        out: list[DeviceEvent] = []
        d = self._get(key, now, out)
        if d is None:
            return out
        d.births += 1
        d.metrics = []
        for name, v in attributes.items():
            leaf = name.rsplit("/", 1)[-1].lower()
            if leaf in MODEL_METRICS:
                d.model = v
            elif leaf in FIRMWARE_METRICS:
                d.firmware = v
        out += self.seen(key, now, metrics=metrics)
        for e in out:  # a BIRTH while online (a requested rebirth) changes nothing
            if e.kind == "device_online":
                e.detail["how"] = "birth"
        return out

    def death(self, key: str, now: float, reason: str = "death") -> list[DeviceEvent]:
        """A DEATH of ``key`` (for a node, its devices too); its events."""
        out: list[DeviceEvent] = []
        for k, d in self.devices.items():
            if (k == key or k.startswith(key + "/")) and d.online:
                d.online = False
                d.deaths += reason == "death"
                out.append(DeviceEvent("device_offline", k, {"id": d.id, "reason": reason}))
        return out

    def error(self, key: str, kind: str, n: int = 1) -> None:
        d = self.devices.get(key)
        if d is not None:
            d.errors[kind] = d.errors.get(kind, 0) + n

    def health(self, key: str, name: str, value: float | str) -> None:
        d = self.devices.get(key)
        if d is not None:
            d.health[name.rsplit("/", 1)[-1]] = value

    def next_deadline(self) -> float | None:
        """When the next online device goes silent for too long (``tick`` is due)."""
        due = [d.last_seen + d.max_age_s for d in self.devices.values()
               if d.online and d.last_seen is not None and math.isfinite(d.max_age_s)]
        return min(due, default=None)

    def tick(self, now: float) -> list[DeviceEvent]:
        """Devices silent past their ``max_age_s`` go offline."""
        out: list[DeviceEvent] = []
        for k, d in self.devices.items():
            if d.online and d.last_seen is not None and now - d.last_seen > d.max_age_s:
                d.online = False
                out.append(DeviceEvent("device_offline", k, {"id": d.id,
                                                             "reason": "silent"}))
        return out

    def counts(self, now: float) -> dict[str, int]:
        c = {"online": 0, "stale": 0, "offline": 0, "unassigned": 0}
        for d in self.devices.values():
            if not d.edge:
                continue
            q = d.quality(now)
            c[q if q != "good" else "online"] += 1
            if q == "stale":
                c["online"] += 1
        return c

    def as_json(self, now: float, streams: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
        """The ``GET /devices`` answer; ``streams``: the live per-stream statistics."""
        live = {s.get("stream"): s for s in streams}
        devs = []
        for d in self.devices.values():
            j = d.as_json(now)
            if d.stream is not None:
                st = live.get(d.stream, {})
                j.update(source="stream", stream=d.stream, online=bool(st.get("received")),
                         quality="good" if st.get("received") else "offline")
                if d.key.startswith("stream:"):
                    j["stats"] = st
            else:
                j["source"] = "mqtt"
            devs.append(j)
        return {"time": now, "counts": self.counts(now), "devices": devs,
                "unassigned_refused": self.refused}
