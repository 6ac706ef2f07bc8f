"""GTNET-SKT codec: golden frames, round trips, errors, and the VILLASnode header layout."""

from __future__ import annotations

import ast
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.gtnet_skt import GtnetSktCodec, SktFrame, skt_struct
from gateway.errors import (
    FrameError,
    FrameSizeMismatch,
    FrameTooShort,
    NonFiniteValue,
    WrongPointCount,
)

DATA = Path(__file__).parent / "data"
TYPES = ["float32", "int32", "float32", "int32"]
VALUES = [1.5, -7.0, 230.25, 1.0]


def test_golden_with_header() -> None:
    golden = (DATA / "gtnet_skt_header.bin").read_bytes()
    codec = GtnetSktCodec(TYPES, header=True)
    assert codec.size == len(golden) == 28
    f = codec.parse(golden, now=12.5)
    assert isinstance(f, SktFrame)
    assert f.seq == 42
    assert f.ts == pytest.approx(1_700_000_000.5, abs=1e-9)
    assert f.values.dtype == np.float64
    assert f.values.tolist() == VALUES
    assert f.arrival == 12.5
    assert codec.build(VALUES, seq=42, ts=1_700_000_000.5) == golden
    assert codec.build_reference(VALUES, seq=42, ts=1_700_000_000.5) == golden


def test_golden_without_header() -> None:
    golden = (DATA / "gtnet_skt_noheader.bin").read_bytes()
    codec = GtnetSktCodec(TYPES, header=False)
    f = codec.parse(golden, 0.0)
    assert (f.seq, f.ts) == (None, None)
    assert f.values.tolist() == VALUES
    assert codec.build(np.array(VALUES)) == golden


def test_villas_fake_header_layout() -> None:
    """Sequence, seconds, nanoseconds as the first three unsigned big-endian words."""
    codec = GtnetSktCodec(["float32"], header=True)
    data = codec.build([2.0], seq=7, ts=1_600_000_000.25)
    assert struct.unpack(">IIIf", data) == (7, 1_600_000_000, 250_000_000, 2.0)
    # a peer's frame with a wrapped sequence number decodes as is
    peer = struct.pack(">IIIf", 2**32 - 1, 5, 999_999_999, -1.0)
    f = codec.parse(peer, 0.0)
    assert f.seq == 2**32 - 1 and f.ts == pytest.approx(5.999999999)
    assert codec.build([0.0], seq=2**32 + 3)[:4] == struct.pack(">I", 3)


point_lists = st.lists(st.sampled_from(["int32", "float32"]), min_size=1, max_size=297)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # signalling NaNs
@settings(max_examples=60, deadline=None)
@given(types=point_lists, header=st.booleans(), data=st.data())
def test_round_trip(types: list[str], header: bool, data: st.DataObject) -> None:
    """build then parse gives the values back (float32 values and int32 integers)."""
    codec = GtnetSktCodec(types, header=header)
    values = [
        data.draw(st.floats(width=32, allow_nan=True)) if t == "float32"
        else float(data.draw(st.integers(-(2**31), 2**31 - 1)))
        for t in types
    ]
    seq = data.draw(st.integers(0, 2**32 - 1))
    sec = data.draw(st.integers(0, 2**32 - 2))
    frame = codec.build(values, seq=seq, ts=float(sec))
    assert len(frame) == codec.size
    f = codec.parse(frame, 1.0)
    np.testing.assert_array_equal(f.values, np.array(values))  # NaN == NaN here
    assert frame == codec.build_reference(values, seq=seq, ts=float(sec))
    ref = codec.parse_reference(frame, 1.0)
    np.testing.assert_array_equal(ref.values, f.values)
    if header:
        assert f.seq == seq and f.ts == float(sec)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # signalling NaNs
