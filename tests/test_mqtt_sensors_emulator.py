"""The emulator's MQTT micro sensors: deterministic behaviour (report-by-exception,
dropouts, duplicates, skew, death and rebirth), values from the trace's truth, the config
lines they come with, and publishing through a real Mosquitto."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_config, parse_config
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import sensors_of
from hil.mqttsensors import FleetPublisher, SensorFleet, config_text, ieee33_fleet, private_broker
from tests.sensorhelpers import ieee33_text

T0 = 1_800_000_000.0
TICK = 0.2


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return load_config("ieee33")


def synthetic_trace(cfg, rows: int = 4000):  # type: ignore[no-untyped-def]
    """Truth arrays shaped like a scenario trace's: slow ramps, one row per 20 ms."""
    net = cfg.network
    k = np.arange(rows)[:, None]
    ramp = 1.0 + 0.3 * np.sin(k / 600.0)
    s_br = (0.02 + 0.01j) * ramp * np.ones((1, net.n_branch))
    s_inj = (-0.005 - 0.002j) * ramp * np.ones((1, net.n_bus))
    weather = np.zeros((rows, len(cfg.plants), 6))
    weather[:, :, 0] = 600.0 * ramp
    weather[:, :, 3] = 25.0
    return SimpleNamespace(time=T0 + np.arange(rows) * 0.02, s_branch_from=s_br,
                           s_inj=s_inj, weather=weather)


def run_fleet(fleet: SensorFleet, seconds: float) -> list[tuple[float, str, bytes]]:
    out = []
    for j in range(int(seconds / TICK)):
        now = T0 + j * TICK
        for topic, payload in fleet.step(now, int(j * TICK * 50)):
            out.append((now, topic, payload))
    return out


def test_fleet_is_deterministic_and_behaves_like_edge_devices(cfg) -> None:  # type: ignore[no-untyped-def]
    tr = synthetic_trace(cfg)
    defs = ieee33_fleet(cfg.network)
    kw = {"seed": 3, "dropout_pct": 10.0, "duplicate_pct": 10.0}
    a = run_fleet(SensorFleet(defs, tr, cfg.network.base_mva, **kw), 60.0)
    b = run_fleet(SensorFleet(defs, tr, cfg.network.base_mva, **kw), 60.0)
    assert a == b and len(a) > 20
    topics = [t for _, t, _ in a]
    assert topics.count("spBv1.0/feeder/NDEATH/ls26") == 1
    assert topics.count("spBv1.0/feeder/NBIRTH/ls26") == 2  # born, died at 15 s, reborn at 25 s
    death_at = next(t for t, tp, _ in a if tp.endswith("NDEATH/ls26")) - T0
    assert 15.0 <= death_at < 15.0 + TICK
    # the NDEATH carries the first session's bdSeq (0); the second NBIRTH the next
    assert any(tp.startswith("senml/pt/tx") for tp in topics)
    fl = SensorFleet(defs, tr, cfg.network.base_mva, **kw)
    run_fleet(fl, 60.0)
    assert fl.stats.dropped > 0 and fl.stats.duplicated > 0
    # report-by-exception: never more often than min_s (1 s; a duplicate is the same
    # report twice), and a transformer meter (5 % deadband, quiet load) waits its 15 s
    for sid, least in (("ls19", 1.0), ("ls23", 1.0), ("tx18", 15.0)):
        times = sorted(set(t for t, tp, _ in a if tp.endswith(f"/{sid}")))
        assert len(times) >= 2 and np.diff(times).min() >= least - 1e-6


