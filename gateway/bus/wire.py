"""Binary layouts of the fleet's bus messages (version 2), sans-IO.

Snapshots and states cross the bus at the stream rate, so they are compact fixed layouts,
not JSON; events and health are rare and stay JSON. All integers and floats are
little-endian. Every message starts with the same 8-byte preamble::

    offset size  field
    0      4     magic  b"GTB1"
    4      1     kind   1 snapshot, 2 state, 3 event (JSON body), 4 health (JSON body)
    5      1     version (2; version 1 had no topology, see below)
    6      2     reserved (0)

**Snapshot** (kind 1), after the preamble::

    8      8     run              int64   the edge's run id (µs since the epoch at start)
    16     8     seq              int64   the edge's snapshot sequence number
    24     8     source_time      float64 s since the epoch (the sender's time stamp)
    32     8     arrival_time     float64 s, first frame of the snapshot at the edge
    40     8     publish_time     float64 s, when the edge handed it to the bus
    48     4     m                uint32  channels
    52     4     n_pv             uint32  PV plants
    56     4     n_sw             uint32  switchable branches of the topology (0: none
                                          named, estimate on the config's network)
    60     4     reserved (0)
    64     8m    values           float64[m]  cleaned values, channel order (NaN: none)
    ..     4m    flags            uint32[m]   quality flags (gateway.snapshot.Flag)
    ..     8n    pv_mw            float64[n]  PV pseudo-measurements
    ..     8n    pv_sigma_mw      float64[n]  their standard deviations
    ..     ⌈n_sw/8⌉ topology      uint8[]     switch states, one bit per switchable branch
                                          of estimator.topology.SwitchSet (branch k: bit
                                          k % 8 of byte k // 8, 1 closed)

**State** (kind 2), after the preamble::

    8      8     run              int64   the snapshot's run id
    16     8     seq              int64   the snapshot it estimates
    24     8     source_time      float64
    32     8     arrival_time     float64 the snapshot's arrival_time (end-to-end latency)
    40     8     publish_time     float64 the snapshot's publish_time (round-trip latency)
    48     8     done_time        float64 when the worker finished
    56     8     chi2             float64 J(x) (NaN: not computed)
    64     8     chi2_threshold   float64
    72     8     t_solve_s        float64
    80     4     iterations       uint32
    84     4     n_bus            uint32
    88     1     converged        uint8
    89     1     reserved
    90     2     n_label          uint16  bytes of the topology label
    92     4     reserved
    96     8n    vm_pu            float64[n]
    ..     8n    va_rad           float64[n]
    ..     n_label topology       UTF-8   label of the switch states the estimate used
                                          (gateway.topology; "normal": the config's)

Version 2 added the snapshot's topology and the state's label. A reader refuses a
message of another version naming both versions (``version 1, this build reads 2: the
sender runs another gridtwin build``): edges, workers and the sink of a fleet are
upgraded together.

A message whose magic, kind, version or length does not match raises
:class:`BusMessageError` naming the offset: bad messages are counted and dropped by the
receivers, never crash them. The de-duplication id of every message is
``<twin>:<run>:<kind>:<seq>`` (:func:`msg_id`), so a republished message is stored once,
and a sender restarted from step 0 (new run) is never mistaken for a repetition.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import GatewayError

__all__ = ["EVENT", "HEALTH", "MAGIC", "SNAPSHOT", "STATE", "BusMessageError", "BusSnapshot",
           "BusState", "decode", "encode_json", "encode_snapshot", "encode_state", "kind_of",
           "msg_id", "subject"]

MAGIC = b"GTB1"
VERSION = 2
SNAPSHOT, STATE, EVENT, HEALTH = 1, 2, 3, 4
KIND_NAMES = {SNAPSHOT: "snapshot", STATE: "state", EVENT: "event", HEALTH: "health"}
#: largest message a receiver accepts (a 10k-channel snapshot is ~200 kB)
MAX_MESSAGE = 4 * 1024 * 1024

_PRE = struct.Struct("<4sBBH")
_SNAP = struct.Struct("<qqdddIII4x")
_STATE = struct.Struct("<qqdddddddIIBxH4x")


class BusMessageError(GatewayError):
    """A bus message that does not follow the layout (offset and reason)."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"bus message: {reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


@dataclass
class BusSnapshot:
    run: int
    seq: int
    source_time: float
    arrival_time: float
    publish_time: float
    values: np.ndarray
    flags: np.ndarray
    pv_mw: np.ndarray
    pv_sigma_mw: np.ndarray
    #: switch states to estimate on (one per switchable branch); None: the config's
    topology: tuple[bool, ...] | None = None


@dataclass
class BusState:
    run: int
    seq: int
    source_time: float
    arrival_time: float
    publish_time: float
    done_time: float
    chi2: float
    chi2_threshold: float
    t_solve_s: float
    iterations: int
    converged: bool
    vm_pu: np.ndarray
    va_rad: np.ndarray
    #: label of the switch states the estimate used ("normal": the config's network)
    topology: str = "normal"


def subject(twin: str, kind: int) -> str:
    """``gridtwin.<twin>.<kind name>``: one subject per twin and message kind."""
    return f"gridtwin.{twin}.{KIND_NAMES[kind]}"


def msg_id(twin: str, run: int, kind: int, seq: int) -> str:
    """JetStream de-duplication id (``Nats-Msg-Id``)."""
    return f"{twin}:{run}:{KIND_NAMES[kind]}:{seq}"


def encode_snapshot(s: BusSnapshot) -> bytes:
    m, n = int(s.values.size), int(s.pv_mw.size)
    topo = s.topology
    n_sw = 0 if topo is None else len(topo)
    bits = b"" if not n_sw else np.packbits(np.asarray(topo, bool), bitorder="little"
                                            ).tobytes()
    return b"".join((
        _PRE.pack(MAGIC, SNAPSHOT, VERSION, 0),
        _SNAP.pack(s.run, s.seq, s.source_time, s.arrival_time, s.publish_time, m, n, n_sw),
        np.ascontiguousarray(s.values, "<f8").tobytes(),
        np.ascontiguousarray(s.flags, "<u4").tobytes(),
        np.ascontiguousarray(s.pv_mw, "<f8").tobytes(),
        np.ascontiguousarray(s.pv_sigma_mw, "<f8").tobytes(), bits))


def encode_state(s: BusState) -> bytes:
    n = int(s.vm_pu.size)
    label = s.topology.encode()
    if len(label) > 0xFFFF:
        raise ValueError(f"topology label of {len(label)} bytes, the layout holds 65535")
    return b"".join((
        _PRE.pack(MAGIC, STATE, VERSION, 0),
        _STATE.pack(s.run, s.seq, s.source_time, s.arrival_time, s.publish_time, s.done_time,
                    s.chi2, s.chi2_threshold, s.t_solve_s, s.iterations, n, int(s.converged),
                    len(label)),
        np.ascontiguousarray(s.vm_pu, "<f8").tobytes(),
        np.ascontiguousarray(s.va_rad, "<f8").tobytes(), label))


def encode_json(kind: int, body: dict[str, Any]) -> bytes:
    """An event or health message: the preamble, then UTF-8 JSON."""
    if kind not in (EVENT, HEALTH):
        raise ValueError(f"kind {kind} is not a JSON message kind")
    return _PRE.pack(MAGIC, kind, VERSION, 0) + json.dumps(body, default=str).encode()


def kind_of(msg: bytes) -> int:
    """The message kind after checking the preamble."""
    if len(msg) > MAX_MESSAGE:
        raise BusMessageError(f"{len(msg)} bytes, more than {MAX_MESSAGE}", 0)
    if len(msg) < _PRE.size:
        raise BusMessageError(f"{len(msg)} bytes, shorter than the preamble", 0)
    magic, kind, version, _ = _PRE.unpack_from(msg)
    if magic != MAGIC:
        raise BusMessageError(f"magic {magic!r}, expected {MAGIC!r}", 0)
    if kind not in KIND_NAMES:
        raise BusMessageError(f"unknown kind {kind}", 4)
    if version != VERSION:
        raise BusMessageError(f"version {version}, this build reads {VERSION}: the sender "
                              "runs another gridtwin build", 5)
    return int(kind)


def decode(msg: bytes) -> BusSnapshot | BusState | dict[str, Any]:
    """Any bus message: a :class:`BusSnapshot`, a :class:`BusState` or the JSON body."""
    kind = kind_of(msg)
    if kind == SNAPSHOT:
        return _decode_snapshot(msg)
    if kind == STATE:
        return _decode_state(msg)
    try:
        body = json.loads(bytes(msg[_PRE.size:]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BusMessageError(f"JSON body: {exc}", _PRE.size) from exc
    if not isinstance(body, dict):
        raise BusMessageError("JSON body is not an object", _PRE.size)
    return body


def _need(msg: bytes, size: int, what: str) -> None:
    if len(msg) != size:
        raise BusMessageError(f"{what}: {len(msg)} bytes, layout says {size}",
                              min(len(msg), size))


def _decode_snapshot(msg: bytes) -> BusSnapshot:
    off = _PRE.size
    if len(msg) < off + _SNAP.size:
        raise BusMessageError("snapshot header truncated", len(msg))
    run, seq, src, arr, pub, m, n, n_sw = _SNAP.unpack_from(msg, off)
    off += _SNAP.size
    n_bits = (n_sw + 7) // 8
    _need(msg, off + 12 * m + 16 * n + n_bits, "snapshot")
    values = np.frombuffer(msg, "<f8", m, off).copy()
    flags = np.frombuffer(msg, "<u4", m, off + 8 * m).copy()
    off += 12 * m
    pv = np.frombuffer(msg, "<f8", n, off).copy()
    sig = np.frombuffer(msg, "<f8", n, off + 8 * n).copy()
    off += 16 * n
    topo = None
    if n_sw:
        bits = np.unpackbits(np.frombuffer(msg, np.uint8, n_bits, off), count=n_sw,
                             bitorder="little")
        topo = tuple(bool(b) for b in bits)
    return BusSnapshot(run, seq, src, arr, pub, values, flags, pv, sig, topo)


def _decode_state(msg: bytes) -> BusState:
    off = _PRE.size
    if len(msg) < off + _STATE.size:
        raise BusMessageError("state header truncated", len(msg))
    run, seq, src, arr, pub, done, chi2, thr, t_solve, iters, n, conv, n_label = \
        _STATE.unpack_from(msg, off)
    off += _STATE.size
    _need(msg, off + 16 * n + n_label, "state")
    vm = np.frombuffer(msg, "<f8", n, off).copy()
    va = np.frombuffer(msg, "<f8", n, off + 8 * n).copy()
    off += 16 * n
    try:
        label = bytes(msg[off:off + n_label]).decode()
    except UnicodeDecodeError as exc:
        raise BusMessageError(f"topology label: {exc}", off) from exc
    return BusState(run, seq, src, arr, pub, done, chi2, thr, t_solve, iters, bool(conv), vm, va,
                    label or "normal")
