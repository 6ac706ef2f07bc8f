"""The emulator's MQTT micro sensors for the IEEE33 feeder (``gridtwin emulate --mqtt``).

Edge devices as they behave in the field, deterministic for a seed, their values taken
from a scenario trace's truth (branch flows, injections, weather) plus their own noise:

* **lateral line sensors** (Sparkplug B edge nodes ``feeder/ls<to-bus>``): P and Q at the
  sending end of the first branch of each lateral (2-19, 3-23, 6-26) and of two more
  lateral sections;
* **pole-top transformer meters** (SenML JSON on ``senml/pt/tx<bus>``): the bus's P and Q
  injection (load is negative), every 15 to 60 s;
* **weather stations** (Sparkplug B, ``feeder/ws<bus>``): GHI and air temperature, with a
  battery level that drains.

Behaviour: report-by-exception (a value is sent when it moved by more than the device's
deadband since the last report, at most every ``min_s`` and at least every ``period_s``,
1 to 60 s); dropouts (a report lost); clock skew (each device's clock off by up to
``skew_s``); QoS 1 duplicates (the same message published twice, as a device does after
a lost PUBACK); one line sensor that dies (its NDEATH, which the broker sends as its
will) and is reborn (NBIRTH with the next ``bdSeq``) at set times.

:class:`SensorFleet` is sans-IO (``step(now, row)`` -> messages); :class:`FleetPublisher`
runs it on a thread with a paho client, paced by the wall clock. :func:`config_text`
gives the ``[[meters]]``, ``[mqtt]`` and ``[[sensors]]`` lines that let the twin use them.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.codecs import sparkplug as sp
from gateway.codecs.senml import encode_senml
from gateway.config import load_config
from hil.errors import HilError

GROUP = "feeder"


@dataclass(frozen=True)
class MetricDef:
    name: str
    source: str  # "s_branch_from", "s_inj" (complex pu: .real P, .imag Q), "weather"
    index: int  # branch/bus index, or plant index for weather
    part: str  # "p", "q", or a weather field index as str
    quantity: str  # the twin channel's quantity (p, q, pinj, qinj, ghi, temp_air)
    unit: str


@dataclass(frozen=True)
class SensorDef:
    id: str
    kind: str  # line_current, transformer_meter, weather_station
    protocol: str  # sparkplug or senml
    metrics: tuple[MetricDef, ...]
    period_s: float  # longest interval between reports
    min_s: float  # shortest interval between reports
    deadband: float  # relative change that triggers a report
    noise: float  # relative noise (1 sigma)
    floor: float  # absolute noise floor (unit of the metric)
    branch: str | None = None  # "f-t" for line sensors
    bus: int | None = None

    @property
    def device(self) -> str:
        """The device id the twin sees (Sparkplug group/node, SenML base name)."""
        return f"{GROUP}/{self.id}" if self.protocol == "sparkplug" else f"pt/{self.id}"

    @property
    def topic(self) -> str:
        return f"senml/pt/{self.id}" if self.protocol == "senml" else ""


#: lateral branches (from-to) carrying a line sensor
LATERAL_BRANCHES = ("2-19", "3-23", "6-26", "19-20", "26-27")
TRANSFORMER_BUSES = (18, 22, 24, 25, 28, 29, 30, 32, 33)
WEATHER_PLANTS = (("ws8", 0), ("ws22", 2))


def ieee33_fleet(net: Any) -> list[SensorDef]:
    """The IEEE33 micro sensor fleet on network ``net`` (an ``estimator.network``)."""
    out: list[SensorDef] = []
    names = list(net.branches.names)
    for br in LATERAL_BRANCHES:
        k = names.index(br)
        sid = f"ls{br.split('-')[1]}"
        out.append(SensorDef(sid, "line_current", "sparkplug", (
            MetricDef("P", "s_branch_from", k, "p", "p", "MW"),
            MetricDef("Q", "s_branch_from", k, "q", "q", "MVAr")),
            period_s=30.0, min_s=1.0, deadband=0.02, noise=0.003, floor=0.0005, branch=br))
    for b in TRANSFORMER_BUSES:
        i = net.index_of(b)
        out.append(SensorDef(f"tx{b}", "transformer_meter", "senml", (
            MetricDef("pinj", "s_inj", i, "p", "pinj", "MW"),
            MetricDef("qinj", "s_inj", i, "q", "qinj", "MVAr")),
            period_s=60.0, min_s=15.0, deadband=0.05, noise=0.003, floor=0.0002, bus=b))
    for sid, plant in WEATHER_PLANTS:
        out.append(SensorDef(sid, "weather_station", "sparkplug", (
            MetricDef("ghi", "weather", plant, "0", "ghi", "W/m2"),
            MetricDef("temp_air", "weather", plant, "3", "temp_air", "degC")),
            period_s=60.0, min_s=5.0, deadband=0.05, noise=0.01, floor=2.0))
    return out


def config_text(fleet: list[SensorDef], url: str, *, publish: str = "") -> str:
    """``[[meters]]``, ``[mqtt]`` and ``[[sensors]]`` for a twin config that uses the fleet
    (appended to the bundled ieee33 config: the new channels come last)."""
    lines: list[str] = []
    for s in fleet:
        qs = [m.quantity for m in s.metrics]
        lines += ["", "[[meters]]", f'id = "{s.id}"',
                  f'kind = "{"weather" if s.kind == "weather_station" else "scada"}"']
        if s.branch:
            lines.append(f'branches = ["{s.branch}"]')
        elif s.bus is not None:
            lines.append(f"bus = {s.bus}")
        acc = ", ".join(f'{q} = "{100 * 3 * s.noise:g}%"' for q in qs)
        flo = ", ".join(f"{q} = {3 * s.floor:g}" for q in qs)
        lines += [f"quantities = [{', '.join(repr(q).replace(chr(39), chr(34)) for q in qs)}]",
                  f"accuracy = {{ {acc} }}", f"floor = {{ {flo} }}"]
    topics = f'["spBv1.0/{GROUP}/#", "senml/pt/#"]'
    lines += ["", "[mqtt]", f'url = "{url}"', f"topics = {topics}", "qos = 1"]
    if publish:
        lines.append(f'publish = "{publish}"')
    for s in fleet:
        chans = ", ".join(f'{m.name} = "{s.id}.{m.quantity}"' for m in s.metrics)
        lines += ["", "[[sensors]]", f'id = "{s.id}"', f'kind = "{s.kind}"',
                  f'device = "{s.device}"', f"channels = {{ {chans} }}",
                  f"period_s = {s.period_s:g}", f"stale_s = {2 * s.period_s:g}",
                  f"max_age_s = {4 * s.period_s:g}"]
    return "\n".join(lines) + "\n"


@dataclass
class _DevState:
    skew: float
    last_sent: float = -math.inf
    last_vals: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    bd: int = -1  # the NBIRTH/NDEATH session number (bdSeq); the first birth makes it 0
    alive: bool = False
    battery: float = 100.0


@dataclass
class FleetStats:
    reports: int = 0
    dropped: int = 0
    duplicated: int = 0
    births: int = 0
    deaths: int = 0


Message = tuple[str, bytes]  # (topic, payload)


class SensorFleet:
    """The fleet's behaviour, sans-IO: ``step(now, row)`` -> the messages to publish."""

    def __init__(self, fleet: list[SensorDef], trace: Any, base_mva: float, *, seed: int = 0,
                 dropout_pct: float = 2.0, duplicate_pct: float = 2.0, skew_s: float = 5.0,
                 die: tuple[str, float, float] | None = ("ls26", 15.0, 25.0)) -> None:
        self.fleet = fleet
        self.trace = trace
        self.base_mva = base_mva
        self.rng = np.random.default_rng(seed)
        self.dropout = dropout_pct / 100.0
        self.duplicate = duplicate_pct / 100.0
        self.die = die  # (sensor id, dies at s, reborn at s) after the first step
        self.dev = {s.id: _DevState(skew=float(self.rng.uniform(-skew_s, skew_s)))
                    for s in fleet}
        self.stats = FleetStats()
        self.t0: float | None = None
        self._rebirth: set[str] = set()
        self._lock = threading.Lock()

    def request_rebirth(self, sensor_id: str) -> None:
        """An NCMD Rebirth for edge node ``sensor_id``: its next step sends NBIRTH
        (same bdSeq, seq 0). Safe from another thread."""
        with self._lock:
            self._rebirth.add(sensor_id)

    def truth(self, m: MetricDef, row: int) -> float:
        tr = self.trace
        if m.source == "weather":
            return float(tr.weather[row, m.index, int(m.part)])
        s = complex(getattr(tr, m.source)[row, m.index]) * self.base_mva
        return s.real if m.part == "p" else s.imag

    def step(self, now: float, row: int) -> list[Message]:
        """The messages of every device at wall time ``now`` (trace row ``row``)."""
        if self.t0 is None:
            self.t0 = now
        out: list[Message] = []
        for s in self.fleet:
            out += self._device(s, self.dev[s.id], now, row)
        return out

    def _device(self, s: SensorDef, d: _DevState, now: float, row: int) -> list[Message]:
        assert self.t0 is not None
        el = now - self.t0
        dead = self.die is not None and self.die[0] == s.id and self.die[1] <= el < self.die[2]
        out: list[Message] = []
        if dead:
            if d.alive:
                d.alive = False
                self.stats.deaths += 1
                out.append((f"spBv1.0/{GROUP}/NDEATH/{s.id}", sp.encode_payload(sp.Payload(
                    metrics=[sp.Metric("bdSeq", datatype=sp.INT64, value=d.bd)]))))
            return out
        vals = {m.name: self._measure(s, m, row) for m in s.metrics}
        dev_time = now + d.skew
        with self._lock:
            asked = s.id in self._rebirth
            self._rebirth.discard(s.id)
        if (not d.alive or asked) and s.protocol == "sparkplug":
            d.bd += 0 if d.alive else 1
            d.seq = 0
            out.append(self._birth(s, d, vals, dev_time))
            d.alive = True
            d.last_sent, d.last_vals = now, vals
            self.stats.births += 1
            return out
        d.alive = True
        if not self._due(s, d, vals, now):
            return out
        d.last_sent, d.last_vals = now, vals
        d.battery = max(0.0, d.battery - 0.01)
        msg = self._report(s, d, vals, dev_time)
        self.stats.reports += 1
        if self.rng.random() < self.dropout:
            self.stats.dropped += 1
            return out
        out.append(msg)
        if self.rng.random() < self.duplicate:
            self.stats.duplicated += 1
            out.append(msg)
        return out

    def _measure(self, s: SensorDef, m: MetricDef, row: int) -> float:
        v = self.truth(m, row)
        return v + float(self.rng.normal()) * max(s.noise * abs(v), s.floor)

    @staticmethod
    def _due(s: SensorDef, d: _DevState, vals: dict[str, float], now: float) -> bool:
        since = now - d.last_sent
        if since >= s.period_s:
            return True
        if since < s.min_s:
            return False
        return any(abs(v - d.last_vals.get(k, math.inf)) > s.deadband * max(
            abs(d.last_vals.get(k, 0.0)), 10 * s.floor) for k, v in vals.items())

    def _birth(self, s: SensorDef, d: _DevState, vals: dict[str, float], t: float
               ) -> Message:
        ms = [sp.Metric("bdSeq", datatype=sp.INT64, value=d.bd),
              sp.Metric("Properties/Model", datatype=sp.STRING, value=f"GT-{s.kind[:4]}"),
              sp.Metric("Properties/Firmware", datatype=sp.STRING, value="1.2.0")]
        ms += [sp.Metric(m.name, alias=i + 1, datatype=sp.DOUBLE, value=vals[m.name])
               for i, m in enumerate(s.metrics)]
        return (f"spBv1.0/{GROUP}/NBIRTH/{s.id}", sp.encode_payload(sp.Payload(
            timestamp=int(t * 1000), seq=0, metrics=ms)))

    def _report(self, s: SensorDef, d: _DevState, vals: dict[str, float], t: float
                ) -> Message:
        if s.protocol == "senml":
            units = {m.name: m.unit for m in s.metrics}
            return s.topic, encode_senml(s.device, vals, t, units)
        d.seq = (d.seq + 1) & 0xFF
        ms = [sp.Metric(alias=i + 1, datatype=sp.DOUBLE, value=vals[m.name])
              for i, m in enumerate(s.metrics)]
        if s.kind == "weather_station":
            ms.append(sp.Metric("battery", datatype=sp.FLOAT, value=round(d.battery, 2)))
        return (f"spBv1.0/{GROUP}/NDATA/{s.id}", sp.encode_payload(sp.Payload(
            timestamp=int(t * 1000), seq=d.seq, metrics=ms)))


