"""The MQTT transport against a real Mosquitto (a private broker per module): Sparkplug B
and SenML ingestion into the sensor board and registry, QoS 1 duplicates, out-of-order,
a device that dies (its process killed: the broker sends its will) and is reborn, a
malformed payload, a non-allowlisted topic, an oversized payload, credentials."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.codecs import sparkplug as sp
from gateway.codecs.senml import encode_senml
from gateway.config import parse_config
from gateway.errors import TransportError
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import sensors_of
from gateway.transports.base import TransportSpec, open_transport
from gateway.transports.mqtt import MqttTransport
from tests.sensorhelpers import broker, self_signed, sensor_config_text

T0 = time.time()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with broker() as p:
        yield p


async def until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def publisher(port: int, cid: str = "pub") -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def pub(c: mqtt.Client, topic: str, payload: bytes) -> None:
    c.publish(topic, payload, qos=1).wait_for_publish(10)


class Rig:
    """Transport -> ingest, as the gateway wires them; events and drops recorded."""

    def __init__(self, port: int) -> None:
        self.cfg = parse_config(sensor_config_text(port))
        sc = sensors_of(self.cfg)
        assert sc.mqtt is not None
        self.ingest = SensorIngest.from_config(self.cfg, sc)
        self.events: list[tuple[str, str]] = []
        self.drops: list[str] = []
        self.stream_events: list[str] = []
        spec = TransportSpec("mqtt", f"mqtt://127.0.0.1:{port}/#", format="mqtt")
        self.t = MqttTransport(spec, self.sink, on_drop=lambda s, topic: self.drops.append(
            topic), on_event=lambda s, k, d: self.stream_events.append(k),
            settings=sc.mqtt)

    def sink(self, stream: str, payload: bytes, topic: str | None, now: float) -> None:
        assert topic is not None
        for e in self.ingest.feed(topic, payload, now):
            self.events.append((e.kind, e.device))


def _birth(seq: int, bd: int, ts: float) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=int(ts * 1000), seq=seq, metrics=[
        sp.Metric("bdSeq", datatype=sp.INT64, value=bd)]))


def _dbirth(seq: int, ts: float, p: float) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=int(ts * 1000), seq=seq, metrics=[
        sp.Metric("Properties/Firmware", datatype=sp.STRING, value="3.1"),
        sp.Metric("P", alias=1, datatype=sp.DOUBLE, value=p),
        sp.Metric("Q", alias=2, datatype=sp.DOUBLE, value=p / 3)]))


def _ddata(seq: int, ts: float, p: float) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=int(ts * 1000), seq=seq, metrics=[
        sp.Metric(alias=1, datatype=sp.DOUBLE, value=p)]))


async def test_open_transport_by_scheme(port: int) -> None:
    t = open_transport(TransportSpec("m", f"mqtt://127.0.0.1:{port}/x/#", format="mqtt"),
                       lambda *a: None)
    assert isinstance(t, MqttTransport) and t.settings.topic == "x/#"
    await t.start()
    try:
        assert t.connected
    finally:
        await t.close()


async def test_sparkplug_and_senml_ingestion(port: int) -> None:
    rig = Rig(port)
    await rig.t.start()
    c = publisher(port, "edge-lat")
    try:
        assert rig.t.connected and "connected" in rig.stream_events
        node = "spBv1.0/feeder/{}/lat"
        pub(c, node.format("NBIRTH"), _birth(0, 0, T0))
        pub(c, node.format("DBIRTH") + "/ls26", _dbirth(1, T0, 0.30))
        pub(c, node.format("DDATA") + "/ls26", _ddata(2, T0 + 1, 0.31))
        pub(c, node.format("DDATA") + "/ls26", _ddata(2, T0 + 1, 0.31))  # QoS 1 resend
        pub(c, node.format("DDATA") + "/ls26", _ddata(4, T0 + 3, 0.33))
        pub(c, node.format("DDATA") + "/ls26", _ddata(3, T0 + 2, 0.32))  # late
        pub(c, "senml/tx18", encode_senml("senml/tx18", {"pinj": 0.04, "qinj": 0.01,
                                                         "battery": 71.0}, T0))
        pub(c, "senml/tx18", b'[{"bn": "senml/tx18/", "n": "pinj", "v": }]')  # malformed
        pub(c, "plant/secret", b"[]")  # not in the allowlist
        pub(c, "senml/huge", b"[" + b" " * 8000 + b"]")  # over max_payload
        ing = rig.ingest
        await until(lambda: len(rig.drops) == 2 and ing.stats.messages >= 7, "all messages")
        assert sorted(rig.drops) == ["plant/secret", "senml/huge"]
        assert rig.t.dropped == {"topic": 1, "size": 1}
        assert ing.stats.duplicates == 1 and ing.stats.gaps == 1
        assert ing.stats.out_of_order == 1 and ing.stats.malformed == 1
        ch = ing.board.channels[("feeder/lat/ls26", "P")]
        assert ch.value == 0.33 and ch.device_time == pytest.approx(T0 + 3, abs=1e-3)
        assert ing.board.channels[("senml/tx18", "pinj")].value == 0.04
        reg = ing.registry.devices
        assert reg["feeder/lat/ls26"].firmware == "3.1"
        assert reg["senml/tx18"].health == {"battery": 71.0}
        assert ("device_online", "feeder/lat/ls26") in rig.events
        assert ("device_new", "feeder/lat") in rig.events  # the node was not configured
    finally:
        c.loop_stop()
        c.disconnect()
        await rig.t.close()


EDGE = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from gateway.codecs import sparkplug as sp
    port, bd = int(sys.argv[1]), int(sys.argv[2])
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-proc")
    will = sp.encode_payload(sp.Payload(metrics=[sp.Metric("bdSeq", datatype=sp.INT64,
                                                           value=bd)]))
    c.will_set("spBv1.0/feeder/NDEATH/proc", will, qos=1)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    birth = sp.encode_payload(sp.Payload(timestamp=int(time.time() * 1000), seq=0,
        metrics=[sp.Metric("bdSeq", datatype=sp.INT64, value=bd)]))
    c.publish("spBv1.0/feeder/NBIRTH/proc", birth, qos=1).wait_for_publish(10)
    print("born", flush=True)
    time.sleep(600)
""")


