"""PMU identity: C37.118 data mapped by station name, IDCODE and phasor names, never by
position; configuration changes (CFGCNT, STAT bit 10) and STAT words as quality flags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.aligner import Aligner
from gateway.codecs import c37118 as c37
from gateway.codecs.c37session import (
    AnalogUnitWarning,
    C37Receiver,
    C37Session,
    ConfigAccepted,
    ConfigChangeAnnounced,
    ConfigChanged,
    ConfigPending,
    ConfigRefused,
    DataReceived,
    Event,
    IdentityMismatch,
    StatChanged,
    describe_configured,
    describe_received,
    match_config,
)
from gateway.codecs.decoders import C37Decoder
from gateway.config import Stream, TwinConfig, load_config
from gateway.snapshot import Flag
from hil.c37server import C37Stream, PmuSession, stream_config

REVERSED = [6, 5, 4, 3, 2, 1, 0]


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def stream(cfg: TwinConfig) -> Stream:
    return cfg.stream("pmu-c37")


def row(cfg: TwinConfig, k: int = 0) -> np.ndarray:
    return 1.0 + 0.01 * np.arange(len(cfg.channels)) + 0.001 * k


def channel_values(stream: Stream, values: np.ndarray) -> np.ndarray:
    return np.array([values[c] for p in stream.pmus for ph in p.phasors
                     for c in (ph.mag, ph.ang)])


def test_reordered_pmus_are_remapped_onto_their_channels(cfg: TwinConfig,
                                                         stream: Stream) -> None:
    src = C37Stream(stream, 50.0, order=REVERSED)
    assert [p.station for p in src.cfg2.pmus] == [stream.pmus[k].station for k in REVERSED]
    dec = C37Decoder(stream)
    assert dec.decode(src.cfg2.build(), 0.0) is None
    (acc,) = [e for e in dec.take_events() if isinstance(e, ConfigAccepted)]
    assert acc.remapped and acc.order == tuple(REVERSED)
    out = dec.decode(src.data_frame(row(cfg), 2e6), 1.0)
    assert out is not None
    np.testing.assert_allclose(out[2], channel_values(stream, row(cfg)), rtol=1e-6)
    # through the aligner: PMU6's voltage lands on pmu6.vm, PMU1's on pmu1.vm
    al = Aligner(len(cfg.channels), [dec.layout], rate_hz=50.0, lag_s=0.1)
    (snap,) = al.feed(stream.name, out[2], 1.0, ts=out[1], seq=out[0])
    names = [c.name for c in cfg.channels]
    for name in ("pmu1.vm", "pmu6.vm", "pmu6.va"):
        i = names.index(name)
        assert snap.values[i] == pytest.approx(row(cfg)[i], rel=1e-6)


def test_phasors_reordered_within_a_pmu_are_remapped(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    p = cfg2.pmus[1]
    perm = [2, 0, 3, 1]
    p.phasor_names = [p.phasor_names[k] for k in perm]
    p.phunit = [p.phunit[k] for k in perm]
    m = match_config(stream.pmus, cfg2, stream.idcode)
    assert m.remapped and m.pmu_src == tuple(range(7))
    # configured phasor k of PMU3 sits at wire position perm.index(k) of its block
    assert list(m.phasor_src[2:6]) == [2 + perm.index(k) for k in range(4)]


def _mismatch(stream: Stream, cfg2: c37.ConfigFrame, *words: str) -> IdentityMismatch:
    dec = C37Decoder(stream)
    with pytest.raises(IdentityMismatch) as ei:
        dec.decode(cfg2.build(), 0.0)
    msg = str(ei.value)
    # both lists named: every configured and every received PMU appears in the message
    assert describe_configured(stream.pmus) in msg
    assert describe_received(cfg2) in msg
    for w in words:
        assert w in msg
    (ev,) = [e for e in dec.take_events() if isinstance(e, ConfigRefused)]
    assert ev.configured == describe_configured(stream.pmus)
    assert ev.received == describe_received(cfg2)
    # no data is taken from a refused configuration
    data = C37Stream(stream, 50.0).data_frame(np.ones(200), 2e6)
    with pytest.raises(ConfigPending, match="refused"):
        dec.decode(data, 1.0)
    return ei.value


def test_unknown_station_is_refused_naming_both_lists(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    cfg2.pmus[3].station = "FEEDER9"
    _mismatch(stream, cfg2, "PMU11#4 is not in it", "FEEDER9#4")


def test_renumbered_idcode_and_missing_pmu_are_refused(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    cfg2.pmus[0].idcode = 99
    _mismatch(stream, cfg2, "PMU1#1 is not in it")
    short = stream_config(stream, 50.0)
    short.pmus = short.pmus[:-1]
    _mismatch(stream, short, "6 PMUs, 7 configured")


def test_ambiguous_names_do_not_identify_the_order(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    cfg2.pmus[2] = dataclasses.replace(cfg2.pmus[1])  # PMU3#2 twice, PMU6 gone
    _mismatch(stream, cfg2, "appears 2 times")


def test_phasor_names_or_kinds_that_differ_are_refused(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    cfg2.pmus[0].phasor_names = ["V", "I 9-9"]
    _mismatch(stream, cfg2, "PMU1: phasors (V, I 9-9)")
    kinds = stream_config(stream, 50.0)
    kinds.pmus[0].phunit = [(0, 1), (0, 1)]  # the current declared a voltage
    _mismatch(stream, kinds, "same kinds")


def test_phasor_count_change_is_refused_even_in_order(stream: Stream) -> None:
    cfg2 = stream_config(stream, 50.0)
    cfg2.pmus[0].phasor_names = ["V"]
    cfg2.pmus[0].phunit = [(0, 1)]
    _mismatch(stream, cfg2, "PMU1: phasors (V)")


def _streaming(stream: Stream) -> tuple[C37Session, PmuSession, C37Stream]:
    src = C37Stream(stream, 50.0)
    pmu = PmuSession(src)
    s = C37Session(idcode=stream.idcode, expected=stream.pmus, silence_s=5.0)
    s.connection_made(0.0)
    for cmd in s.data_to_send():
        for r in pmu.receive(cmd, 0.0):
            s.receive_data(r, 0.0)
    s.data_to_send()  # START
    return s, pmu, src


def _answer(s: C37Session, pmu: PmuSession, now: float) -> list[Event]:
    out: list[Event] = []
    for cmd in s.data_to_send():
        for r in pmu.receive(cmd, now):
            out += s.receive_data(r, now)
    return out


def test_cfgcnt_change_re_requests_cfg2_and_remaps(cfg: TwinConfig, stream: Stream) -> None:
    s, pmu, src = _streaming(stream)
    ev = s.receive_data(src.data_frame(row(cfg, 0), 1e6), 0.1)
    assert any(isinstance(e, DataReceived) for e in ev)
    # 1. the PMU announces a change (STAT bit 10): the session asks for CFG-2 at once
    src.announce_config_change()
    ev = s.receive_data(src.data_frame(row(cfg, 1), 1e6 + 0.02), 0.12)
    assert [type(e) for e in ev if isinstance(e, ConfigChangeAnnounced)] == \
        [ConfigChangeAnnounced]
    assert any(isinstance(e, DataReceived) for e in ev)  # the old layout still holds
    ev = _answer(s, pmu, 0.13)  # the same configuration again: no change yet
    assert not any(isinstance(e, ConfigChanged) for e in ev)
    assert pmu.commands["cfg2"] == 2
    ev = s.receive_data(src.data_frame(row(cfg, 2), 1e6 + 0.04), 0.14)
    assert not any(isinstance(e, ConfigChangeAnnounced) for e in ev)  # reported once
    assert s.data_to_send() == []
    # 2. the change is in force (CFGCNT + 1, PMUs reversed, bit 10 cleared): data is held
    #    back and CFG-2 asked for at once, so no value lands on the old layout's channels
    src.change_config(order=REVERSED)
    ev = s.receive_data(src.data_frame(row(cfg, 3), 1e6 + 0.06), 0.16)
    assert not any(isinstance(e, DataReceived) for e in ev)
    assert s.receiver.stats.held_back == 1
    ev = _answer(s, pmu, 0.17)
    assert pmu.commands["cfg2"] == 3
    (changed,) = [e for e in ev if isinstance(e, ConfigChanged)]
    assert changed.old_cfgcnt == (0,) * 7 and changed.new_cfgcnt == (1,) * 7
    (acc,) = [e for e in ev if isinstance(e, ConfigAccepted)]
    assert acc.remapped
    ev = s.receive_data(src.data_frame(row(cfg, 4), 1e6 + 0.08), 0.18)
    (data,) = [e for e in ev if isinstance(e, DataReceived)]
    np.testing.assert_allclose(data.values, channel_values(stream, row(cfg, 4)), rtol=1e-6)


def test_unannounced_layout_change_asks_for_cfg2(cfg: TwinConfig, stream: Stream) -> None:
    s, _, _ = _streaming(stream)
    other = C37Stream(dataclasses.replace(stream, pmus=stream.pmus[:3]), 50.0)
    ev = s.receive_data(other.data_frame(row(cfg), 1e6), 2.0)
    assert [e.kind for e in ev] == ["c37_frame", "c37_frame_error"]
    (ask,) = s.data_to_send()
    assert c37.parse(ask, 0.0).cmd == c37.CMD_CFG2  # type: ignore[union-attr]


def test_decoder_holds_data_while_a_change_is_in_force(cfg: TwinConfig,
                                                       stream: Stream) -> None:
    src = C37Stream(stream, 50.0)
    dec = C37Decoder(stream)
    dec.decode(src.cfg2.build(), 0.0)
    src.announce_config_change()
    assert dec.decode(src.data_frame(row(cfg), 1e6), 0.1) is not None
    src.change_config(order=REVERSED)
    with pytest.raises(ConfigPending, match="held back"):
        dec.decode(src.data_frame(row(cfg), 1e6 + 0.02), 0.12)
    dec.decode(src.cfg2.build(), 0.13)
    out = dec.decode(src.data_frame(row(cfg, 5), 1e6 + 0.04), 0.14)
    assert out is not None
    np.testing.assert_allclose(out[2], channel_values(stream, row(cfg, 5)), rtol=1e-6)
    assert any(isinstance(e, ConfigChanged) for e in dec.take_events())


@pytest.mark.parametrize(("word", "flag"), [
    (0x8000, Flag.BAD),  # data error: PMU error
    (0x4000, Flag.BAD),  # test mode
    (0x2000, Flag.TIME_SUSPECT),  # PMU sync lost
    (0x1000, Flag.TIME_SUSPECT),  # data sorted by arrival
    (0x0800, Flag.TRIGGER),
])
def test_stat_bits_become_flags_on_that_pmus_channels(cfg: TwinConfig, stream: Stream,
                                                      word: int, flag: Flag) -> None:
    src = C37Stream(stream, 50.0, order=REVERSED)  # flags follow identity, not position
    dec = C37Decoder(stream)
    dec.decode(src.cfg2.build(), 0.0)
    assert dec.decode(src.data_frame(row(cfg), 1e6), 0.1) is not None
    assert dec.flags is None
    src.set_stat(word, "PMU6")
    out = dec.decode(src.data_frame(row(cfg), 1e6 + 0.02), 0.12)
    assert out is not None and dec.flags is not None
    pmu_of_point = np.repeat(np.arange(7), [2 * len(p.phasors) for p in stream.pmus])
    want = np.where(pmu_of_point == 2, np.uint32(flag), np.uint32(0))
    np.testing.assert_array_equal(dec.flags, want)
    (ev,) = [e for e in dec.take_events() if isinstance(e, StatChanged)]
    assert ev.station == "PMU6" and ev.word == word and ev.flags == flag
    # an unchanged STAT word is no new event; the flags stay on every frame
    dec.decode(src.data_frame(row(cfg), 1e6 + 0.04), 0.14)
    assert not any(isinstance(e, StatChanged) for e in dec.take_events())
    np.testing.assert_array_equal(dec.flags, want)
    # the aligner takes them onto the PMU's snapshot channels
    al = Aligner(len(cfg.channels), [dec.layout], rate_hz=50.0, lag_s=0.1)
    (snap,) = al.feed(stream.name, out[2], 0.14, ts=out[1], seq=out[0], flags=dec.flags)
    names = [c.name for c in cfg.channels]
    pmu6 = [names.index(n) for n in ("pmu6.vm", "pmu6.va")]
    pmu1 = [names.index(n) for n in ("pmu1.vm", "pmu1.va")]
    assert all(snap.flags[i] & flag for i in pmu6)
    assert not any(snap.flags[i] for i in pmu1)
    # cleared: flags gone, one event saying so
    src.set_stat(0, "PMU6")
    dec.decode(src.data_frame(row(cfg), 1e6 + 0.06), 0.16)
    assert dec.flags is None
    (ev,) = [e for e in dec.take_events() if isinstance(e, StatChanged)]
    assert ev.flags == 0


def test_int16_analog_with_zero_anunit_is_a_warning() -> None:
    pmu = c37.PmuConfig("PMUA", 9, c37.FMT_POLAR, ["V"], ["TEMP", "P"], [], [(0, 100)],
                        [(1, 0), (1, 1000)], [], fnom=50.0)
    cfg2 = c37.ConfigFrame(9, [pmu])
    rx = C37Receiver()
    ev = rx.config(c37.parse(cfg2.build(), 0.0))  # type: ignore[arg-type]
    (w,) = [e for e in ev if isinstance(e, AnalogUnitWarning)]
    assert w.station == "PMUA" and w.analog == "TEMP"
    assert "ANUNIT" in str(w.detail()["warning"])
    floats = dataclasses.replace(pmu, format=c37.FMT_POLAR | c37.FMT_ANALOG_FLOAT)
    ev = C37Receiver().config(c37.ConfigFrame(9, [floats]))
    assert not any(isinstance(e, AnalogUnitWarning) for e in ev)