class FleetPublisher:
    """Runs a :class:`SensorFleet` on a thread, publishing at QoS 1 through paho."""

    TICK_S = 0.2

    def __init__(self, fleet: SensorFleet, url: str, *, rate_hz: float, start_row: int = 0,
                 client_id: str = "") -> None:
        self.fleet = fleet
        u = urlsplit(url)
        if u.scheme != "mqtt" or not u.hostname:
            raise HilError(f"--mqtt {url!r}: expected mqtt://HOST:PORT")
        self.host, self.port = u.hostname, u.port or 1883
        self.rate_hz = rate_hz
        self.start_row = start_row
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"gridtwin-emulate-{os.getpid()}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.rebirth_requests = 0
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_ncmd

    def _on_connect(self, c: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        c.subscribe(f"spBv1.0/{GROUP}/NCMD/+", qos=1)

    def _on_ncmd(self, c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A host asks an edge node for its BIRTH (Node Control/Rebirth = true)."""
        try:
            p = sp.decode_payload(bytes(msg.payload))
        except sp.SparkplugError:
            return
        if any(m.name == sp.REBIRTH_METRIC and m.value is True for m in p.metrics):
            self.rebirth_requests += 1
            self.fleet.request_rebirth(msg.topic.rsplit("/", 1)[-1])

    def start(self) -> None:
        try:
            self.client.connect(self.host, self.port)
        except OSError as exc:
            raise HilError(f"--mqtt: no broker at {self.host}:{self.port} ({exc})") from exc
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sensors", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t_start = time.time()
        n = self.fleet.trace.time.shape[0]
        while not self._stop.is_set():
            now = time.time()
            row = (self.start_row + int((now - t_start) * self.rate_hz)) % n
            for topic, payload in self.fleet.step(now, row):
                self.client.publish(topic, payload, qos=1)
                self.published += 1
            self._stop.wait(self.TICK_S)

    def close(self) -> dict[str, Any]:
        """Stop, disconnect; the fleet's counts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()
        st = self.fleet.stats
        return {"published": self.published, "rebirth_requests": self.rebirth_requests,
                "reports": st.reports, "dropped": st.dropped,
                "duplicated": st.duplicated, "births": st.births, "deaths": st.deaths}


class Broker:
    """A Mosquitto of our own on a free loopback port (anonymous, loopback only), for the
    demo and tests: :meth:`start` returns its ``mqtt://127.0.0.1:PORT`` URL."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout: float = 10.0) -> str:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            raise HilError("mosquitto is not installed (apt-get install mosquitto)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self._dir = tempfile.TemporaryDirectory(prefix="gridtwin-broker-", dir=self.workdir)
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return f"mqtt://127.0.0.1:{port}"
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise HilError(f"mosquitto did not start on port {port}") from None
                time.sleep(0.05)

    def close(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@contextlib.contextmanager
def private_broker(workdir: Path | None = None) -> Iterator[str]:
    """:class:`Broker` as a context manager: its URL while it runs."""
    b = Broker(workdir)
    try:
        yield b.start()
    finally:
        b.close()


def fleet_config(config: str, url: str) -> str:
    """The lines a twin config (bundled name or path) needs to use the IEEE33 fleet
    through the broker at ``url`` (subscribing to everything, the allowlist narrows)."""
    return config_text(ieee33_fleet(load_config(config).network), url.rstrip("/") + "/#")


def start_fleet(url: str, cfg: Any, trace: Any, *, rate_hz: float, seed: int = 0,
                start_row: int = 0) -> FleetPublisher:
    """The IEEE33 fleet publishing to the broker at ``url`` from ``trace`` (started)."""
    fleet = SensorFleet(ieee33_fleet(cfg.network), trace, cfg.network.base_mva, seed=seed)
    pub = FleetPublisher(fleet, url, rate_hz=rate_hz, start_row=start_row)
    pub.start()
    return pub
