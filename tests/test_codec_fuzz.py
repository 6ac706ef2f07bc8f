"""Fuzzing the decoders: random bytes, truncations and bit flips of the golden frames.

The contract (docs/wire-formats.md): a decoder returns a frame or raises a ``FrameError`` with an
offset inside the input; nothing else escapes. Each hypothesis example feeds a batch of
inputs derived from its seed, so the file covers well over 100k inputs in a few seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import c37118 as c
from gateway.codecs.crc import crc_ccitt
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.codecs.stream import StreamReassembler
from gateway.errors import FrameError

DATA = Path(__file__).parent / "data"
GOLDEN_C37 = [(DATA / f).read_bytes() for f in (
    "c37118_annexd_cfg2.bin", "c37118_annexd_data.bin", "c37118_cmd_start.bin",
    "c37118_header.bin")]
CFG = c.parse(GOLDEN_C37[0], 0.0)
assert isinstance(CFG, c.ConfigFrame)
CFG3 = c.ConfigFrame(CFG.idcode, CFG.pmus, frame_type=c.FRAME_CFG3).build()
FLOAT_CFG = c.make_config(7, [("A", 1, ["a", "b"]), ("B", 2, ["c", "d"])])
FLOAT_DATA = c.DataFrame(7, 1, 2, np.zeros(2, np.uint16), np.array([1 + 1j, 2, 3j, 4]),
                         np.array([50.0, 50.0]), np.zeros(2), np.zeros(0),
                         np.zeros(0, np.uint16)).build(FLOAT_CFG)
GOLDEN_C37 += [CFG3, FLOAT_DATA]
SKT_TYPES = ["float32", "int32", "float32", "int32"]
SKT = [GtnetSktCodec(SKT_TYPES, header=h, allow_nonfinite=a)
       for h in (True, False) for a in (True, False)]
GOLDEN_SKT = [(DATA / "gtnet_skt_header.bin").read_bytes(),
              (DATA / "gtnet_skt_noheader.bin").read_bytes()]

# a signalling NaN on the wire makes numpy's float32 -> float64 cast warn; the decoders
# return it as NaN, which is the contract, so the warning is expected here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast")

EXAMPLES = 100
PER_EXAMPLE = 260  # 4 tests x 100 examples x 260 inputs = 104k inputs


def _recrc(b: bytearray) -> bytes:
    if len(b) >= 2:
        b[-2:] = struct.pack(">H", crc_ccitt(bytes(b[:-2])))
    return bytes(b)


def _mutations(rng: np.random.Generator, golden: list[bytes], n: int,
               fix_crc: bool) -> list[bytes]:
    """Truncations, single and multiple bit flips, random bytes, with CRC re-fixed on
    part of them so the body parsers are reached too."""
    out: list[bytes] = []
    for k in range(n):
        g = golden[int(rng.integers(len(golden)))]
        mode = k % 4
        if mode == 0:
            b = bytearray(g[: int(rng.integers(0, len(g) + 1))])
        elif mode in (1, 2):
            b = bytearray(g)
            for _ in range(1 if mode == 1 else int(rng.integers(2, 9))):
                i = int(rng.integers(len(b)))
                b[i] ^= 1 << int(rng.integers(8))
        else:
            b = bytearray(rng.integers(0, 256, int(rng.integers(0, 80)), np.uint8).tobytes())
            if len(b) >= 4 and rng.random() < 0.7:  # plausible SYNC and FRAMESIZE
                b[0] = 0xAA
                b[1] = int(rng.choice([0x01, 0x02, 0x11, 0x21, 0x31, 0x41, 0x51, 0x61]))
                b[2:4] = struct.pack(">H", len(b))
        if fix_crc and rng.random() < 0.5 and len(b) >= 4:
            b[2:4] = struct.pack(">H", len(b) & 0xFFFF)
            out.append(_recrc(b))
        else:
            out.append(bytes(b))
    return out


def _check_c37(b: bytes) -> None:
    for cfg in (CFG, FLOAT_CFG, None):
        try:
            f = c.parse(b, 0.0, cfg)
        except FrameError as exc:
            assert 0 <= exc.offset <= len(b), (exc, len(b))
        else:
            assert isinstance(f, c.ConfigFrame | c.DataFrame | c.HeaderFrame |
                              c.CommandFrame)
    for cfg in (CFG, FLOAT_CFG):
        try:
            cfg.decoder().decode(b, 0.0)
        except FrameError as exc:
            assert 0 <= exc.offset <= len(b)


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_c37118_mutations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inputs = _mutations(rng, GOLDEN_C37, PER_EXAMPLE, fix_crc=True)
    for b in inputs:
        _check_c37(b)
    assert len(inputs) == PER_EXAMPLE


@settings(max_examples=EXAMPLES, deadline=None)
@given(blobs=st.lists(st.binary(max_size=120), min_size=PER_EXAMPLE // 4,
                      max_size=PER_EXAMPLE // 4),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_c37118_random_bytes(blobs: list[bytes], seed: int) -> None:
    """Hypothesis' own byte strings, each also with a forced SYNC/FRAMESIZE/CRC."""
    rng = np.random.default_rng(seed)
    n = 0
    for blob in blobs:
        forced = bytearray(b"\xaa" + bytes([int(rng.integers(256))]) + b"\0\0" + blob)
        forced[2:4] = struct.pack(">H", len(forced))
        for b in (blob, bytes(forced), _recrc(bytearray(forced)), blob[:3]):
            _check_c37(b)
            n += 1
    assert n == PER_EXAMPLE


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_gtnet_skt(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inputs = _mutations(rng, GOLDEN_SKT, PER_EXAMPLE - 20, fix_crc=False)
    # NaN/inf words and exact-size random frames
    for _ in range(20):
        inputs.append(rng.integers(0, 256, 28, np.uint8).tobytes())
    for b in inputs:
        for codec in SKT:
            try:
                f = codec.parse(b, 1.0)
            except FrameError as exc:
                assert 0 <= exc.offset <= len(b)
            else:
                assert f.values.shape == (4,) and len(b) == codec.size
                if not codec.allow_nonfinite:
                    assert np.isfinite(f.values).all()
    assert len(inputs) == PER_EXAMPLE


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_reassembler(seed: int) -> None:
    """Golden frames between random garbage (0xAA excluded) all come out, in order, from
    random read sizes; garbage with 0xAA never yields a frame with a bad CRC."""
    rng = np.random.default_rng(seed)
    frames = [GOLDEN_C37[int(rng.integers(len(GOLDEN_C37)))] for _ in range(6)]
    stream = bytearray()
    for f in frames:
        g = rng.integers(0, 0xAA, int(rng.integers(0, 30)), np.uint8).tobytes()
        stream += g + f
    r = StreamReassembler()
    out: list[bytes] = []
    pos = 0
    n = 0
    while pos < len(stream):
        step = int(rng.integers(1, 200))
        out += r.feed(bytes(stream[pos:pos + step]))
        pos += step
        n += 1
    assert out == frames
    noisy = StreamReassembler()
    for b in _mutations(rng, GOLDEN_C37, PER_EXAMPLE - n, fix_crc=False):
        for f in noisy.feed(b):
            c.check_common(f)  # raises if a frame with a bad CRC came out
