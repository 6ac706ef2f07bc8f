"""C37.118.2 codec: Annex D golden frames, round trips for every frame type, errors,
STAT/time-quality bits, CRC and the TCP stream reassembler."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import c37118 as c
from gateway.codecs.crc import crc_ccitt, crc_ccitt_reference
from gateway.codecs.stream import StreamReassembler
from gateway.errors import (
    BadCrc,
    BadSync,
    FrameSizeMismatch,
    FrameTooShort,
    UnknownFrameType,
)

DATA = Path(__file__).parent / "data"
CFG2 = (DATA / "c37118_annexd_cfg2.bin").read_bytes()
DATAF = (DATA / "c37118_annexd_data.bin").read_bytes()
CMD = (DATA / "c37118_cmd_start.bin").read_bytes()
HDR = (DATA / "c37118_header.bin").read_bytes()
BREAKERS = [f"BREAKER {ch} STATUS" for ch in "123456789ABCDEFG"]


def annex_cfg() -> c.ConfigFrame:
    cfg = c.parse(CFG2, 0.0)
    assert isinstance(cfg, c.ConfigFrame)
    return cfg


# ---------------------------------------------------------------- CRC


def test_crc_check_value_and_reference() -> None:
    assert crc_ccitt(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 17, 300):
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc_ccitt(b) == crc_ccitt_reference(b)


# ---------------------------------------------------------------- Annex D golden frames


def test_annex_d_cfg2() -> None:
    cfg = annex_cfg()
    assert (cfg.frame_type, cfg.version, cfg.idcode) == (c.FRAME_CFG2, 1, 7734)
    assert (cfg.soc, cfg.fracsec, cfg.time_base, cfg.data_rate) == (1149580800, 0,
                                                                      1_000_000, 30)
    (p,) = cfg.pmus
    assert p.station == "Station A" and p.idcode == 7734
    assert p.format == 0x0004
    assert (p.polar, p.phasor_float, p.analog_float, p.freq_float) == (False, False, True,
                                                                       False)
    assert p.phasor_names == ["VA", "VB", "VC", "I1"]
    assert p.analog_names == ["ANALOG1", "ANALOG2", "ANALOG3"]
    assert p.digital_names == BREAKERS
    assert p.phunit == [(0, 915527)] * 3 + [(1, 45776)]
    assert p.anunit == [(0, 1), (1, 1), (2, 1)]
    assert p.digunit == [(0, 0xFFFF)]
    assert (p.fnom, p.cfgcnt) == (60.0, 22)
    assert cfg.build() == CFG2
    assert len(CFG2) == 454 and CFG2[2:4] == b"\x01\xc6"


def test_annex_d_data() -> None:
    cfg = annex_cfg()
    f = c.parse(DATAF, 5.0, cfg)
    assert isinstance(f, c.DataFrame)
    assert DATAF[-2:] == b"\xd4\x3f"  # CHK printed in Annex D
    assert (f.idcode, f.soc, f.fracsec, f.version) == (7734, 1149580800, 16817, 1)
    assert f.time == pytest.approx(1149580800.016817)
    assert f.arrival == 5.0
    raw = np.array([14635 + 0j, -7318 - 12676j, -7318 + 12675j, 1092 + 0j])
    scale = np.array([915527, 915527, 915527, 45776]) * 1e-5
    np.testing.assert_allclose(f.phasors, raw * scale, rtol=1e-12)
    assert abs(f.phasors[0]) == pytest.approx(133987.4, abs=0.1)  # ~134 kV phase A
    assert f.freq.tolist() == [62.5]  # 60 Hz + 2500 mHz
    assert f.dfreq.tolist() == [0.0]
    assert f.analogs.tolist() == [100.0, 1000.0, 10000.0]
    assert f.digitals.tolist() == [0x3C12]
    assert f.stat.tolist() == [0]
    assert f.stat_flags(0).valid
    assert f.build(cfg) == DATAF
    names = cfg.channel_names()
    flat = f.flat(cfg)
    assert len(names) == len(flat) == 4 * 2 + 2 + 3 + 1
    assert names[0] == "Station A.VA.mag" and flat[0] == pytest.approx(133987.37645)
    assert names[-1] == "Station A.DIGITAL0" and flat[-1] == 0x3C12


def test_annex_d_construct_peer_agrees() -> None:
    """The fast decoder and a plain construct parse of the same declaration agree."""
    cfg = annex_cfg()
    ref = cfg.decoder().parse_reference(DATAF)
    assert [ph.a for ph in ref.pmu0.phasors] == [14635, -7318, -7318, 1092]
    assert ref.pmu0.freq == 2500 and ref.chk == 0xD43F


def test_command_and_header_golden() -> None:
    cmd = c.parse(CMD, 0.0)
    assert isinstance(cmd, c.CommandFrame)
    assert (cmd.cmd, cmd.idcode, cmd.ext) == (c.CMD_START, 7734, b"")
    assert cmd.build() == CMD
    assert c.CommandFrame(7734, c.CMD_START, soc=1149580800, version=1).build() == CMD
    hdr = c.parse(HDR, 0.0)
    assert isinstance(hdr, c.HeaderFrame)
    assert hdr.text == "Hi! I am tinyPMU!"
    assert c.HeaderFrame(7734, "Hi! I am tinyPMU!", soc=1149580800, version=1).build() == HDR


# ---------------------------------------------------------------- round trips

names16 = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                  max_size=16)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
scales = st.floats(0.125, 1e6, width=32) | st.floats(-1e6, -0.125, width=32)
angles = st.floats(-3.0, 3.0, width=32)


@st.composite
def pmu_configs(draw: st.DrawFn, *, cfg3: bool = False) -> c.PmuConfig:
    ph = draw(st.integers(0, 5))
    an = draw(st.integers(0, 3))
    dg = draw(st.integers(0, 2))
    p = c.PmuConfig(
        station=draw(names16),
        idcode=draw(st.integers(1, 65534)),
        format=draw(st.integers(0, 15)),
        phasor_names=draw(st.lists(names16, min_size=ph, max_size=ph)),
        analog_names=draw(st.lists(names16, min_size=an, max_size=an)),
        digital_names=draw(st.lists(names16, min_size=16 * dg, max_size=16 * dg)),
        phunit=[(draw(st.integers(0, 1)), draw(st.integers(1, 2**24 - 1)))
                for _ in range(ph)],
        anunit=[(draw(st.integers(0, 2)), draw(st.integers(-(2**23), 2**23 - 1)))
                for _ in range(an)],
        digunit=[(draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
                 for _ in range(dg)],
        fnom=draw(st.sampled_from([50.0, 60.0])),
        cfgcnt=draw(st.integers(0, 0xFFFF)),
    )
    if cfg3:
        p.phunit = [(k, 0) for k, _ in p.phunit]
        p.anunit = [(0, 0)] * an
        p.g_pmu_id = draw(st.binary(min_size=16, max_size=16))
        p.phscale = [(draw(st.integers(0, 0xFFFF)), (k & 1) << 3, draw(st.integers(0, 255)),
                      draw(scales), draw(angles)) for k, _ in p.phunit]
        p.anscale = [(draw(scales), draw(f32)) for _ in range(an)]
        p.lat, p.lon, p.elev = draw(f32), draw(f32), draw(st.sampled_from([math.inf, 10.5]))
        p.svc_class = draw(st.sampled_from(["M", "P"]))
        p.window = draw(st.integers(-(2**31), 2**31 - 1))
        p.grp_dly = draw(st.integers(-(2**31), 2**31 - 1))
    return p


@st.composite
def config_frames(draw: st.DrawFn, frame_type: int | None = None) -> c.ConfigFrame:
    ft = frame_type if frame_type is not None else draw(
        st.sampled_from([c.FRAME_CFG1, c.FRAME_CFG2, c.FRAME_CFG3]))
    pmus = draw(st.lists(pmu_configs(cfg3=ft == c.FRAME_CFG3), min_size=1, max_size=4))
    return c.ConfigFrame(
        idcode=draw(st.integers(1, 65534)), pmus=pmus,
        time_base=draw(st.integers(1, 2**24 - 1)),
        data_rate=draw(st.integers(-32767, 32767)),
        soc=draw(st.integers(0, 2**32 - 1)), fracsec=draw(st.integers(0, 2**24 - 1)),
        time_quality=draw(st.integers(0, 255)), frame_type=ft,
        version=draw(st.sampled_from([1, 2])))


@settings(max_examples=40, deadline=None)
@given(cfg=config_frames())
def test_config_round_trip(cfg: c.ConfigFrame) -> None:
    data = cfg.build()
    back = c.parse(data, 0.0)
    assert back == cfg
    assert back.build() == data


@settings(max_examples=40, deadline=None)
@given(idcode=st.integers(0, 65535), text=st.text(st.characters(max_codepoint=255),
                                                  max_size=300),
       soc=st.integers(0, 2**32 - 1), frac=st.integers(0, 2**24 - 1),
       tq=st.integers(0, 255))
def test_header_round_trip(idcode: int, text: str, soc: int, frac: int, tq: int) -> None:
    h = c.HeaderFrame(idcode, text, soc, frac, tq)
    assert c.parse(h.build(), 0.0) == h


@settings(max_examples=40, deadline=None)
@given(idcode=st.integers(0, 65535), cmd=st.integers(0, 65535),
       ext=st.binary(max_size=40), version=st.sampled_from([1, 2]))
def test_command_round_trip(idcode: int, cmd: int, ext: bytes, version: int) -> None:
    f = c.CommandFrame(idcode, cmd, ext, 17, 5, 0, version)
    assert c.parse(f.build(), 0.0) == f


@st.composite
def data_cases(draw: st.DrawFn) -> tuple[c.ConfigFrame, c.DataFrame]:
    """A configuration (CFG-2 or CFG-3) and a data frame whose values are exactly
    representable on the wire (drawn as wire integers/float32 and converted)."""
    cfg = draw(config_frames(draw(st.sampled_from([c.FRAME_CFG2, c.FRAME_CFG3]))))
    i16 = st.integers(-32767, 32767)
    z: list[complex] = []
    freq, dfreq, an = [], [], []
    for p in cfg.pmus:
        fac = p.phasor_factor()
        for k in range(p.n_phasors):
            if p.phasor_float and p.polar:
                a, b = abs(draw(f32)), draw(angles)
            elif p.phasor_float:
                a, b = draw(f32), draw(f32)
            elif p.polar:
                a, b = draw(st.integers(0, 65535)), draw(st.integers(-31415, 31415)) * 1e-4
            else:
                a, b = draw(i16), draw(i16)
            w = a * np.exp(1j * b) if p.polar else complex(a, b)
            z.append(complex(w * fac[k]))
        if p.freq_float:
            freq.append(draw(f32))
            dfreq.append(draw(f32))
        else:
            freq.append(p.fnom + draw(i16) * 1e-3)
            dfreq.append(draw(i16) * 1e-2)
        m, o = p.analog_scale()
        for k in range(p.n_analogs):
            x = draw(f32) if p.analog_float else draw(i16)
            an.append(x * m[k] + o[k])
    n = len(cfg.pmus)
    nd = sum(p.n_digitals for p in cfg.pmus)
    frame = c.DataFrame(
        cfg.idcode, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**24 - 1)),
        np.array(draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)), np.uint16),
        np.array(z, complex), np.array(freq), np.array(dfreq), np.array(an, float),
        np.array(draw(st.lists(st.integers(0, 0xFFFF), min_size=nd, max_size=nd)), np.uint16),
        draw(st.integers(0, 255)), cfg.version)
    return cfg, frame


def _finite_close(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    ok = np.isfinite(a) & np.isfinite(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-5, atol=1e-6 * (1 + np.abs(a[ok]).max(
        initial=0)))


@settings(max_examples=50, deadline=None)
@given(case=data_cases())
def test_data_round_trip(case: tuple[c.ConfigFrame, c.DataFrame]) -> None:
    cfg, frame = case
    data = frame.build(cfg)
    back = c.parse(data, 3.0, cfg)
    assert isinstance(back, c.DataFrame)
    assert (back.idcode, back.soc, back.fracsec, back.time_quality, back.version) == (
        frame.idcode, frame.soc, frame.fracsec, frame.time_quality, frame.version)
    assert back.time == pytest.approx(frame.soc + frame.fracsec / cfg.time_base)
    assert back.stat.tolist() == frame.stat.tolist()
    assert back.digitals.tolist() == frame.digitals.tolist()
    # phasors: close relative to each phasor's magnitude (polar angles are float32)
    z0, z1 = frame.phasors, back.phasors
    ok = np.isfinite(z0) & np.isfinite(z1)
    assert np.all(np.abs(z1[ok] - z0[ok]) <= 1e-6 * (np.abs(z0[ok]) + 1e-6))
    _finite_close(back.freq, frame.freq)
    _finite_close(back.dfreq, frame.dfreq)
    _finite_close(back.analogs, frame.analogs)
    # wire-exact: a second build of the decoded frame gives the same bytes (rectangular
    # without CFG-3 angle rotation: polar re-encodes the angle of a zero magnitude as 0,
    # and a rotation mixes a tiny component with a large one)
    if not any(p.polar or np.any(p.phasor_factor().imag) for p in cfg.pmus):
        assert back.build(cfg) == data
    # the construct declaration reads the same wire values
    ref = cfg.decoder().parse_reference(data)
    assert ref.chk == struct.unpack(">H", data[-2:])[0]


def test_gather_and_block_paths_agree() -> None:
    """Heterogeneous PMUs take the gather path; the same PMUs alone take the block path."""
    a = c.make_config(9, [("A", 1, ["x", "y"]), ("B", 2, ["u", "v"])])
    b = c.make_config(9, [("A", 1, ["x", "y"]), ("B", 2, ["u", "v", "w"])])
    assert a.decoder()._block is not None and b.decoder()._block is None
    rng = np.random.default_rng(4)
    for cfg, nph in ((a, 4), (b, 5)):
        z = (rng.normal(size=nph) + 1j * rng.normal(size=nph)).astype(np.complex64)
        f = c.DataFrame(9, 1, 2, np.array([1, 2], np.uint16), z.astype(complex),
                        np.array([50.1, 49.9]), np.array([0.5, -0.5]), np.zeros(0),
                        np.zeros(0, np.uint16))
        back = c.parse(f.build(cfg), 0.0, cfg)
        assert isinstance(back, c.DataFrame)
        np.testing.assert_array_equal(back.phasors, z.astype(complex))
        np.testing.assert_allclose(back.freq, [50.1, 49.9], rtol=1e-7)
        assert back.stat.tolist() == [1, 2]


def test_polar_int_phasor_units() -> None:
    """int16 polar: magnitude unsigned x PHUNIT x 1e-5, angle in 1e-4 rad (6.3)."""
    p = c.PmuConfig("S", 1, c.FMT_POLAR, ["V"], [], [], [(0, 100000)], [], [])
    cfg = c.ConfigFrame(1, [p])
    frame = c.DataFrame(1, 0, 0, np.zeros(1, np.uint16), np.array([50000 * np.exp(0.5j)]),
                        np.array([60.0]), np.zeros(1), np.zeros(0), np.zeros(0, np.uint16))
    data = frame.build(cfg)
    assert struct.unpack_from(">Hh", data, 16) == (50000, 5000)
    back = c.parse(data, 0.0, cfg)
    assert isinstance(back, c.DataFrame)
    assert back.phasors[0] == pytest.approx(50000 * np.exp(0.5j))


def test_data_encode_rejects_out_of_range() -> None:
    cfg = annex_cfg()
    f = c.parse(DATAF, 0.0, cfg)
    assert isinstance(f, c.DataFrame)
    f.phasors = f.phasors * 10
    with pytest.raises(ValueError, match="does not fit"):
        f.build(cfg)
    f.phasors = f.phasors[:2]
    with pytest.raises(ValueError, match="phasors"):
        f.build(cfg)


# ---------------------------------------------------------------- STAT and time quality


def test_stat_bits() -> None:
    for w in range(0, 65536, 7):
        assert c.Stat.from_word(w).to_word() == w
    s = c.Stat.from_word(0b11_1_0_1_0_1_010_11_0101)
    assert s.data_error == 3 and not s.valid
    assert s.sync_lost and not s.sorted_by_arrival and s.trigger
    assert not s.config_changed and s.data_modified
    assert (s.time_quality, s.unlocked_time, s.trigger_reason) == (2, 3, 5)
    assert c.Stat.from_word(0x8000).data_error == 2  # test mode


def test_time_quality_byte() -> None:
    for b in range(128):
        assert c.TimeQuality.from_byte(b).to_byte() == b
    q = c.TimeQuality.from_byte(0x5A)
    assert q.leap_direction_negative and not q.leap_occurred and q.leap_pending
    assert q.quality == 0xA


# ---------------------------------------------------------------- errors


def _recrc(b: bytes | bytearray) -> bytes:
    b = bytearray(b)
    b[-2:] = struct.pack(">H", crc_ccitt(bytes(b[:-2])))
    return bytes(b)


def test_errors_carry_offsets() -> None:
    cfg = annex_cfg()
    with pytest.raises(FrameTooShort) as e:
        c.parse(DATAF[:10], 0.0, cfg)
    assert e.value.offset == 10
    with pytest.raises(BadSync) as e:
        c.parse(b"\xab" + DATAF[1:], 0.0, cfg)
    assert e.value.offset == 0
    with pytest.raises(BadSync) as e:
        c.parse(_recrc(DATAF[:1] + b"\x07" + DATAF[2:]), 0.0, cfg)  # version 7
    assert e.value.offset == 1
    with pytest.raises(UnknownFrameType) as e:
        c.parse(_recrc(DATAF[:1] + b"\x61" + DATAF[2:]), 0.0, cfg)
    assert e.value.offset == 1
    bad = bytearray(DATAF)
    bad[20] ^= 0x01
    with pytest.raises(BadCrc) as e:
        c.parse(bytes(bad), 0.0, cfg)
    assert e.value.offset == len(DATAF) - 2
    with pytest.raises(BadCrc):
        cfg.decoder().decode(bytes(bad), 0.0)
    with pytest.raises(FrameTooShort):  # FRAMESIZE says more than we have
        c.parse(DATAF[:-4], 0.0, cfg)
    with pytest.raises(FrameSizeMismatch) as e:  # FRAMESIZE says less
        c.parse(DATAF + b"\0\0", 0.0, cfg)
    assert e.value.offset == 2
    with pytest.raises(c.ConfigMismatch):
        c.parse(DATAF, 0.0)
    other = c.make_config(1, [("X", 1, ["a"])])
    with pytest.raises(FrameSizeMismatch):
        c.parse(DATAF, 0.0, other)
    wrong_id = _recrc(DATAF[:4] + b"\x00\x01" + DATAF[6:])
    with pytest.raises(c.ConfigMismatch) as e:
        c.parse(wrong_id, 0.0, cfg)
    assert e.value.offset == 4
    with pytest.raises(UnknownFrameType):
        cfg.decoder().decode(_recrc(DATAF[:1] + b"\x11" + DATAF[2:]), 0.0)


def test_config_body_errors() -> None:
    # NUM_PMU claims 2 PMUs: the second overruns the frame
    bad = bytearray(CFG2)
    bad[18:20] = b"\x00\x02"
    with pytest.raises(FrameSizeMismatch) as e:
        c.parse(_recrc(bad), 0.0)
    assert 14 < e.value.offset <= len(CFG2)
    # TIME_BASE 0
    bad = bytearray(CFG2)
    bad[14:18] = b"\0\0\0\0"
    with pytest.raises(c.InvalidField):
        c.parse(_recrc(bad), 0.0)
    # bytes left after DATA_RATE
    longer = CFG2[:-2] + b"\0\0" + b"\0\0"
    longer = longer[:2] + struct.pack(">H", len(longer)) + longer[4:]
    with pytest.raises(FrameSizeMismatch, match="left over"):
        c.parse(_recrc(longer), 0.0)


# ---------------------------------------------------------------- reassembler


def test_reassembler_several_frames_in_one_read() -> None:
    assert c.StreamReassembler is StreamReassembler
    r = c.StreamReassembler()
    assert r.feed(CFG2 + DATAF + CMD + HDR) == [CFG2, DATAF, CMD, HDR]
    assert (r.frames, r.garbage_bytes, r.pending) == (4, 0, 0)


def test_reassembler_byte_by_byte() -> None:
    r = StreamReassembler()
    out: list[bytes] = []
    for i in range(len(CFG2 + DATAF)):
        out += r.feed((CFG2 + DATAF)[i:i + 1])
    assert out == [CFG2, DATAF]


def test_reassembler_resynchronises_over_garbage() -> None:
    r = StreamReassembler()
    garbage = b"\x00\xaa\x01\x00\x34\xaa\xaa\x31\xff\xff" + bytes(range(256))
    stream = garbage + DATAF + b"\xaa\x01" + DATAF + DATAF[:-1] + b"\x00" + DATAF
    out: list[bytes] = []
    for k in range(0, len(stream), 37):
        out += r.feed(stream[k:k + 37])
    assert out == [DATAF, DATAF, DATAF]
    assert r.garbage_bytes == len(garbage) + 2 + len(DATAF)
    assert r.crc_rejects >= 1 and r.resyncs >= 1
    assert r.pending == 0


def test_reassembler_max_frame_bounds_false_sync() -> None:
    r = StreamReassembler(max_frame=1000)
    assert r.feed(b"\xaa\x01\xff\xff" + DATAF) == [DATAF]