@settings(max_examples=60, deadline=None)
@given(types=point_lists, n=st.integers(1, 40), data=st.data())
def test_parse_many_equals_parse(types: list[str], n: int, data: st.DataObject) -> None:
    """A batch decoded at once gives, frame for frame, what parse gives: sequence
    numbers, timestamps to the bit, values (NaN included); only batchable frames."""
    codec = GtnetSktCodec(types, header=True)
    frames = []
    for _ in range(n):
        values = [
            data.draw(st.floats(width=32, allow_nan=True)) if t == "float32"
            else float(data.draw(st.integers(-(2**31), 2**31 - 1)))
            for t in types
        ]
        ts = data.draw(st.floats(0.0, 2**32 - 1.0))
        frames.append(codec.build(values, seq=data.draw(st.integers(0, 2**32 - 1)), ts=ts))
    assert codec.batchable(frames)
    seqs, tss, values_many = codec.parse_many(frames)
    assert values_many.shape == (n, len(types))
    for k, frame in enumerate(frames):
        f = codec.parse(frame, 0.0)
        assert (f.seq, f.ts) == (seqs[k], tss[k])
        np.testing.assert_array_equal(values_many[k], f.values)
    assert not codec.batchable([*frames, frames[0][:-4]])
    assert not GtnetSktCodec(types, header=False).batchable(frames)


def test_parse_accepts_memoryview_and_bytearray() -> None:
    codec = GtnetSktCodec(TYPES, header=False)
    golden = (DATA / "gtnet_skt_noheader.bin").read_bytes()
    assert codec.parse(memoryview(golden), 0).values.tolist() == VALUES
    assert codec.parse(bytearray(golden), 0).values.tolist() == VALUES


def test_wrong_point_count_names_both_counts() -> None:
    codec = GtnetSktCodec(TYPES, header=True)
    golden = (DATA / "gtnet_skt_header.bin").read_bytes()
    with pytest.raises(WrongPointCount) as e:
        codec.parse(golden + b"\0\0\0\0", 0)
    assert "5 points" in e.value.reason and "4" in e.value.reason
    assert e.value.offset == 28
    with pytest.raises(WrongPointCount) as e:
        codec.parse(golden[:-4], 0)
    assert e.value.offset == 24


def test_size_errors() -> None:
    codec = GtnetSktCodec(TYPES, header=True)
    with pytest.raises(FrameTooShort):
        codec.parse(b"\0" * 8, 0)
    with pytest.raises(FrameSizeMismatch) as e:
        codec.parse(b"\0" * 27, 0)
    assert e.value.offset == 27
    assert isinstance(e.value, FrameError)


def test_non_finite_rejected_when_not_allowed() -> None:
    strict = GtnetSktCodec(TYPES, header=True, allow_nonfinite=False)
    lax = GtnetSktCodec(TYPES, header=True)
    frame = lax.build([1.0, 2.0, math.inf, 3.0])
    assert math.isinf(lax.parse(frame, 0).values[2])
    with pytest.raises(NonFiniteValue) as e:
        strict.parse(frame, 0)
    assert e.value.offset == 12 + 2 * 4
    with pytest.raises(NonFiniteValue):
        strict.parse_reference(frame, 0)
    # an int32 point can never be non-finite: all-int lists skip the check
    ints = GtnetSktCodec(["int32"] * 3, header=False, allow_nonfinite=False)
    assert ints.parse(struct.pack(">iii", -1, 0, 1), 0).values.tolist() == [-1, 0, 1]


def test_build_rejects_bad_input() -> None:
    codec = GtnetSktCodec(TYPES, header=True)
    with pytest.raises(ValueError, match="point list of 4"):
        codec.build([1.0, 2.0])
    with pytest.raises(ValueError, match="point 1"):
        codec.build([0.0, 2.0**31, 0.0, 0.0])
    with pytest.raises(ValueError, match="point 3"):
        codec.build([0.0, 0.0, 0.0, math.nan])
    with pytest.raises(ValueError):
        codec.build(VALUES, ts=-1.0)
    assert codec.build([0.0, 2.6, 0.0, -2.6])[16:20] == struct.pack(">i", 3)


def test_limits() -> None:
    assert GtnetSktCodec(["float32"] * 300, header=False).size == 1200
    assert GtnetSktCodec(["float32"] * 297, header=True).size == 1200
    with pytest.raises(ValueError, match="300"):
        GtnetSktCodec(["float32"] * 298, header=True)
    with pytest.raises(ValueError):
        GtnetSktCodec([], header=False)
    with pytest.raises(ValueError, match="double"):
        skt_struct(["double"], header=False)


def test_codecs_are_sans_io() -> None:
    """Nothing in gateway/codecs imports asyncio, socket or selectors."""
    pkg = Path(__file__).parents[1] / "gateway" / "codecs"
    banned = {"asyncio", "socket", "selectors", "asyncio_dgram"}
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not banned & set(names), f"{path.name} imports {names}"