def test_fleet_config_and_ingest_agree_with_the_truth(cfg) -> None:  # type: ignore[no-untyped-def]
    tr = synthetic_trace(cfg)
    defs = ieee33_fleet(cfg.network)
    twin = parse_config(ieee33_text() + config_text(defs, "mqtt://127.0.0.1:1883/#"))
    ing = SensorIngest.from_config(twin, sensors_of(twin))
    fleet = SensorFleet(defs, tr, cfg.network.base_mva, seed=5, duplicate_pct=10.0)
    events = []
    last = 0.0
    for now, topic, payload in run_fleet(fleet, 50.0):
        events += [(e.kind, e.device) for e in ing.feed(topic, payload, now)]
        last = now
    st = ing.stats
    assert st.malformed == 0 and st.not_allowed == 0 and st.unmapped == 0
    assert st.duplicates == fleet.stats.duplicated
    assert ("device_offline", "feeder/ls26") in events
    assert events.count(("device_online", "feeder/ls26")) == 2
    counts = ing.registry.counts(last)
    assert counts["unassigned"] == 0 and counts["online"] == len(defs)
    row = int((last - T0) * 50)
    k = list(cfg.network.branches.names).index("2-19")
    ch = ing.board.channels[("feeder/ls19", "P")]
    true_p = tr.s_branch_from[row, k].real * cfg.network.base_mva
    assert ch.value == pytest.approx(true_p, rel=0.1)  # within deadband + noise
    d = ing.registry.devices["feeder/ls19"]
    assert d.firmware == "1.2.0" and abs(d.clock_offset_s) <= 5.0  # the device's skew


def test_fleet_publishes_through_mosquitto(cfg) -> None:  # type: ignore[no-untyped-def]
    tr = synthetic_trace(cfg)
    got: list[str] = []
    with private_broker() as url:
        port = int(url.rsplit(":", 1)[1])
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub")
        sub.on_message = lambda c, u, m: got.append(m.topic)
        sub.connect("127.0.0.1", port)
        sub.subscribe("#", qos=1)
        sub.loop_start()
        try:
            fleet = SensorFleet(ieee33_fleet(cfg.network), tr, cfg.network.base_mva, seed=1)
            pub = FleetPublisher(fleet, url, rate_hz=50.0)
            pub.start()
            births = {f"spBv1.0/feeder/NBIRTH/{s}" for s in ("ls19", "ls23", "ls26", "ws8")}
            deadline = time.monotonic() + 15
            while not births <= set(got) and time.monotonic() < deadline:
                time.sleep(0.05)
            res = pub.close()
        finally:
            sub.loop_stop()
            sub.disconnect()
    assert births <= set(got)
    assert res["published"] >= len(births) and res["births"] >= len(births)


async def test_a_twin_joining_late_asks_for_births(cfg) -> None:  # type: ignore[no-untyped-def]
    """The fleet was born before the twin subscribed: the twin sees aliases it does not
    know, asks each node for a rebirth (NCMD) and then has names, values and devices."""
    from types import SimpleNamespace as NS

    from gateway.sensor_runner import open_sensors
    from tests.test_mqtt_transport import until

    tr = synthetic_trace(cfg)
    defs = ieee33_fleet(cfg.network)
    births = {f"spBv1.0/feeder/NBIRTH/{d.id}" for d in defs if d.protocol == "sparkplug"}
    with private_broker() as url:
        seen: set[str] = set()
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
        subscribed: list[bool] = []
        probe.on_message = lambda c, u, m: seen.add(m.topic)
        probe.on_subscribe = lambda *a: subscribed.append(True)
        probe.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
        probe.subscribe("spBv1.0/#", qos=1)
        probe.loop_start()
        pub = FleetPublisher(SensorFleet(defs, tr, cfg.network.base_mva, seed=2,
                                         dropout_pct=0.0), url, rate_hz=50.0)
        await until(lambda: bool(subscribed), "the probe's subscription")
        pub.start()
        try:
            # every birth went through the broker before the twin subscribes
            await until(lambda: births <= seen, "the fleet's births")
            twin = parse_config(ieee33_text() + config_text(defs, url + "/#"))
            events: list[tuple[str, dict[str, object]]] = []
            s = await open_sensors(twin, NS(), None, event=lambda k, src, d: events.append(
                (k, d)), clock=time.time, streams=lambda: [])
            assert s is not None
            try:
                ing = s.ingest
                ch = ing.board.channels[("feeder/ls19", "P")]
                await until(lambda: ch.updates > 0 and ing.stats.rebirths_requested > 0,
                            "a rebirth and values", timeout=30)
                await until(lambda: pub.rebirth_requests > 0, "the NCMD at the fleet")
                assert ing.registry.devices["feeder/ls19"].births >= 1
            finally:
                await s.close()
        finally:
            pub.close()
            probe.loop_stop()
            probe.disconnect()
