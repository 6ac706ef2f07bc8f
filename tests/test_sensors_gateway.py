"""Edge sensors in the running twin: the pipeline fills sensor channels into snapshots;
the gateway subscribes to a real Mosquitto, answers ``GET /devices``, exports device
metrics and publishes its outputs on MQTT."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.codecs import sparkplug as sp
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.codecs.senml import encode_senml
from gateway.config import Stream, TwinConfig, parse_config
from gateway.pipeline import Handoff, Pipeline
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import sensors_of
from gateway.snapshot import Flag
from gateway.telemetry import Telemetry
from tests.sensorhelpers import broker, sensor_config_text
from tests.test_mqtt_transport import until

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with broker() as p:
        yield p


def frame(stream: Stream, k: int, ts: float) -> bytes:
    codec = GtnetSktCodec([p.type for p in stream.points], header=stream.header)
    return codec.build(np.arange(len(stream.points), dtype=float) + 1.0 + k, seq=k, ts=ts)


def test_pipeline_fills_sensor_channels_with_age_flags() -> None:
    cfg = parse_config(sensor_config_text())
    ing = SensorIngest.from_config(cfg, sensors_of(cfg))
    p = Pipeline(cfg, Telemetry(cfg, clock=lambda: 0.0))
    p.sensors = ing.board
    ing.feed("senml/tx18", encode_senml("senml/tx18", {"pinj": -0.06, "qinj": -0.02},
                                        T0), T0)
    i_p, i_ls = cfg.channel_index["tx18.pinj"], cfg.channel_index["ls26.p"]

    def slot(k: int, now: float) -> Handoff:
        out: list[object] = []
        for j, name in enumerate(("pmu", "scada", "weather")):
            out = list(p.feed_frame(name, frame(cfg.stream(name), k, T0 + k / 50), now
                                    + j * 1e-3))
        return next(o for o in out if isinstance(o, Handoff))

    h = slot(0, T0 + 1.0)
    assert h.snapshot.values[i_p] == -0.06 and h.snapshot.flags[i_p] == 0
    assert math.isnan(h.snapshot.values[i_ls]) and h.snapshot.flags[i_ls] & Flag.MISSING
    h = slot(1, T0 + 40.0)  # older than stale_s = 30
    assert h.snapshot.values[i_p] == -0.06 and h.snapshot.flags[i_p] & Flag.STALE
    h = slot(2, T0 + 70.0)  # older than max_age_s = 60
    assert math.isnan(h.snapshot.values[i_p]) and h.snapshot.flags[i_p] == Flag.MISSING


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


async def test_gateway_ingests_sensors_serves_devices_and_publishes(port: int,
                                                                   tmp_path: Path) -> None:
    from gateway.app import Gateway, GatewayOptions

    text = sensor_config_text(port).replace(
        "max_payload = 4096", 'max_payload = 4096\npublish = "gridtwin/t"\n'
        "publish_interval_s = 0.05")
    cfg: TwinConfig = parse_config(text)
    db = tmp_path / "twin.db"
    opts = GatewayOptions(historian_url=f"sqlite:///{db}", metrics_bind="127.0.0.1:0",
                          quality=False,
                          spare=False, estimator_method="flat",
                          url_overrides={s.name: "udp://127.0.0.1:0" for s in cfg.streams})
    gw = Gateway(cfg, opts)
    got: dict[str, dict[str, object]] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ads")
    sub.on_message = lambda c, u, m: got.__setitem__(m.topic, json.loads(m.payload))
    sub.connect("127.0.0.1", port)
    sub.subscribe("gridtwin/t/#")
    sub.loop_start()
    edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge")
    edge.connect("127.0.0.1", port)
    edge.loop_start()
    await gw.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert gw.sensors is not None and gw.server is not None
        now = time.time()
        for t, payload in (
                ("spBv1.0/feeder/NBIRTH/lat", sp.encode_payload(sp.Payload(
                    timestamp=int(now * 1000), seq=0, metrics=[
                        sp.Metric("bdSeq", datatype=sp.INT64, value=0)]))),
                ("spBv1.0/feeder/DBIRTH/lat/ls26", sp.encode_payload(sp.Payload(
                    timestamp=int(now * 1000), seq=1, metrics=[
                        sp.Metric("P", alias=1, datatype=sp.DOUBLE, value=0.2),
                        sp.Metric("Q", alias=2, datatype=sp.DOUBLE, value=0.1)]))),
                ("senml/tx18", encode_senml("senml/tx18", {"pinj": -0.05, "qinj": -0.02},
                                            now))):
            edge.publish(t, payload, qos=1).wait_for_publish(10)
        ing = gw.sensors.ingest
        await until(lambda: ing.stats.messages >= 3, "the sensor messages")
        addr = {n: t.local_address for n, t in gw.transports.items()}
        for k in range(20):
            for s in cfg.enabled_streams:
                a = addr[s.name]
                assert a is not None
                udp.sendto(frame(s, k, now + k / 50), ("127.0.0.1", a[1]))
        await until(lambda: {"gridtwin/t/state", "gridtwin/t/flows", "gridtwin/t/residuals",
                             "gridtwin/t/flags"} <= set(got), "the published outputs")
        st = got["gridtwin/t/state"]
        assert st["twin"] == "ieee33" and len(st["vm_pu"]) == cfg.network.n_bus  # type: ignore
        flows = got["gridtwin/t/flows"]
        assert len(flows["p_mw"]) == cfg.network.n_branch  # type: ignore[arg-type]
        host, mport = gw.server.address  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        code, body = await loop.run_in_executor(None, _get,
                                                f"http://{host}:{mport}/devices")
        dev = json.loads(body)
        assert code == 200 and dev["counts"]["online"] == 2
        assert dev["counts"]["unassigned"] == 1  # the edge node itself
        ids = {d["id"]: d for d in dev["devices"]}
        assert ids["ls26"]["quality"] == "good" and ids["tx18"]["model"] == "PT-2"
        assert ids["pmu"]["source"] == "stream" and ids["pmu"]["quality"] == "good"
        # the meters the streams carry are devices too, located, with their stream's state
        assert ids["pmu6"]["bus"] == [6] and ids["pmu6"]["stream"] == "pmu"
        assert ids["flow.6-26"]["branch"] == [cfg.channels[cfg.channel_index[
            "flow.6-26.p"]].branch] and ids["flow.6-26"]["online"]
        code, body = await loop.run_in_executor(None, _get,
                                                f"http://{host}:{mport}/metrics")
        text = body.decode()
        assert 'gridtwin_devices{quality="online"} 2.0' in text
        assert 'gridtwin_mqtt_messages_total{result="messages"} 3.0' in text
        assert gw.summary()["devices"]["online"] == 2
    finally:
        udp.close()
        await gw.close()
        for c in (sub, edge):
            c.loop_stop()
            c.disconnect()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT name, quality, online, messages, detail FROM devices "
                           "ORDER BY id").fetchall()
        kinds = [k for (k,) in con.execute("SELECT kind FROM events WHERE source = "
                                           "'devices'")]
    assert ("ls26", "good", 1) in [r[:3] for r in rows]  # the final status at shutdown
    assert any(r[0] == "tx18" and r[3] == 1 and "PT-2" in r[4] for r in rows)
    assert kinds.count("device_online") == 3 and kinds.count("device_new") == 1
