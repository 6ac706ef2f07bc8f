"""The PDC-side C37.118 session, sans-IO: fed whole, byte by byte and with trailing bytes,
against the emulator's PMU session, on a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import c37118 as c37
from gateway.codecs.c37session import (
    C37Session,
    ConfigAccepted,
    DataReceived,
    Event,
    FrameReceived,
    FrameRejected,
    Resynced,
    Silent,
    Started,
    State,
)
from gateway.config import Stream, TwinConfig, load_config
from hil.c37server import C37Stream, PmuSession

SILENCE = 2.0


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def stream(cfg: TwinConfig) -> Stream:
    return cfg.stream("pmu-c37")


def row(cfg: TwinConfig, k: int) -> np.ndarray:
    """Channel values of step ``k``: distinct magnitudes and angles per channel."""
    n = len(cfg.channels)
    return 1.0 + 0.01 * np.arange(n) + 0.001 * k


def expected_values(stream: Stream, values: np.ndarray) -> np.ndarray:
    """What the session must give for a row: magnitude and angle per configured phasor."""
    return np.array([values[c] for p in stream.pmus for ph in p.phasors
                     for c in (ph.mag, ph.ang)])


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def handshake(session: C37Session, pmu: PmuSession, now: float) -> list[Event]:
    """Commands from the session to the PMU and the PMU's answers back, once."""
    replies = [r for cmd in session.data_to_send() for r in pmu.receive(cmd, now)]
    return [e for r in replies for e in session.receive_data(r, now)]


def new_pair(stream: Stream, *, expected: bool = True) -> tuple[C37Session, PmuSession,
                                                                 C37Stream]:
    src = C37Stream(stream, 50.0)
    pmu = PmuSession(src)
    s = C37Session(idcode=stream.idcode, expected=stream.pmus if expected else None,
                   rate_hz=50.0, silence_s=SILENCE)
    return s, pmu, src


def test_handshake_then_data_in_config_order(cfg: TwinConfig, stream: Stream) -> None:
    s, pmu, src = new_pair(stream)
    assert s.state is State.IDLE and s.next_deadline() is None
    s.connection_made(100.0)
    ev = handshake(s, pmu, 100.0)
    assert kinds(ev) == ["c37_frame", "c37_config", "c37_started"]
    acc = ev[1]
    assert isinstance(acc, ConfigAccepted) and not acc.remapped
    assert acc.stations == tuple(p.station for p in stream.pmus)
    assert s.state is State.STREAMING
    assert pmu.commands == {"cfg2": 1}
    handshake(s, pmu, 100.0)  # START reaches the PMU
    assert pmu.streaming and pmu.commands == {"cfg2": 1, "start": 1}
    frame = src.data_frame(row(cfg, 3), 1_000_000.06)
    ev = s.receive_data(frame, 100.1)
    assert [type(e) for e in ev] == [FrameReceived, DataReceived]
    data = ev[1]
    assert isinstance(data, DataReceived)
    assert data.ts == pytest.approx(1_000_000.06)
    assert data.seq == round(1_000_000.06 * 50) & 0xFFFFFFFF
    assert data.flags is None
    np.testing.assert_allclose(data.values, expected_values(stream, row(cfg, 3)), rtol=1e-6)
    s.close(101.0)
    (stop,) = s.data_to_send()
    assert pmu.receive(stop, 101.0) == [] and not pmu.streaming


def _stream_bytes(s: C37Session, pmu: PmuSession, src: C37Stream, cfg: TwinConfig
                  ) -> tuple[bytes, list[bytes]]:
    """The CFG-2 answer and five data frames, as one byte string and as frames."""
    s.connection_made(0.0)
    (ask,) = s.data_to_send()
    frames = pmu.receive(ask, 0.0) + [src.data_frame(row(cfg, k), 1e6 + k / 50)
                                      for k in range(5)]
    return b"".join(frames), frames


