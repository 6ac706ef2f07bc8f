"""Sparkplug B over MQTT, sans-IO: topic and payload bytes in, readings and device events out.

Two layers:

* a minimal Protocol Buffers wire codec for the two Sparkplug B messages a host needs,
  ``Payload`` (timestamp 1, metrics 2, seq 3, uuid 4, body 5) and ``Metric`` (name 1,
  alias 2, timestamp 3, datatype 4, is_historical 5, is_transient 6, is_null 7, and the
  value oneof 10..16). Written by hand from the wire format (varints, fixed32/64,
  length-delimited fields) so the gateway needs no generated code and no build step;
  fields it does not use (metadata, properties, data sets, templates) are skipped by
  wire type, as protobuf readers must. Errors are :class:`SparkplugError` with the byte
  offset where decoding failed.
* :class:`SparkplugSession`: the host application's view of every edge node, fed one
  message at a time. It keeps the alias table announced by each NBIRTH/DBIRTH (DATA
  messages may name metrics by alias only), tracks the per-node sequence number (0..255,
  reset by NBIRTH) to recognise QoS 1 duplicates (same seq and timestamp again), gaps
  (messages lost) and late messages (out of order), and matches NDEATH's ``bdSeq`` with
  the NBIRTH's, so a stale will message from an earlier session does not take a reborn
  node offline.

Device ids are ``group/edge-node`` for a node and ``group/edge-node/device`` for a device.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from gateway.codecs.reading import Reading
from gateway.errors import FrameError

NAMESPACE = "spBv1.0"
MESSAGE_TYPES = ("NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "NDATA", "DDATA", "NCMD", "DCMD",
                 "STATE")
#: Sparkplug B data types (the ones carried as numbers or text)
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT = 9, 10, 11, 12, 13, 14
_INT_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64, UINT8: 8, UINT16: 16, UINT32: 32,
             UINT64: 64, DATETIME: 64}
_SIGNED = {INT8, INT16, INT32, INT64}
#: recent (seq, timestamp) pairs kept per node to recognise a redelivered message
RECENT = 32


class SparkplugError(FrameError):
    """A Sparkplug B topic or payload that cannot be decoded."""


# --------------------------------------------------------------------------- wire codec

@dataclass(slots=True)
class Metric:
    """One Sparkplug metric; ``value`` is int, float, bool, str, bytes or None (null)."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None  # ms since the UNIX epoch
    datatype: int = DOUBLE
    value: int | float | bool | str | bytes | None = None
    is_historical: bool = False
    is_transient: bool = False


@dataclass(slots=True)
class Payload:
    timestamp: int | None = None  # ms since the UNIX epoch
    metrics: list[Metric] = field(default_factory=list)
    seq: int | None = None
    uuid: str | None = None
    body: bytes | None = None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise SparkplugError("truncated varint", start)
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise SparkplugError("varint longer than 10 bytes", start)


Wire = int | bytes | tuple[int, int]


