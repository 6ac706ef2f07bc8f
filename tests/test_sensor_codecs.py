"""Sparkplug B and SenML codecs, sans-IO; the hand-written protobuf codec is checked
against the ``protobuf`` package reading and writing the same messages."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gateway.codecs import sparkplug as sp
from gateway.codecs.senml import SenmlError, decode_senml, encode_senml, split_name


def _pb_classes() -> tuple[type, type]:
    """Sparkplug B Payload and Metric classes built from a descriptor in Python (the
    subset of the official schema the gateway reads)."""
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="spb_test.proto", package="spbtest",
                                            syntax="proto2")
    payload = fd.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")

    def add(msg: descriptor_pb2.DescriptorProto, name: str, num: int, typ: int,
            label: int = F.LABEL_OPTIONAL, type_name: str = "") -> None:
        f = msg.field.add(name=name, number=num, type=typ, label=label)
        if type_name:
            f.type_name = type_name

    add(payload, "timestamp", 1, F.TYPE_UINT64)
    add(payload, "metrics", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".spbtest.Payload.Metric")
    add(payload, "seq", 3, F.TYPE_UINT64)
    add(payload, "uuid", 4, F.TYPE_STRING)
    add(payload, "body", 5, F.TYPE_BYTES)
    for name, num, typ in (("name", 1, F.TYPE_STRING), ("alias", 2, F.TYPE_UINT64),
                           ("timestamp", 3, F.TYPE_UINT64), ("datatype", 4, F.TYPE_UINT32),
                           ("is_historical", 5, F.TYPE_BOOL), ("is_transient", 6, F.TYPE_BOOL),
                           ("is_null", 7, F.TYPE_BOOL), ("int_value", 10, F.TYPE_UINT32),
                           ("long_value", 11, F.TYPE_UINT64), ("float_value", 12, F.TYPE_FLOAT),
                           ("double_value", 13, F.TYPE_DOUBLE),
                           ("boolean_value", 14, F.TYPE_BOOL),
                           ("string_value", 15, F.TYPE_STRING),
                           ("bytes_value", 16, F.TYPE_BYTES)):
        add(metric, name, num, typ)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    P = message_factory.GetMessageClass(pool.FindMessageTypeByName("spbtest.Payload"))
    M = message_factory.GetMessageClass(pool.FindMessageTypeByName("spbtest.Payload.Metric"))
    return P, M


PB_PAYLOAD, PB_METRIC = _pb_classes()


def test_encoded_payload_reads_back_in_protobuf() -> None:
    p = sp.Payload(timestamp=1_700_000_000_123, seq=7, metrics=[
        sp.Metric("I", alias=3, timestamp=1_700_000_000_100, datatype=sp.DOUBLE, value=0.125),
        sp.Metric("T", alias=4, datatype=sp.FLOAT, value=21.5),
        sp.Metric("n", datatype=sp.INT8, value=-3),
        sp.Metric("big", datatype=sp.UINT64, value=2**40 + 5),
        sp.Metric("ok", datatype=sp.BOOLEAN, value=True),
        sp.Metric("fw", datatype=sp.STRING, value="2.1.0"),
        sp.Metric("gone", datatype=sp.DOUBLE, value=None),
    ])
    msg = PB_PAYLOAD.FromString(sp.encode_payload(p))
    assert msg.timestamp == 1_700_000_000_123 and msg.seq == 7
    m = list(msg.metrics)
    assert (m[0].name, m[0].alias, m[0].double_value) == ("I", 3, 0.125)
    assert m[0].timestamp == 1_700_000_000_100
    assert m[1].float_value == 21.5
    assert m[2].int_value & 0xFF == 0xFD  # two's complement in the low byte
    assert m[3].long_value == 2**40 + 5
    assert m[4].boolean_value is True
    assert m[5].string_value == "2.1.0"
    assert m[6].is_null


def test_protobuf_payload_decodes() -> None:
    msg = PB_PAYLOAD(timestamp=1_600_000_000_000, seq=255, uuid="u1", body=b"\x00\x01")
    msg.metrics.add(name="Current", alias=1, datatype=sp.DOUBLE, double_value=-2.5)
    msg.metrics.add(alias=1, datatype=sp.INT16, int_value=0xFFFFFFFE)  # -2, sign-extended
    msg.metrics.add(name="s", datatype=sp.STRING, string_value="héllo")
    msg.metrics.add(name="f", datatype=sp.FLOAT, float_value=1.5, is_historical=True)
    p = sp.decode_payload(msg.SerializeToString())
    assert (p.timestamp, p.seq, p.uuid, p.body) == (1_600_000_000_000, 255, "u1", b"\x00\x01")
    assert [m.value for m in p.metrics] == [-2.5, -2, "héllo", 1.5]
    assert p.metrics[1].name is None and p.metrics[1].alias == 1
    assert p.metrics[3].is_historical


def test_truncated_payload_names_offset() -> None:
    data = sp.encode_payload(sp.Payload(timestamp=1, seq=1, metrics=[
        sp.Metric("x", datatype=sp.DOUBLE, value=1.0)]))
    with pytest.raises(sp.SparkplugError) as ei:
        sp.decode_payload(data[:-3])
    assert ei.value.offset > 0 and "declares" in ei.value.reason
    with pytest.raises(sp.SparkplugError, match="wire type"):
        sp.decode_payload(b"\x0b\x01")  # field 1, wire type 3 (group)


def _birth(seq: int = 0, bd: int = 0, ts: int = 1000) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=ts, seq=seq, metrics=[
        sp.Metric("bdSeq", datatype=sp.INT64, value=bd),
        sp.Metric("Properties/Firmware", datatype=sp.STRING, value="1.4"),
        sp.Metric("I", alias=1, datatype=sp.DOUBLE, value=0.1),
    ]))


def _data(seq: int, v: float, ts: int) -> bytes:
    return sp.encode_payload(sp.Payload(timestamp=ts, seq=seq, metrics=[
        sp.Metric(alias=1, datatype=sp.DOUBLE, value=v)]))


def test_session_aliases_sequence_duplicates_and_death() -> None:
    s = sp.SparkplugSession()
    top = "spBv1.0/feeder/{}/ls7"
    b = s.feed(top.format("NBIRTH"), _birth(), 10.0)
    assert b.birth and b.attributes == {"Properties/Firmware": "1.4"}
    assert [(r.device, r.name, r.value) for r in b.readings if r.name == "I"] == [
        ("feeder/ls7", "I", 0.1)]
    d1 = s.feed(top.format("NDATA"), _data(1, 0.2, 2000), 11.0)
    assert d1.seq_status == "ok" and d1.readings[0].value == 0.2
    assert d1.readings[0].time == 2.0
    dup = s.feed(top.format("NDATA"), _data(1, 0.2, 2000), 11.1)
    assert dup.seq_status == "duplicate" and not dup.readings
    gap = s.feed(top.format("NDATA"), _data(4, 0.4, 5000), 12.0)
    assert (gap.seq_status, gap.missed, gap.rebirth_needed) == ("gap", 2, True)
    late = s.feed(top.format("NDATA"), _data(3, 0.3, 4000), 12.1)
    assert late.seq_status == "late" and late.readings[0].value == 0.3
    stale_will = sp.encode_payload(sp.Payload(metrics=[
        sp.Metric("bdSeq", datatype=sp.INT64, value=9)]))
    assert not s.feed(top.format("NDEATH"), stale_will, 13.0).death
    will = sp.encode_payload(sp.Payload(metrics=[sp.Metric("bdSeq", datatype=sp.INT64,
                                                           value=0)]))
    assert s.feed(top.format("NDEATH"), will, 13.0).death
    # reborn: seq restarts at 0, a fresh alias table
    assert s.feed(top.format("NBIRTH"), _birth(bd=1, ts=9000), 14.0).birth
    assert s.feed(top.format("NDATA"), _data(1, 0.5, 9500), 14.1).seq_status == "ok"


def test_unknown_alias_and_bad_topics() -> None:
    s = sp.SparkplugSession()
    m = s.feed("spBv1.0/g/NDATA/e", _data(5, 1.0, 1), 0.0)
    assert m.unknown_aliases == 1 and m.rebirth_needed and not m.readings
    with pytest.raises(sp.SparkplugError, match="message type"):
        s.feed("spBv1.0/g/NFOO/e", b"", 0.0)
    with pytest.raises(sp.SparkplugError, match="device id"):
        s.feed("spBv1.0/g/DDATA/e", b"", 0.0)
    with pytest.raises(sp.SparkplugError, match="sequence"):
        s.feed("spBv1.0/g/NDATA/e", sp.encode_payload(sp.Payload(timestamp=1)), 0.0)


def test_device_birth_data_death() -> None:
    s = sp.SparkplugSession()
    s.feed("spBv1.0/g/NBIRTH/e", _birth(), 0.0)
    db = sp.encode_payload(sp.Payload(timestamp=1, seq=1, metrics=[
        sp.Metric("V", alias=7, datatype=sp.FLOAT, value=230.0)]))
    assert s.feed("spBv1.0/g/DBIRTH/e/tx1", db, 0.0).birth
    dd = s.feed("spBv1.0/g/DDATA/e/tx1", sp.encode_payload(sp.Payload(
        timestamp=2000, seq=2, metrics=[sp.Metric(alias=7, datatype=sp.FLOAT,
                                                  value=231.0)])), 0.0)
    assert [(r.device, r.name, r.value) for r in dd.readings] == [("g/e/tx1", "V", 231.0)]
    death = s.feed("spBv1.0/g/DDEATH/e/tx1", sp.encode_payload(sp.Payload(seq=3)), 0.0)
    assert death.death and death.topic.device_id == "g/e/tx1"


def test_senml_base_fields_relative_time_and_values() -> None:
    pack = [{"bn": "urn:dev:tx12:", "bt": 1.7e9, "bu": "V", "n": "v", "v": 231.5},
            {"n": "i", "u": "A", "t": 1, "v": 12},
            {"n": "on", "vb": True},
            {"n": "fw", "vs": "3.2"},
            {"bn": "ws1/", "bt": 0, "n": "temp_air", "t": -5, "v": 21.0}]
    rs = decode_senml(json.dumps(pack).encode(), now=1000.0)
    assert [(r.device, r.name, r.value, r.time, r.unit) for r in rs] == [
        ("urn:dev:tx12", "v", 231.5, 1.7e9, "V"),
        ("urn:dev:tx12", "i", 12.0, 1.7e9 + 1, "A"),
        ("urn:dev:tx12", "on", 1.0, 1.7e9, "V"),
        ("urn:dev:tx12", "fw", "3.2", 1.7e9, "V"),
        ("ws1", "temp_air", 21.0, 995.0, "V"),
    ]
    rt = decode_senml(encode_senml("lat/ls7", {"im": 0.05}, 1.7e9, {"im": "kA"}), 0.0)
    assert [(r.device, r.name, r.value, r.unit) for r in rt] == [("lat/ls7", "im", 0.05, "kA")]
    assert split_name("plain") == ("plain", "")


@pytest.mark.parametrize("payload, where, what", [
    (b'{"n": "x"}', 0, "JSON array"),
    (b'[{"n": "a", "v": 1}, {"n": "b"}]', 21, "no value"),
    (b'[{"n": "a", "v": 1}, 7]', 21, "JSON object"),
    (b'[{"n": "a", "v": "x"}]', 1, "finite number"),
    (b'[{"n": "a", "v": 1} {"n": "b"}]', 20, "expected"),
    (b'[{"n": "a", "v": 1', 18, "invalid JSON"),
    (b'[{"v": 1}]', 1, "without a name"),
    (b"\xff[", 0, "UTF-8"),
])
def test_senml_errors_name_offset(payload: bytes, where: int, what: str) -> None:
    with pytest.raises(SenmlError) as ei:
        decode_senml(payload, 0.0)
    assert what in ei.value.reason and ei.value.offset == where


def test_senml_nan_is_refused() -> None:
    with pytest.raises(SenmlError):
        decode_senml(b'[{"n": "a", "v": NaN}]', 0.0)
    assert math.isfinite(decode_senml(b'[{"n":"a","v":1e3}]', 0.0)[0].value)  # type: ignore