def _collect(s: C37Session, chunks: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for i, c in enumerate(chunks):
        out += s.receive_data(c, 0.01 * i)
    return out


@pytest.mark.parametrize("how", ["whole", "byte_by_byte", "trailing"])
def test_fed_whole_byte_by_byte_and_with_trailing_bytes(cfg: TwinConfig, stream: Stream,
                                                        how: str) -> None:
    s, pmu, src = new_pair(stream)
    blob, frames = _stream_bytes(s, pmu, src, cfg)
    if how == "whole":
        chunks = [blob]
    elif how == "byte_by_byte":
        chunks = [blob[i:i + 1] for i in range(len(blob))]
    else:  # the last frame's first bytes trail the others; the rest comes later
        cut = len(blob) - 7
        chunks = [blob[:cut]]
    ev = _collect(s, chunks)
    got = [e.frame for e in ev if isinstance(e, FrameReceived)]
    data = [e for e in ev if isinstance(e, DataReceived)]
    if how == "trailing":
        assert got == frames[:-1] and len(data) == 4
        ev2 = s.receive_data(blob[len(blob) - 7:], 1.0)
        assert [e.frame for e in ev2 if isinstance(e, FrameReceived)] == frames[-1:]
        data += [e for e in ev2 if isinstance(e, DataReceived)]
    else:
        assert got == frames
    assert len(data) == 5
    for k, d in enumerate(data):
        np.testing.assert_allclose(d.values, expected_values(stream, row(cfg, k)), rtol=1e-6)
    assert sum(isinstance(e, Started) for e in ev) == 1


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    stream = load_config("ieee33").stream("pmu-c37")
    cfg = load_config("ieee33")
    s, pmu, src = new_pair(stream)
    blob, frames = _stream_bytes(s, pmu, src, cfg)
    pos = sorted({min(c * 7, len(blob)) for c in cuts})
    chunks = [blob[a:b] for a, b in zip([0, *pos], [*pos, len(blob)], strict=True) if b > a]
    ev = _collect(s, chunks)
    assert [e.frame for e in ev if isinstance(e, FrameReceived)] == frames
    assert sum(isinstance(e, DataReceived) for e in ev) == 5


def test_garbage_is_skipped_and_reported(cfg: TwinConfig, stream: Stream) -> None:
    s, pmu, src = new_pair(stream)
    blob, frames = _stream_bytes(s, pmu, src, cfg)
    ev = s.receive_data(b"\x00\xaa\x13garbage" + blob, 0.0)
    assert [e.frame for e in ev if isinstance(e, FrameReceived)] == frames
    (r,) = [e for e in ev if isinstance(e, Resynced)]
    assert r.skipped_bytes == 10


def test_cfg_request_repeated_then_silence_on_a_fake_clock(stream: Stream) -> None:
    s = C37Session(idcode=stream.idcode, expected=stream.pmus, silence_s=SILENCE,
                   cfg_retry_s=1.0)
    s.connection_made(10.0)
    assert len(s.data_to_send()) == 1
    assert s.next_deadline() == pytest.approx(11.0)
    assert s.tick(10.5) == [] and s.data_to_send() == []
    assert s.tick(11.0) == []
    (again,) = s.data_to_send()
    assert c37.parse(again, 0.0).cmd == c37.CMD_CFG2  # type: ignore[union-attr]
    assert s.next_deadline() == pytest.approx(min(12.0, 10.0 + SILENCE))
    ev = s.tick(12.0)
    assert [type(e) for e in ev] == [Silent]
    assert isinstance(ev[0], Silent) and ev[0].silent_s == pytest.approx(2.0)
    assert s.state is State.IDLE and s.next_deadline() is None


def test_silence_while_streaming(cfg: TwinConfig, stream: Stream) -> None:
    s, pmu, src = new_pair(stream)
    s.connection_made(0.0)
    handshake(s, pmu, 0.0)
    s.receive_data(src.data_frame(row(cfg, 0), 1e6), 5.0)
    assert s.next_deadline() == pytest.approx(5.0 + SILENCE)
    assert s.tick(6.9) == []
    (ev,) = s.tick(7.0)
    assert isinstance(ev, Silent) and s.state is State.IDLE
    assert s.receiver.layout is None  # the next connection starts from scratch


def test_udp_data_before_config_asks_for_it(cfg: TwinConfig, stream: Stream) -> None:
    src = C37Stream(stream, 50.0)
    pmu = PmuSession(src, streaming=True, tcp=False)
    s = C37Session(idcode=stream.idcode, expected=stream.pmus, tcp=False, silence_s=SILENCE)
    ev = s.receive_data(src.data_frame(row(cfg, 0), 1e6), 0.0)
    assert kinds(ev) == ["c37_frame"]  # no configuration yet: nothing decoded
    (ask,) = s.data_to_send()
    assert s.receive_data(src.data_frame(row(cfg, 1), 1e6), 0.1) != []
    assert s.data_to_send() == []  # asked once per retry period
    (cfg2,) = pmu.receive(ask, 0.2)
    ev = s.receive_data(cfg2, 0.2)
    assert kinds(ev) == ["c37_frame", "c37_config", "c37_started"]
    (start,) = s.data_to_send()
    assert c37.parse(start, 0.0).cmd == c37.CMD_START  # type: ignore[union-attr]


def test_handshake_only_session_follows_config_without_values(cfg: TwinConfig,
                                                               stream: Stream) -> None:
    s, pmu, src = new_pair(stream, expected=False)
    s.connection_made(0.0)
    # the configuration is followed (START) but reported by the decoder, not here
    assert kinds(handshake(s, pmu, 0.0)) == ["c37_frame", "c37_started"]
    assert s.receiver.layout is not None
    ev = s.receive_data(src.data_frame(row(cfg, 0), 1e6), 0.1)
    assert [type(e) for e in ev] == [FrameReceived]
    src.set_stat(0x8000)  # STAT changes are the decoder's too ...
    assert kinds(s.receive_data(src.data_frame(row(cfg, 1), 1e6), 0.12)) == ["c37_frame"]
    src.announce_config_change()  # ... an announced change is the session's: it asks
    ev = s.receive_data(src.data_frame(row(cfg, 2), 1e6), 0.14)
    assert kinds(ev) == ["c37_frame", "c37_config_change"]
    assert len(s.data_to_send()) == 2  # START, then CFG-2
    # a corrupted data frame is handed on (the decoder counts it) and reported once
    bad = bytearray(src.data_frame(row(cfg, 1), 1e6))
    bad[20] ^= 0x01
    s2 = C37Session(idcode=stream.idcode, tcp=False, silence_s=SILENCE)
    s2.receive_data(s.receiver.layout.config.build(), 0.0)  # type: ignore[union-attr]
    ev = s2.receive_data(bytes(bad), 0.1) + s2.receive_data(bytes(bad), 0.2)
    assert [type(e) for e in ev] == [FrameReceived, FrameRejected, FrameReceived]
    assert s2.stats.rejected == 2


def test_refused_configuration_is_asked_again_and_reported_once(stream: Stream) -> None:
    bad = C37Stream(stream, 50.0)
    bad.cfg2.pmus[0].station = "OTHER"
    cfg2 = bad.cfg2.build()
    s = C37Session(idcode=stream.idcode, expected=stream.pmus, silence_s=SILENCE,
                   cfg_retry_s=0.5)
    s.connection_made(0.0)
    s.data_to_send()
    ev = s.receive_data(cfg2, 0.1)
    assert kinds(ev) == ["c37_frame", "c37_config_refused"]
    assert s.state is State.REFUSED and s.data_to_send() == []  # no START
    # asked again after a silence period (the PMU may be reconfigured); the same
    # refusal is not reported twice
    assert s.next_deadline() == pytest.approx(0.1 + SILENCE)
    data = s.receive_data(bad.data_frame(np.ones(200), 1e6), 1.0)
    assert kinds(data) == ["c37_frame"]  # no values from a refused configuration
    assert s.tick(2.1) == []
    assert len(s.data_to_send()) == 1
    assert kinds(s.receive_data(cfg2, 2.2)) == ["c37_frame"]
    assert s.state is State.REFUSED and s.data_to_send() == []
    assert s.receiver.stats.refused == 2