def _fields(data: bytes, base: int = 0) -> list[tuple[int, int, Wire, int]]:
    """``(field number, wire type, value, offset)`` of every field of one message;
    a length-delimited value is a ``(start, end)`` pair into ``data``."""
    out: list[tuple[int, int, Wire, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        at = pos
        key, pos = _varint(data, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise SparkplugError("field number 0", base + at)
        val: Wire
        if wt == 0:
            val, pos = _varint(data, pos)
        elif wt == 1 or wt == 5:
            n = 8 if wt == 1 else 4
            if pos + n > end:
                raise SparkplugError(f"truncated fixed{n * 8} field {num}", base + at)
            val = data[pos:pos + n]
            pos += n
        elif wt == 2:
            ln, pos = _varint(data, pos)
            if pos + ln > end:
                raise SparkplugError(f"field {num} declares {ln} bytes, {end - pos} left",
                                     base + at)
            val = (pos, pos + ln)
            pos += ln
        else:
            raise SparkplugError(f"unsupported wire type {wt} (field {num})", base + at)
        out.append((num, wt, val, base + at))
    return out


def _text(data: bytes, span: Wire, at: int) -> str:
    if not isinstance(span, tuple):
        raise SparkplugError("string field has the wrong wire type", at)
    s, e = span
    try:
        return data[s:e].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SparkplugError("string field is not UTF-8", at) from exc


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _decode_metric(data: bytes, base: int) -> Metric:
    m = Metric(datatype=0)
    raw: tuple[int, Wire | None, int] | None = None
    for num, wt, val, at in _fields(data, base):
        if num == 1 and wt == 2:
            m.name = _text(data, val, at)
        elif num in (2, 3, 4, 5, 6, 7) and wt == 0:
            assert isinstance(val, int)
            if num == 2:
                m.alias = val
            elif num == 3:
                m.timestamp = val
            elif num == 4:
                m.datatype = val
            elif num == 5:
                m.is_historical = bool(val)
            elif num == 6:
                m.is_transient = bool(val)
            elif val:
                raw = (7, None, at)
        elif 10 <= num <= 16:
            raw = (num, val, at)
    if raw is not None:
        m.value = _metric_value(data, m.datatype, *raw)
    return m


def _metric_value(data: bytes, dt: int, num: int, val: Wire | None, at: int
                  ) -> int | float | bool | str | bytes | None:
    if num == 7:
        return None
    if num in (10, 11) and isinstance(val, int):
        v = _signed(val, _INT_BITS.get(dt, 64)) if dt in _SIGNED else val
        return bool(v) if dt == BOOLEAN else v
    if num == 12 and isinstance(val, bytes):
        return float(struct.unpack("<f", val)[0])
    if num == 13 and isinstance(val, bytes):
        return float(struct.unpack("<d", val)[0])
    if num == 14 and isinstance(val, int):
        return bool(val)
    if num == 15 and isinstance(val, tuple):
        return _text(data, val, at)
    if num == 16 and isinstance(val, tuple):
        return data[val[0]:val[1]]
    raise SparkplugError(f"metric value field {num} has the wrong wire type", at)


def decode_payload(data: bytes) -> Payload:
    """A Sparkplug B ``Payload`` from its protobuf bytes (raises :class:`SparkplugError`)."""
    p = Payload()
    for num, wt, val, at in _fields(data):
        if num == 1 and isinstance(val, int):
            p.timestamp = val
        elif num == 3 and isinstance(val, int):
            p.seq = val
        elif num == 2 and isinstance(val, tuple):
            p.metrics.append(_decode_metric(data[val[0]:val[1]], val[0]))
        elif num == 4 and wt == 2:
            p.uuid = _text(data, val, at)
        elif num == 5 and isinstance(val, tuple):
            p.body = data[val[0]:val[1]]
        elif num in (1, 2, 3, 4, 5):
            raise SparkplugError(f"payload field {num} has wire type {wt}", at)
    return p


def _put_varint(out: bytearray, v: int) -> None:
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_key(out: bytearray, num: int, wt: int) -> None:
    _put_varint(out, (num << 3) | wt)


def _put_bytes(out: bytearray, num: int, b: bytes) -> None:
    _put_key(out, num, 2)
    _put_varint(out, len(b))
    out += b


def _encode_metric(m: Metric) -> bytes:
    out = bytearray()
    if m.name is not None:
        _put_bytes(out, 1, m.name.encode())
    for num, n in ((2, m.alias), (3, m.timestamp), (4, m.datatype)):
        if n is not None:
            _put_key(out, num, 0)
            _put_varint(out, int(n))
    if m.is_historical:
        out += b"\x28\x01"
    if m.is_transient:
        out += b"\x30\x01"
    v = m.value
    dt = m.datatype
    if v is None:
        out += b"\x38\x01"
    elif dt in (FLOAT,):
        _put_key(out, 12, 5)
        out += struct.pack("<f", float(v))  # type: ignore[arg-type]
    elif dt == DOUBLE:
        _put_key(out, 13, 1)
        out += struct.pack("<d", float(v))  # type: ignore[arg-type]
    elif dt == BOOLEAN:
        _put_key(out, 14, 0)
        out.append(1 if v else 0)
    elif dt in (STRING, TEXT):
        _put_bytes(out, 15, str(v).encode())
    elif dt in (INT64, UINT64, DATETIME):
        _put_key(out, 11, 0)
        _put_varint(out, int(v))  # type: ignore[arg-type]
    elif dt in _INT_BITS:
        _put_key(out, 10, 0)
        _put_varint(out, int(v) & 0xFFFFFFFF)  # type: ignore[arg-type]
    else:
        _put_bytes(out, 16, bytes(v))  # type: ignore[arg-type]
    return bytes(out)


def encode_payload(p: Payload) -> bytes:
    """The protobuf bytes of ``p`` (what an edge node publishes)."""
    out = bytearray()
    if p.timestamp is not None:
        _put_key(out, 1, 0)
        _put_varint(out, p.timestamp)
    for m in p.metrics:
        _put_bytes(out, 2, _encode_metric(m))
    if p.seq is not None:
        _put_key(out, 3, 0)
        _put_varint(out, p.seq)
    if p.uuid is not None:
        _put_bytes(out, 4, p.uuid.encode())
    if p.body is not None:
        _put_bytes(out, 5, p.body)
    return bytes(out)


# --------------------------------------------------------------------------- topics

@dataclass(frozen=True, slots=True)
class Topic:
    group: str
    message_type: str
    edge_node: str
    device: str | None = None

    @property
    def node_id(self) -> str:
        return f"{self.group}/{self.edge_node}"

    @property
    def device_id(self) -> str:
        return self.node_id if self.device is None else f"{self.node_id}/{self.device}"

    def __str__(self) -> str:
        dev = "" if self.device is None else f"/{self.device}"
        return f"{NAMESPACE}/{self.group}/{self.message_type}/{self.edge_node}{dev}"


def parse_topic(topic: str) -> Topic:
    """``spBv1.0/GROUP/TYPE/EDGE[/DEVICE]`` (raises :class:`SparkplugError`)."""
    parts = topic.split("/")
    if parts[0] != NAMESPACE or len(parts) not in (4, 5):
        raise SparkplugError(f"topic {topic!r} is not {NAMESPACE}/group/type/edge[/device]")
    _, group, mtype, edge, *dev = parts
    if mtype not in MESSAGE_TYPES:
        raise SparkplugError(f"topic {topic!r}: unknown message type {mtype!r}",
                             len(group) + len(NAMESPACE) + 2)
    if (mtype[0] == "D") != bool(dev):
        raise SparkplugError(f"topic {topic!r}: {mtype} needs {'a' if dev == [] else 'no'} "
                             "device id")
    return Topic(group, mtype, edge, dev[0] if dev else None)


REBIRTH_METRIC = "Node Control/Rebirth"


def rebirth_request(node_id: str, now: float) -> tuple[str, bytes]:
    """The NCMD asking edge node ``group/edge`` to publish its BIRTH again (what a host
    does when it missed the BIRTH or lost messages)."""
    group, edge = node_id.split("/", 1)
    return (f"{NAMESPACE}/{group}/NCMD/{edge}", encode_payload(Payload(
        timestamp=int(now * 1000), metrics=[Metric(REBIRTH_METRIC, datatype=BOOLEAN,
                                                   value=True)])))


# --------------------------------------------------------------------------- session

@dataclass(slots=True)
class Message:
    """What one Sparkplug message meant to the host."""

    topic: Topic
    readings: list[Reading] = field(default_factory=list)
    #: "ok", "duplicate" (seen before: ignored), "gap" (``missed`` messages lost),
    #: "late" (older than the last one: readings kept, they are timestamped)
    seq_status: str = "ok"
    missed: int = 0
    birth: bool = False  # NBIRTH/DBIRTH: the device (re)announced its metrics
    death: bool = False  # NDEATH (matching bdSeq)/DDEATH: the device went offline
    unknown_aliases: int = 0  # DATA metrics whose alias no BIRTH announced: dropped
    #: string metrics of a BIRTH (model, firmware, ...): name -> value
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def rebirth_needed(self) -> bool:
        """The host lost track (gap or unknown alias): an NCMD Rebirth would resync."""
        return self.seq_status == "gap" or self.unknown_aliases > 0


@dataclass(slots=True)
class _Node:
    expected: int = 0
    bdseq: int | None = None
    online: bool = False
    aliases: dict[str | None, dict[int, str]] = field(default_factory=dict)
    recent: deque[tuple[int, int | None]] = field(default_factory=lambda: deque(maxlen=RECENT))


class SparkplugSession:
    """Alias tables, sequence numbers and births/deaths of every edge node seen."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}

    def feed(self, topic: str, data: bytes, now: float) -> Message:
        """One message received at ``now`` (raises :class:`SparkplugError`)."""
        t = parse_topic(topic)
        p = decode_payload(data)
        msg = Message(t)
        node = self.nodes.setdefault(t.node_id, _Node())
        mt = t.message_type
        if mt == "NDEATH":
            bd = next((m.value for m in p.metrics if m.name == "bdSeq"), None)
            if node.online and (bd is None or node.bdseq is None or bd == node.bdseq):
                node.online = False
                msg.death = True
            return msg
        if mt in ("NCMD", "DCMD", "STATE"):
            return msg
        if p.seq is None:
            raise SparkplugError(f"{mt} without a sequence number")
        if not self._sequence(node, mt, p, msg):
            return msg
        if mt == "NBIRTH":
            node.online = True
            node.aliases = {}
            node.bdseq = next((int(m.value) for m in p.metrics if m.name == "bdSeq"
                               and isinstance(m.value, int)), None)
        if mt in ("NBIRTH", "DBIRTH"):
            msg.birth = True
            node.aliases[t.device] = {m.alias: m.name for m in p.metrics
                                      if m.alias is not None and m.name is not None}
        if mt == "DDEATH":
            msg.death = True
            return msg
        self._readings(node, t, p, now, msg)
        return msg

    def _sequence(self, node: _Node, mt: str, p: Payload, msg: Message) -> bool:
        """Classify the message's seq; False when it is a duplicate (ignore it)."""
        seq = int(p.seq or 0) & 0xFF
        key = (seq, p.timestamp)
        if key in node.recent and (node.online or mt != "NBIRTH"):
            msg.seq_status = "duplicate"
            return False
        node.recent.append(key)
        if mt == "NBIRTH":
            node.expected = (seq + 1) & 0xFF
            return True
        diff = (seq - node.expected) & 0xFF
        if diff == 0:
            node.expected = (seq + 1) & 0xFF
        elif diff < 128:
            msg.seq_status, msg.missed = "gap", diff
            node.expected = (seq + 1) & 0xFF
        else:
            msg.seq_status = "late"
        return True

    def _readings(self, node: _Node, t: Topic, p: Payload, now: float, msg: Message
                  ) -> None:
        aliases = node.aliases.get(t.device, {})
        dev = t.device_id
        for m in p.metrics:
            name = m.name
            if name is None:
                name = aliases.get(m.alias) if m.alias is not None else None
                if name is None:
                    msg.unknown_aliases += 1
                    continue
            if name == "bdSeq":
                continue
            ts = m.timestamp if m.timestamp is not None else p.timestamp
            when = ts / 1000.0 if ts is not None else now
            v = m.value
            if isinstance(v, str):
                if msg.birth:
                    msg.attributes[name] = v
                msg.readings.append(Reading(dev, name, v, when))
            elif isinstance(v, (int, float)):  # bool is an int
                msg.readings.append(Reading(dev, name, float(v), when))
            elif v is None:
                msg.readings.append(Reading(dev, name, None, when))
