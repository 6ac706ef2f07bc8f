"""The CRC rule: a C37.118 frame with flipped bits whose CHK was not recomputed never
parses, through ``parse`` and through the live decode path (decoder and session).

CRC-CCITT detects every error burst of up to 16 bits, so each example flips a non-zero
pattern inside one 16-bit window anywhere in the frame (header, body or CHK itself).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.codecs import c37118 as c37
from gateway.codecs.c37session import C37Session, DataReceived
from gateway.codecs.decoders import C37Decoder
from gateway.config import load_config
from gateway.errors import FrameError
from hil.c37server import C37Stream

DATA = Path(__file__).parent / "data"
CFG = load_config("ieee33")
STREAM = CFG.stream("pmu-c37")
SRC = C37Stream(STREAM, 50.0)
CFG2 = SRC.cfg2.build()
VALUES = 1.0 + 0.01 * np.arange(len(CFG.channels))
DATA_FRAME = SRC.data_frame(VALUES, 1_000_000.5)
ANNEX_CFG = (DATA / "c37118_annexd_cfg2.bin").read_bytes()
FRAMES = {
    "data": DATA_FRAME,
    "cfg2": CFG2,
    "cfg3": SRC.config_frame(c37.FRAME_CFG3, 1e6),
    "header": SRC.header_frame(1e6),
    "command": c37.command(1, c37.CMD_START, now=1e6),
    "annexd_cfg2": ANNEX_CFG,
    "annexd_data": (DATA / "c37118_annexd_data.bin").read_bytes(),
}


def flip(frame: bytes, start_bit: int, pattern: int) -> bytes:
    """XOR ``pattern`` (16 bits, most significant first) into the frame from ``start_bit``."""
    bits = int.from_bytes(frame, "big")
    total = 8 * len(frame)
    shift = total - start_bit - 16
    mask = pattern << shift if shift >= 0 else pattern >> -shift
    return (bits ^ mask).to_bytes(len(frame), "big")


bursts = st.tuples(st.sampled_from(sorted(FRAMES)), st.floats(0, 1, exclude_max=True),
                   st.integers(1, 0xFFFF))


def corrupted(name: str, where: float, pattern: int) -> tuple[bytes, bytes]:
    good = FRAMES[name]
    bad = flip(good, int(where * 8 * len(good)), pattern)
    assume(bad != good)
    return good, bad


def test_flip_helper_changes_exactly_the_window() -> None:
    f = bytes(4)
    assert flip(f, 0, 0x8001) == b"\x80\x01\x00\x00"
    assert flip(f, 20, 0xFFFF) == b"\x00\x00\x0f\xff"  # clipped at the end
    for name, good in FRAMES.items():  # and every clean frame parses
        cfg = c37.parse(ANNEX_CFG, 0.0) if name == "annexd_data" else SRC.cfg2
        c37.parse(good, 0.0, cfg)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(bursts)
def test_a_flipped_frame_never_parses(burst: tuple[str, float, int]) -> None:
    name, where, pattern = burst
    _, bad = corrupted(name, where, pattern)
    cfg = c37.parse(ANNEX_CFG, 0.0) if name == "annexd_data" else SRC.cfg2
    with pytest.raises(FrameError):
        c37.parse(bad, 0.0, cfg)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 0xFFFF))
def test_a_flipped_data_frame_never_reaches_the_aligner(where: float, pattern: int) -> None:
    """The live path: the stream decoder (CRC checked by the fast data decoder)."""
    _, bad = corrupted("data", where, pattern)
    dec = C37Decoder(STREAM)
    dec.decode(CFG2, 0.0)
    with pytest.raises(FrameError):
        dec.decode(bad, 1.0)
    out = dec.decode(DATA_FRAME, 1.1)  # the stream goes on with the next good frame
    assert out is not None


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 0xFFFF))
def test_a_flipped_configuration_never_replaces_the_one_in_force(where: float,
                                                                 pattern: int) -> None:
    _, bad = corrupted("cfg2", where, pattern)
    dec = C37Decoder(STREAM)
    with pytest.raises(FrameError):
        dec.decode(bad, 0.0)
    assert dec.config is None
    dec.decode(CFG2, 0.1)
    with pytest.raises(FrameError):
        dec.decode(bad, 0.2)
    assert dec.config is not None and dec.config.build() == SRC.cfg2.build()


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 0xFFFF), st.booleans())
def test_the_session_never_gives_values_of_a_flipped_frame(where: float, pattern: int,
                                                           tcp: bool) -> None:
    """TCP: the flipped frame is skipped by the framing and the next good one is found;
    UDP: the datagram is handed on but yields no values."""
    _, bad = corrupted("data", where, pattern)
    s = C37Session(idcode=STREAM.idcode, expected=STREAM.pmus, tcp=tcp, silence_s=5.0)
    s.connection_made(0.0)
    s.receive_data(CFG2, 0.0)
    other = SRC.data_frame(VALUES + 0.5, 1_000_000.52)
    if tcp:
        ev = s.receive_data(bad + other, 0.1)
    else:
        ev = s.receive_data(bad, 0.1) + s.receive_data(other, 0.1)
    data = [e for e in ev if isinstance(e, DataReceived)]
    assert len(data) == 1
    assert data[0].ts == pytest.approx(1_000_000.52)
