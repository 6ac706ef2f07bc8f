"""Bus message layouts: round trips (hypothesis), and every malformed message refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.bus import wire

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def snapshots(draw: st.DrawFn) -> wire.BusSnapshot:
    m = draw(st.integers(0, 40))
    n = draw(st.integers(0, 5))
    return wire.BusSnapshot(
        draw(st.integers(-(2**63), 2**63 - 1)), draw(st.integers(-(2**63), 2**63 - 1)),
        draw(floats), draw(floats), draw(floats),
        draw(hnp.arrays(np.float64, m, elements=floats)),
        draw(hnp.arrays(np.uint32, m)),
        draw(hnp.arrays(np.float64, n, elements=floats)),
        draw(hnp.arrays(np.float64, n, elements=floats)),
        draw(st.none() | st.lists(st.booleans(), min_size=1, max_size=70).map(tuple)))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype.kind == b.dtype.kind and a.tobytes() == b.tobytes()


@given(snapshots())
@settings(max_examples=150)
def test_snapshot_round_trip(s: wire.BusSnapshot) -> None:
    msg = wire.encode_snapshot(s)
    n_sw = 0 if s.topology is None else len(s.topology)
    assert len(msg) == 8 + 56 + 12 * s.values.size + 16 * s.pv_mw.size + (n_sw + 7) // 8
    got = wire.decode(msg)
    assert isinstance(got, wire.BusSnapshot)
    assert (got.run, got.seq) == (s.run, s.seq)
    assert np.array_equal([got.source_time, got.arrival_time, got.publish_time],
                          [s.source_time, s.arrival_time, s.publish_time], equal_nan=True)
    for f in ("values", "flags", "pv_mw", "pv_sigma_mw"):
        assert _same(getattr(got, f), getattr(s, f))
    assert got.topology == s.topology


@given(st.integers(0, 300), st.booleans(), st.integers(0, 2**32 - 1),
       st.sampled_from(["normal", "sw_7_8=open,sw_8_21=closed", "tie_ü=closed"]))
def test_state_round_trip(n: int, conv: bool, iters: int, label: str) -> None:
    rng = np.random.default_rng(n)
    s = wire.BusState(7, n, 1.5, 1.7, 2.5, 3.5, float("nan"), 86.0, 1e-4, iters, conv,
                      rng.normal(1, 0.01, n), rng.normal(0, 0.01, n), label)
    msg = wire.encode_state(s)
    assert len(msg) == 8 + 88 + 16 * n + len(label.encode())
    got = wire.decode(msg)
    assert isinstance(got, wire.BusState)
    assert (got.run, got.seq, got.iterations, got.converged) == (7, n, iters, conv)
    assert got.topology == label
    assert _same(got.vm_pu, s.vm_pu) and _same(got.va_rad, s.va_rad)


def test_json_kinds_and_ids() -> None:
    msg = wire.encode_json(wire.EVENT, {"kind": "sender_restart", "seq": 4})
    assert wire.decode(msg) == {"kind": "sender_restart", "seq": 4}
    assert wire.subject("feeder-7", wire.STATE) == "gridtwin.feeder-7.state"
    assert wire.msg_id("f1", 99, wire.SNAPSHOT, 12) == "f1:99:snapshot:12"
    with pytest.raises(ValueError):
        wire.encode_json(wire.STATE, {})


@given(snapshots(), st.data())
@settings(max_examples=100)
def test_truncated_or_padded_snapshots_are_refused(s: wire.BusSnapshot,
                                                   data: st.DataObject) -> None:
    msg = wire.encode_snapshot(s)
    cut = data.draw(st.integers(0, len(msg) - 1))
    with pytest.raises(wire.BusMessageError):
        wire.decode(msg[:cut])
    with pytest.raises(wire.BusMessageError) as e:
        wire.decode(msg + b"\0")
    assert e.value.offset == len(msg)


@pytest.mark.parametrize("msg,offset,word", [
    (b"XXXX" + bytes(60), 0, "magic"),
    (b"GTB1\x09\x01\0\0", 4, "kind"),
    (b"GTB1\x01\x07\0\0" + bytes(48), 5, "version"),
    (b"GTB1\x03\x02\0\0{not json", 8, "JSON"),
    (b"GTB1\x03\x02\0\0[1, 2]", 8, "object"),
])
def test_malformed_messages_name_offset_and_reason(msg: bytes, offset: int, word: str) -> None:
    with pytest.raises(wire.BusMessageError) as e:
        wire.decode(msg)
    assert e.value.offset == offset and word in str(e.value)


def test_oversized_message_refused_before_parsing() -> None:
    with pytest.raises(wire.BusMessageError, match="more than"):
        wire.kind_of(bytes(wire.MAX_MESSAGE + 1))


def test_version_1_messages_are_refused_clearly() -> None:
    """Version 1 had no topology: a message of an older edge (or a reader of this
    version meeting a newer one) is refused naming both versions, never misread."""
    v2 = wire.encode_snapshot(wire.BusSnapshot(1, 2, 3.0, 4.0, 5.0, np.ones(3),
                                               np.zeros(3, np.uint32), np.ones(1),
                                               np.ones(1), (True, False, True)))
    v1 = v2[:5] + b"\x01" + v2[6:]
    with pytest.raises(wire.BusMessageError,
                       match="version 1, this build reads 2: the sender runs another"):
        wire.decode(v1)