async def test_device_death_by_will_and_rebirth(port: int) -> None:
    rig = Rig(port)
    await rig.t.start()
    procs = []
    try:
        for bd in (0, 1):
            p = subprocess.Popen([sys.executable, "-c", EDGE, str(port), str(bd)],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "born"
            await until(lambda bd=bd: rig.events.count(("device_online", "feeder/proc"))
                        == bd + 1, "the birth")
            p.kill()  # no DISCONNECT: the broker publishes the will (NDEATH)
            p.wait()
            await until(lambda bd=bd: rig.events.count(("device_offline", "feeder/proc"))
                        == bd + 1, "the will")
        d = rig.ingest.registry.devices["feeder/proc"]
        assert d.births == 2 and d.deaths == 2 and not d.online
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        await rig.t.close()


async def test_credentials() -> None:
    with broker(users={"twin": "s3cret"}) as p:
        cfg = parse_config(sensor_config_text(p).replace(
            "qos = 1", 'qos = 1\nusername = "twin"\npassword_env = "GT_TEST_MQTT_PW"'))
        sc = sensors_of(cfg)
        assert sc.mqtt is not None and sc.mqtt.username == "twin"
        spec = TransportSpec("mqtt", f"mqtt://127.0.0.1:{p}/#", format="mqtt")
        bad = MqttTransport(spec, lambda *a: None, settings=sc.mqtt, password="wrong")
        with pytest.raises(TransportError, match="refused"):
            await bad.start()
        got: list[str] = []
        good = MqttTransport(spec, lambda s, data, topic, now: got.append(str(topic)),
                             settings=sc.mqtt, password="s3cret")
        await good.start()
        try:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="auth-pub")
            c.username_pw_set("twin", "s3cret")
            c.connect("127.0.0.1", p)
            c.loop_start()
            pub(c, "senml/tx18", encode_senml("senml/tx18", {"pinj": 0.1}, T0))
            await until(lambda: got == ["senml/tx18"], "the authenticated message")
            c.loop_stop()
            c.disconnect()
        finally:
            await good.close()


async def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with broker(tls=(cert, key)) as p:
        cfg = parse_config(sensor_config_text(p).replace(
            "qos = 1", f'qos = 1\ntls = true\nca_file = "{cert}"'))
        sc = sensors_of(cfg)
        assert sc.mqtt is not None and sc.mqtt.tls
        got: list[str] = []
        spec = TransportSpec("mqtt", f"mqtts://127.0.0.1:{p}/#", format="mqtt")
        t = MqttTransport(spec, lambda s, data, topic, now: got.append(str(topic)),
                          settings=sc.mqtt)
        await t.start()
        try:
            assert t.connected
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-pub")
            c.tls_set(ca_certs=str(cert))
            c.connect("127.0.0.1", p)
            c.loop_start()
            pub(c, "senml/tx18", encode_senml("senml/tx18", {"pinj": 0.1}, T0))
            await until(lambda: got == ["senml/tx18"], "the message over TLS")
            c.loop_stop()
            c.disconnect()
        finally:
            await t.close()
