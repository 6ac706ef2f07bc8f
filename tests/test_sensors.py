"""Sensor board (ageing with a fake clock), sensors config, device registry and the
sans-IO ingest of MQTT messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gateway.codecs import sparkplug as sp
from gateway.codecs.senml import encode_senml
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import sensors_of, topic_matches
from gateway.snapshot import Flag
from tests.sensorhelpers import sensor_config_text

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return parse_config(sensor_config_text())


def _ingest(cfg) -> SensorIngest:  # type: ignore[no-untyped-def]
    return SensorIngest.from_config(cfg, sensors_of(cfg))


def _snapshot(cfg):  # type: ignore[no-untyped-def]
    n = len(cfg.channels)
    return np.full(n, np.nan), np.full(n, np.uint32(Flag.MISSING), np.uint32)


def test_config_parses_and_names_bad_keys(cfg) -> None:  # type: ignore[no-untyped-def]
    sc = sensors_of(cfg)
    assert sc.mqtt is not None and sc.mqtt.topic == "#" and sc.mqtt.max_payload == 4096
    assert [s.id for s in sc.sensors] == ["ls26", "tx18"]
    assert sc.sensors[0].stale_s == 30 and sc.sensors[0].channels == {"P": "ls26.p",
                                                                      "Q": "ls26.q"}
    bad = sensor_config_text().replace('Q = "ls26.q"', 'Q = "nope.q"').replace(
        "qos = 1", "qos = 2").replace('max_payload = 4096', 'password = "x"')
    with pytest.raises(ConfigError) as ei:
        parse_config(bad)
    msg = str(ei.value)
    assert "sensors[0] (ls26).channels.Q: no channel named 'nope.q'" in msg
    assert "mqtt.qos: must be 0 or 1" in msg
    assert "mqtt.password: passwords are not written in configs" in msg
    carried = sensor_config_text().replace('"ls26.p"', '"flow.6-26.p"')
    with pytest.raises(ConfigError, match="also carried by a stream"):
        parse_config(carried)


def test_topic_filters() -> None:
    assert topic_matches("spBv1.0/feeder/#", "spBv1.0/feeder/NDATA/e")
    assert topic_matches("senml/+/v", "senml/tx/v")
    assert not topic_matches("senml/+/v", "senml/tx/i")
    assert not topic_matches("a/b", "a/b/c")


def test_board_ages_values_with_fake_clock(cfg) -> None:  # type: ignore[no-untyped-def]
    ing = _ingest(cfg)
    board = ing.board
    i_p = cfg.channel_index["ls26.p"]
    values, flags = _snapshot(cfg)
    board.fill(values, flags, T0)
    assert math.isnan(values[i_p]) and flags[i_p] & Flag.MISSING  # never reported
    assert board.update("feeder/lat/ls26", "P", 0.50, T0 - 3.0, T0) == "new"
    values, flags = _snapshot(cfg)
    st = board.fill(values, flags, T0 + 1.0)
    assert values[i_p] == 0.50 and flags[i_p] == 0 and st.filled == 1
    k = list(board.channels).index(("feeder/lat/ls26", "P"))
    s_fresh = board.sigmas(T0 + 1.0)[k]
    assert board.sigmas(T0 + 20.0)[k] > s_fresh  # sigma grows with age
    s0 = cfg.channels[i_p].sigma_at(0.5)
    ch = board.channels[("feeder/lat/ls26", "P")]
    assert board.sigmas(T0 + 20.0)[k] == pytest.approx(math.sqrt(s0**2 + s0**2 / 10.0 * 20.0))
    assert math.isnan(board.sigmas(T0 + 61.0)[k])  # past max_age_s: no sigma, left out
    assert ch.sigma(0.0) == pytest.approx(s0)
    values, flags = _snapshot(cfg)
    board.fill(values, flags, T0 + 45.0)  # past stale_s=30: used, flagged STALE
    assert values[i_p] == 0.50 and flags[i_p] == Flag.STALE
    values, flags = _snapshot(cfg)
    st = board.fill(values, flags, T0 + 61.0)  # past max_age_s=60: left out
    assert math.isnan(values[i_p]) and flags[i_p] == Flag.MISSING and st.missing == 4


def test_board_learns_variability_and_orders_by_device_time(cfg) -> None:  # type: ignore[no-untyped-def]
    board = _ingest(cfg).board
    key = ("feeder/lat/ls26", "P")
    ch = board.channels[key]
    for j in range(40):  # a channel that moves a lot: tau shrinks below the prior
        board.update(*key, 0.5 + (0.2 if j % 2 else -0.2), T0 + 10.0 * j, T0 + 10.0 * j)
    busy_tau = ch.tau
    assert busy_tau < 10.0
    quiet = _ingest(cfg).board
    qch = quiet.channels[key]
    for j in range(40):
        quiet.update(*key, 0.5, T0 + 10.0 * j, T0 + 10.0 * j)
    assert qch.tau > busy_tau * 10
    assert board.update(*key, 9.9, T0, T0 + 500.0) == "older"
    assert ch.value != 9.9 and ch.older == 1
    assert board.update(*key, 9.9, ch.device_time, T0 + 500.0) == "same"
    assert board.update("other", "P", 1.0, T0, T0) == "unmapped"


def _birth(seq: int = 0, bd: int = 0, ts: float = T0) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=int(ts * 1000), seq=seq, metrics=[
        sp.Metric("bdSeq", datatype=sp.INT64, value=bd),
        sp.Metric("Properties/Firmware", datatype=sp.STRING, value="2.0"),
        sp.Metric("battery", alias=9, datatype=sp.FLOAT, value=87.0),
        sp.Metric("P", alias=1, datatype=sp.DOUBLE, value=0.3),
        sp.Metric("Q", alias=2, datatype=sp.DOUBLE, value=0.1)]))


def _data(seq: int, p: float, ts: float) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=int(ts * 1000), seq=seq, metrics=[
        sp.Metric(alias=1, datatype=sp.DOUBLE, value=p)]))


def test_ingest_events_duplicates_death_rebirth_and_unassigned(cfg) -> None:  # type: ignore[no-untyped-def]
    ing = _ingest(cfg)
    top = "spBv1.0/feeder/{}/lat/ls26"
    ev = ing.feed(top.format("NBIRTH").replace("/ls26", ""), _birth(), T0)
    assert [e.kind for e in ev] == ["device_new", "device_online"]  # the node itself
    ev = ing.feed("spBv1.0/feeder/DBIRTH/lat/ls26", sp.encode_payload(sp.Payload(
        timestamp=int(T0 * 1000), seq=1, metrics=[
            sp.Metric("Properties/Firmware", datatype=sp.STRING, value="2.0"),
            sp.Metric("battery", alias=9, datatype=sp.FLOAT, value=87.0),
            sp.Metric("P", alias=1, datatype=sp.DOUBLE, value=0.3)])), T0)
    assert [(e.kind, e.device) for e in ev] == [("device_online", "feeder/lat/ls26")]
    dev = ing.registry.devices["feeder/lat/ls26"]
    assert dev.firmware == "2.0" and dev.health == {"battery": 87.0}
    assert dev.bus == [] and dev.branch == [cfg.channels[cfg.channel_index["ls26.p"]].branch]
    ddata = sp.encode_payload(sp.Payload(timestamp=int((T0 + 5) * 1000), seq=2, metrics=[
        sp.Metric(alias=1, datatype=sp.DOUBLE, value=0.35)]))
    assert ing.feed(top.format("DDATA"), ddata, T0 + 5.2) == []
    assert ing.feed(top.format("DDATA"), ddata, T0 + 5.3) == []  # QoS 1 duplicate
    assert ing.stats.duplicates == 1 and dev.errors["duplicates"] == 1
    assert ing.board.channels[("feeder/lat/ls26", "P")].value == 0.35
    # out of order: an older reading after a newer one
    late = sp.encode_payload(sp.Payload(timestamp=int((T0 + 4) * 1000), seq=1, metrics=[
        sp.Metric(alias=1, datatype=sp.DOUBLE, value=0.1)]))
    ing.feed(top.format("DDATA"), late, T0 + 6.0)
    assert ing.stats.out_of_order >= 1 and ing.board.channels[
        ("feeder/lat/ls26", "P")].value == 0.35
    # the node dies: its device goes offline with it; reborn, online again
    will = sp.encode_payload(sp.Payload(metrics=[sp.Metric("bdSeq", datatype=sp.INT64,
                                                           value=0)]))
    ev = ing.feed("spBv1.0/feeder/NDEATH/lat", will, T0 + 7)
    assert {(e.kind, e.device) for e in ev} == {("device_offline", "feeder/lat"),
                                                ("device_offline", "feeder/lat/ls26")}
    assert dev.quality(T0 + 7) == "offline"
    i_p = cfg.channel_index["ls26.p"]
    values, flags = _snapshot(cfg)
    ing.board.fill(values, flags, T0 + 7)  # dead: the last value, flagged STALE
    assert values[i_p] == 0.35 and flags[i_p] == Flag.STALE
    ing.feed("spBv1.0/feeder/NBIRTH/lat", _birth(bd=1, ts=T0 + 8), T0 + 8)
    ev = ing.feed("spBv1.0/feeder/DBIRTH/lat/ls26", sp.encode_payload(sp.Payload(
        timestamp=int((T0 + 8) * 1000), seq=1, metrics=[
            sp.Metric("P", alias=1, datatype=sp.DOUBLE, value=0.4)])), T0 + 8)
    assert [e.kind for e in ev] == ["device_online"] and dev.births == 2
    values, flags = _snapshot(cfg)
    ing.board.fill(values, flags, T0 + 8)  # reborn with a fresh value
    assert values[i_p] == 0.4 and flags[i_p] == 0
    # an unconfigured device announces itself: unassigned, with config lines
    ev = ing.feed("spBv1.0/feeder/DBIRTH/lat/ls99", sp.encode_payload(sp.Payload(
        timestamp=int((T0 + 9) * 1000), seq=2, metrics=[
            sp.Metric("I", alias=1, datatype=sp.DOUBLE, value=0.2)])), T0 + 9)
    assert ev[0].kind == "device_new" and 'device = "feeder/lat/ls99"' in ev[0].detail[
        "config"]
    j = ing.devices_json(T0 + 9)
    assert j["counts"]["unassigned"] == 2 and j["counts"]["online"] == 1
    u = next(d for d in j["devices"] if d["device"] == "feeder/lat/ls99")
    assert '"I" = "METER.QUANTITY"' in u["config"] and u["quality"] == "unassigned"
    json.dumps(j)  # JSON-able


def test_ingest_senml_malformed_allowlist_size_and_silence(cfg) -> None:  # type: ignore[no-untyped-def]
    ing = _ingest(cfg)
    pack = encode_senml("senml/tx18", {"pinj": 0.05, "qinj": 0.02, "battery": 55.0}, T0)
    ev = ing.feed("senml/tx18", pack, T0 + 1)
    assert [e.kind for e in ev] == ["device_online"]
    dev = ing.registry.devices["senml/tx18"]
    assert dev.model == "PT-2" and dev.health["battery"] == 55.0
    assert dev.clock_offset_s == pytest.approx(1.0)
    ing.feed("senml/tx18", pack, T0 + 1.5)  # the same pack again
    assert ing.stats.duplicates == 1
    ing.feed("senml/tx18", b'[{"n": "pinj"', T0 + 2)
    assert ing.stats.malformed == 1
    ing.feed("spBv1.0/feeder/DDATA/lat/ls26", b"\x0a\x05ab", T0 + 2)
    assert ing.stats.malformed == 2
    ing.feed("other/topic", pack, T0 + 2)
    assert ing.stats.not_allowed == 1
    ing.feed("senml/big", b"[" + b" " * 5000 + b"]", T0 + 2)
    assert ing.stats.too_large == 1
    values, flags = _snapshot(cfg)
    ing.board.fill(values, flags, T0 + 3)
    assert values[cfg.channel_index["tx18.pinj"]] == 0.05
    assert ing.next_deadline() == pytest.approx(T0 + 1.5 + 60)
    assert ing.tick(T0 + 30) == []
    ev = ing.tick(T0 + 62)
    assert [(e.kind, e.detail["reason"]) for e in ev] == [("device_offline", "silent")]
    assert dev.quality(T0 + 62) == "offline"


def test_unknown_alias_or_gap_asks_for_a_rebirth_once_per_interval(cfg) -> None:  # type: ignore[no-untyped-def]
    ing = _ingest(cfg)
    def data(seq: int) -> bytes:
        return sp.encode_payload(sp.Payload(timestamp=int(T0 * 1000) + seq, seq=seq,
                                            metrics=[sp.Metric(alias=1, datatype=sp.DOUBLE,
                                                               value=0.2)]))

    ing.feed("spBv1.0/feeder/NDATA/lat", data(5), T0)  # the host missed the BIRTH
    ing.feed("spBv1.0/feeder/NDATA/lat", data(6), T0 + 1)
    cmds = ing.take_commands()
    assert len(cmds) == 1 and ing.take_commands() == []
    topic, payload = cmds[0]
    assert topic == "spBv1.0/feeder/NCMD/lat"
    m = sp.decode_payload(payload).metrics
    assert [(x.name, x.value) for x in m] == [(sp.REBIRTH_METRIC, True)]
    ing.feed("spBv1.0/feeder/NDATA/lat", data(9), T0 + 11)
    assert len(ing.take_commands()) == 1 and ing.stats.rebirths_requested == 2


def test_unassigned_devices_are_capped(cfg) -> None:  # type: ignore[no-untyped-def]
    ing = _ingest(cfg)
    ing.registry.max_unassigned = 3
    for j in range(5):
        ing.feed(f"senml/x{j}", encode_senml(f"senml/x{j}", {"v": 1.0}, T0), T0 + j)
    j = ing.devices_json(T0 + 5)
    assert j["counts"]["unassigned"] == 3 and j["unassigned_refused"] == 2
