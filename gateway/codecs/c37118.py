"""IEEE C37.118.2-2011 synchrophasor frames: data, header, CFG-1/2/3 and command.

Every frame starts with the common header of clause 6.2 (Table 2): SYNC (0xAA, then
frame type in bits 6-4 and version in bits 3-0), FRAMESIZE, IDCODE, SOC and FRACSEC
(time-quality byte of Table 3 plus a 24-bit fraction of TIME_BASE) and ends with the
CRC-CCITT of Annex B. :func:`parse` checks size, SYNC, version and CRC before it looks at
the body, and raises only the ``FrameError`` family of :mod:`gateway.errors`.

Bodies are declared with construct. Data frames (6.3, Table 5) are the hot path: a
:class:`DataDecoder` walks the construct declaration derived from a configuration once,
turns its leaves into byte-gather indices per numpy dtype and then decodes a frame with a
handful of vectorised numpy calls, never through construct's per-element parser.

The common-header constants come from :mod:`gateway.codecs.c37common`, which the TCP
stream reassembler (:mod:`gateway.codecs.stream`, re-exported here as
``StreamReassembler``) shares, so the two modules import in one direction only.
"""

from __future__ import annotations

import io
import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import construct as cs
import numpy as np

from gateway.codecs.c37common import (
    FRAME_CFG1,
    FRAME_CFG2,
    FRAME_CFG3,
    FRAME_CMD,
    FRAME_DATA,
    FRAME_HEADER,
    FRAME_NAMES,
    HEADER_SIZE,
    MIN_FRAME,
    SYNC_BYTE,
    VERSIONS,
)
from gateway.codecs.crc import crc_ccitt
from gateway.codecs.layout import declaration_leaves
from gateway.codecs.stream import StreamReassembler as StreamReassembler
from gateway.errors import (
    BadCrc,
    BadSync,
    FrameError,
    FrameSizeMismatch,
    FrameTooShort,
    UnknownFrameType,
)

# command words (Table 15)
CMD_STOP = 1
CMD_START = 2
CMD_HEADER = 3
CMD_CFG1 = 4
CMD_CFG2 = 5
CMD_CFG3 = 6
CMD_EXTENDED = 8

# FORMAT bits (Table 9)
FMT_POLAR = 0x1
FMT_PHASOR_FLOAT = 0x2
FMT_ANALOG_FLOAT = 0x4
FMT_FREQ_FLOAT = 0x8

_COMMON = struct.Struct(">BBHHII")
_EMPTY_F = np.zeros(0, np.float64)
_EMPTY_U = np.zeros(0, np.uint16)
_EMPTY_F.flags.writeable = False
_EMPTY_U.flags.writeable = False
_U16 = struct.Struct(">H")


class ConfigMismatch(FrameError):
    """A data frame arrived with no configuration, or one for another IDCODE."""


class LayoutMismatch(FrameSizeMismatch):
    """A well-formed data frame (FRAMESIZE, SYNC and CRC fine) of another size than the
    configuration describes: the sender's configuration changed."""


class InvalidField(FrameError):
    """A field holds a value the standard rules out (TIME_BASE 0, fragmented CFG-3, ...)."""


# --------------------------------------------------------------------------------------
# small decoded fields


@dataclass(frozen=True, slots=True)
class TimeQuality:
    """The FRACSEC high byte (Table 3): leap-second bits and the time-quality code."""

    leap_direction_negative: bool
    leap_occurred: bool
    leap_pending: bool
    quality: int  # 0 locked to UTC .. 0xF clock failure

    @classmethod
    def from_byte(cls, b: int) -> TimeQuality:
        return cls(bool(b & 0x40), bool(b & 0x20), bool(b & 0x10), b & 0x0F)

    def to_byte(self) -> int:
        return (
            (0x40 if self.leap_direction_negative else 0)
            | (0x20 if self.leap_occurred else 0)
            | (0x10 if self.leap_pending else 0)
            | (self.quality & 0x0F)
        )


@dataclass(frozen=True, slots=True)
class Stat:
    """A data frame's STAT word (Table 7), decoded into flags."""

    data_error: int  # bits 15-14: 0 good, 1 PMU error, 2 test mode, 3 PMU error (do not use)
    sync_lost: bool  # bit 13: not synchronised to a UTC-traceable source
    sorted_by_arrival: bool  # bit 12
    trigger: bool  # bit 11
    config_changed: bool  # bit 10: CFG changes within a minute
    data_modified: bool  # bit 9
    time_quality: int  # bits 8-6: PMU time quality
    unlocked_time: int  # bits 5-4: time since sync lost (0 <10 s .. 3 >1000 s)
    trigger_reason: int  # bits 3-0

    @classmethod
    def from_word(cls, w: int) -> Stat:
        return cls(
            (w >> 14) & 3,
            bool(w & 0x2000),
            bool(w & 0x1000),
            bool(w & 0x0800),
            bool(w & 0x0400),
            bool(w & 0x0200),
            (w >> 6) & 7,
            (w >> 4) & 3,
            w & 0xF,
        )

    def to_word(self) -> int:
        return (
            (self.data_error & 3) << 14
            | self.sync_lost << 13
            | self.sorted_by_arrival << 12
            | self.trigger << 11
            | self.config_changed << 10
            | self.data_modified << 9
            | (self.time_quality & 7) << 6
            | (self.unlocked_time & 3) << 4
            | (self.trigger_reason & 0xF)
        )

    @property
    def valid(self) -> bool:
        """Values usable: no PMU error and not in test mode."""
        return self.data_error == 0


# --------------------------------------------------------------------------------------
# configuration


@dataclass(slots=True)
class PmuConfig:
    """One PMU block of a configuration frame (Table 8 for CFG-1/2, Table 10 for CFG-3).

    ``phunit``: (0 voltage / 1 current, 24-bit scale in 1e-5 V or A per bit) per phasor;
    ``anunit``: (0 point-on-wave / 1 RMS / 2 peak, signed 24-bit scale) per analog;
    ``digunit``: (normal-status mask, valid-inputs mask) per digital word. The CFG-3
    fields (``phscale``: (flags, type byte, user byte, scale Y, angle θ); ``anscale``:
    (scale M, offset B)) are None in CFG-1/2 and then derived from the units.
    """

    station: str
    idcode: int
    format: int
    phasor_names: list[str]
    analog_names: list[str]
    digital_names: list[str]  # 16 per digital word, bit 0 first
    phunit: list[tuple[int, int]]
    anunit: list[tuple[int, int]]
    digunit: list[tuple[int, int]]
    fnom: float = 60.0
    cfgcnt: int = 0
    # CFG-3 only
    g_pmu_id: bytes = bytes(16)
    phscale: list[tuple[int, int, int, float, float]] | None = None
    anscale: list[tuple[float, float]] | None = None
    lat: float = math.inf
    lon: float = math.inf
    elev: float = math.inf
    svc_class: str = "M"
    window: int = 0
    grp_dly: int = 0

    @property
    def polar(self) -> bool:
        return bool(self.format & FMT_POLAR)

    @property
    def phasor_float(self) -> bool:
        return bool(self.format & FMT_PHASOR_FLOAT)

    @property
    def analog_float(self) -> bool:
        return bool(self.format & FMT_ANALOG_FLOAT)

    @property
    def freq_float(self) -> bool:
        return bool(self.format & FMT_FREQ_FLOAT)

    @property
    def n_phasors(self) -> int:
        return len(self.phasor_names)

    @property
    def n_analogs(self) -> int:
        return len(self.analog_names)

    @property
    def n_digitals(self) -> int:
        return len(self.digital_names) // 16

    def phasor_factor(self) -> np.ndarray:
        """Complex factor per phasor taking the wire value to volts/amperes.

        CFG-3: Y·e^{jθ} (clause 6.4, PHSCALE). CFG-1/2: PHUNIT·1e-5 for 16-bit integers,
        1 for floating point (already in engineering units).
        """
        if self.phscale is not None:
            return np.array([s[3] * np.exp(1j * s[4]) for s in self.phscale], complex)
        if self.phasor_float:
            return np.ones(self.n_phasors, complex)
        return np.array([u[1] * 1e-5 for u in self.phunit], complex)

    def analog_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(multiplier, offset) per analog: CFG-3 ANSCALE M·x + B, else ANUNIT for int16."""
        if self.anscale is not None:
            return (np.array([a[0] for a in self.anscale], float),
                    np.array([a[1] for a in self.anscale], float))
        if self.analog_float:
            return np.ones(self.n_analogs), np.zeros(self.n_analogs)
        return np.array([float(a[1]) for a in self.anunit]), np.zeros(self.n_analogs)


@dataclass(slots=True)
class ConfigFrame:
    """CFG-1, CFG-2 or CFG-3 (``frame_type``): TIME_BASE, the PMU blocks and DATA_RATE."""

    idcode: int
    pmus: list[PmuConfig]
    time_base: int = 1_000_000
    data_rate: int = 50  # frames/s; negative: seconds per frame
    soc: int = 0
    fracsec: int = 0
    time_quality: int = 0
    frame_type: int = FRAME_CFG2
    version: int = 2
    cont_idx: int = 0  # CFG-3 only
    arrival: float = field(default=0.0, compare=False)
    _decoder: DataDecoder | None = field(default=None, init=False, repr=False, compare=False)

    def decoder(self) -> DataDecoder:
        """The :class:`DataDecoder` for data frames described by this configuration."""
        if self._decoder is None:
            self._decoder = DataDecoder(self)
        return self._decoder

    def channel_names(self, *, polar: bool = True) -> list[str]:
        """Labels of :meth:`DataFrame.flat`: per PMU phasors (mag/ang or re/im), FREQ,
        DFREQ, analogs, digital words, prefixed with the station name."""
        a, b = ("mag", "ang") if polar else ("re", "im")
        out: list[str] = []
        for p in self.pmus:
            st = p.station
            for n in p.phasor_names:
                out += [f"{st}.{n}.{a}", f"{st}.{n}.{b}"]
            out += [f"{st}.FREQ", f"{st}.DFREQ"]
            out += [f"{st}.{n}" for n in p.analog_names]
            out += [f"{st}.DIGITAL{k}" for k in range(p.n_digitals)]
        return out

    def build(self) -> bytes:
        if self.frame_type == FRAME_CFG3:
            body = _build_cfg3_body(self)
        elif self.frame_type in (FRAME_CFG1, FRAME_CFG2):
            body = _build_cfg12_body(self)
        else:
            raise ValueError(f"frame_type {self.frame_type} is not a configuration frame")
        return _finish(self.frame_type, self.version, self.idcode, self.soc,
                       self.time_quality, self.fracsec, body)


@dataclass(slots=True)
class HeaderFrame:
    """Header frame (6.5): free human-readable text about the data source."""

    idcode: int
    text: str
    soc: int = 0
    fracsec: int = 0
    time_quality: int = 0
    version: int = 2
    arrival: float = field(default=0.0, compare=False)

    def build(self) -> bytes:
        body = self.text.encode("latin-1")
        return _finish(FRAME_HEADER, self.version, self.idcode, self.soc, self.time_quality,
                       self.fracsec, body)


@dataclass(slots=True)
class CommandFrame:
    """Command frame (6.6, Table 14): CMD word and, for extended frames, user data."""

    idcode: int
    cmd: int
    ext: bytes = b""
    soc: int = 0
    fracsec: int = 0
    time_quality: int = 0
    version: int = 2
    arrival: float = field(default=0.0, compare=False)

    def build(self) -> bytes:
        body = _U16.pack(self.cmd) + self.ext
        return _finish(FRAME_CMD, self.version, self.idcode, self.soc, self.time_quality,
                       self.fracsec, body)


@dataclass(slots=True, eq=False)
class DataFrame:
    """Data frame (6.3), all PMUs flattened in configuration order, engineering units.

    ``phasors``: complex volts/amperes; ``freq``: Hz; ``dfreq``: Hz/s; ``analogs`` scaled
    as the configuration says; ``stat`` and ``digitals`` the raw 16-bit words. ``time`` is
    SOC + FRACSEC/TIME_BASE when decoded with a configuration.
    """

    idcode: int
    soc: int
    fracsec: int
    stat: np.ndarray
    phasors: np.ndarray
    freq: np.ndarray
    dfreq: np.ndarray
    analogs: np.ndarray
    digitals: np.ndarray
    time_quality: int = 0
    version: int = 2
    time: float | None = None
    arrival: float = 0.0

    def stat_flags(self, i: int) -> Stat:
        return Stat.from_word(int(self.stat[i]))

    def flat(self, config: ConfigFrame, *, polar: bool = True) -> np.ndarray:
        """Values in the order of :meth:`ConfigFrame.channel_names`."""
        out: list[float] = []
        ph = an = dg = 0
        for i, p in enumerate(config.pmus):
            z = self.phasors[ph:ph + p.n_phasors]
            if polar:
                pairs = np.column_stack([np.abs(z), np.angle(z)])
            else:
                pairs = np.column_stack([z.real, z.imag])
            out += pairs.ravel().tolist()
            out += [float(self.freq[i]), float(self.dfreq[i])]
            out += self.analogs[an:an + p.n_analogs].tolist()
            out += [float(d) for d in self.digitals[dg:dg + p.n_digitals]]
            ph += p.n_phasors
            an += p.n_analogs
            dg += p.n_digitals
        return np.array(out, dtype=np.float64)

    def build(self, config: ConfigFrame) -> bytes:
        return config.decoder().encode(self)


Frame = ConfigFrame | HeaderFrame | CommandFrame | DataFrame


# --------------------------------------------------------------------------------------
# common header and CRC


def _finish(ftype: int, version: int, idcode: int, soc: int, tq: int, fracsec: int,
            body: bytes) -> bytes:
    size = HEADER_SIZE + len(body) + 2
    if size > 0xFFFF:
        raise ValueError(f"frame of {size} bytes exceeds FRAMESIZE's 65535")
    if not 0 <= fracsec < 1 << 24:
        raise ValueError(f"FRACSEC {fracsec} does not fit 24 bits")
    head = _COMMON.pack(SYNC_BYTE, (ftype << 4) | version, size, idcode, soc,
                        ((tq & 0xFF) << 24) | fracsec)
    frame = head + body
    return frame + _U16.pack(crc_ccitt(frame))


def check_common(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, int]:
    """Validate size, SYNC, version, frame type and CRC; return the common header fields
    (frame type, version, IDCODE, SOC, time-quality byte, FRACSEC)."""
    n = len(data)
    if n < MIN_FRAME:
        raise FrameTooShort(f"{n} bytes, a C37.118 frame has at least {MIN_FRAME}", n)
    sync, kind, size, idcode, soc, frac = _COMMON.unpack_from(data)
    if sync != SYNC_BYTE:
        raise BadSync(f"first byte 0x{sync:02X}, expected 0xAA", 0)
    version = kind & 0x0F
    if version not in VERSIONS or kind & 0x80:
        raise BadSync(f"SYNC second byte 0x{kind:02X}: unknown version or reserved bit", 1)
    ftype = (kind >> 4) & 0x07
    if ftype not in FRAME_NAMES:
        raise UnknownFrameType(f"frame type {ftype} in SYNC 0x{kind:02X}", 1)
    if size != n:
        if size > n:
            raise FrameTooShort(f"FRAMESIZE {size} but only {n} bytes", n)
        raise FrameSizeMismatch(f"FRAMESIZE {size} but {n} bytes", 2)
    if size < MIN_FRAME:
        raise FrameSizeMismatch(f"FRAMESIZE {size} is below the minimum {MIN_FRAME}", 2)
    (chk,) = _U16.unpack_from(data, n - 2)
    crc = crc_ccitt(memoryview(data)[: n - 2])
    if chk != crc:
        raise BadCrc(f"CHK 0x{chk:04X}, computed 0x{crc:04X}", n - 2)
    return ftype, version, idcode, soc, frac >> 24, frac & 0xFFFFFF


def parse(data: bytes | bytearray | memoryview, now: float,
          config: ConfigFrame | None = None) -> Frame:
    """Decode one complete frame received at ``now``; data frames need ``config``."""
    ftype, version, idcode, soc, tq, frac = check_common(data)
    if ftype == FRAME_DATA:
        if config is None:
            raise ConfigMismatch("data frame before any configuration frame", 0)
        return config.decoder().decode(data, now)
    body = bytes(data[HEADER_SIZE:-2])
    if ftype == FRAME_HEADER:
        return HeaderFrame(idcode, body.decode("latin-1"), soc, frac, tq, version, now)
    if ftype == FRAME_CMD:
        if len(body) < 2:
            raise FrameTooShort("command frame without a CMD word", HEADER_SIZE + len(body))
        (cmd,) = _U16.unpack_from(body)
        return CommandFrame(idcode, cmd, body[2:], soc, frac, tq, version, now)
    if ftype == FRAME_CFG3:
        return _parse_cfg3(body, idcode, soc, frac, tq, version, now)
    return _parse_cfg12(body, ftype, idcode, soc, frac, tq, version, now)


# --------------------------------------------------------------------------------------
# configuration bodies (Tables 8 and 10)

_NAME16 = cs.Bytes(16)
_PMU12 = cs.Struct(
    "station" / _NAME16,
    "idcode" / cs.Int16ub,
    "format" / cs.Int16ub,
    "phnmr" / cs.Int16ub,
    "annmr" / cs.Int16ub,
    "dgnmr" / cs.Int16ub,
    "names" / cs.Array(cs.this.phnmr + cs.this.annmr + 16 * cs.this.dgnmr, _NAME16),
    "phunit" / cs.Array(cs.this.phnmr, cs.Int32ub),
    "anunit" / cs.Array(cs.this.annmr, cs.Int32ub),
    "digunit" / cs.Array(cs.this.dgnmr, cs.Int32ub),
    "fnom" / cs.Int16ub,
    "cfgcnt" / cs.Int16ub,
)
CFG12_BODY = cs.Struct(
    "time_base" / cs.Int32ub,
    "num_pmu" / cs.Int16ub,
    "pmus" / cs.Array(cs.this.num_pmu, _PMU12),
    "data_rate" / cs.Int16sb,
    cs.Terminated,
)
_NAME = cs.Prefixed(cs.Int8ub, cs.GreedyBytes)
_PMU3 = cs.Struct(
    "station" / _NAME,
    "idcode" / cs.Int16ub,
    "g_pmu_id" / cs.Bytes(16),
    "format" / cs.Int16ub,
    "phnmr" / cs.Int16ub,
    "annmr" / cs.Int16ub,
    "dgnmr" / cs.Int16ub,
    "names" / cs.Array(cs.this.phnmr + cs.this.annmr + 16 * cs.this.dgnmr, _NAME),
    "phscale" / cs.Array(cs.this.phnmr, cs.Struct(
        "flags" / cs.Int16ub, "kind" / cs.Int8ub, "user" / cs.Int8ub,
        "scale" / cs.Float32b, "angle" / cs.Float32b)),
    "anscale" / cs.Array(cs.this.annmr, cs.Struct("scale" / cs.Float32b,
                                                  "offset" / cs.Float32b)),
    "digunit" / cs.Array(cs.this.dgnmr, cs.Int32ub),
    "lat" / cs.Float32b,
    "lon" / cs.Float32b,
    "elev" / cs.Float32b,
    "svc_class" / cs.Bytes(1),
    "window" / cs.Int32sb,
    "grp_dly" / cs.Int32sb,
    "fnom" / cs.Int16ub,
    "cfgcnt" / cs.Int16ub,
)
CFG3_BODY = cs.Struct(
    "cont_idx" / cs.Int16ub,
    "time_base" / cs.Int32ub,
    "num_pmu" / cs.Int16ub,
    "pmus" / cs.Array(cs.this.num_pmu, _PMU3),
    "data_rate" / cs.Int16sb,
    cs.Terminated,
)


def _parse_body(decl: cs.Struct, body: bytes, what: str) -> Any:
    stream = io.BytesIO(body)
    try:
        return decl.parse_stream(stream)
    except cs.TerminatedError as exc:
        raise FrameSizeMismatch(f"{what}: bytes left over after the last field",
                                HEADER_SIZE + stream.tell()) from exc
    except (cs.ConstructError, ValueError, OverflowError) as exc:
        raise FrameSizeMismatch(f"{what}: declared counts overrun the frame",
                                HEADER_SIZE + stream.tell()) from exc


def _text(b: bytes) -> str:
    return b.decode("latin-1").rstrip(" \x00")


def _time_base(raw: int) -> int:
    tb = raw & 0xFFFFFF
    if tb == 0:
        raise InvalidField("TIME_BASE is 0", HEADER_SIZE)
    return tb


def _s24(v: int) -> int:
    v &= 0xFFFFFF
    return v - (1 << 24) if v & 0x800000 else v


def _split_names(names: list[str], ph: int, an: int) -> tuple[list[str], list[str], list[str]]:
    return names[:ph], names[ph:ph + an], names[ph + an:]


def _parse_cfg12(body: bytes, ftype: int, idcode: int, soc: int, frac: int, tq: int,
                 version: int, now: float) -> ConfigFrame:
    c = _parse_body(CFG12_BODY, body, FRAME_NAMES[ftype])
    pmus = []
    for p in c.pmus:
        names = [_text(n) for n in p.names]
        ph, an, dg = _split_names(names, p.phnmr, p.annmr)
        pmus.append(PmuConfig(
            station=_text(p.station), idcode=p.idcode, format=p.format,
            phasor_names=ph, analog_names=an, digital_names=dg,
            phunit=[(u >> 24, u & 0xFFFFFF) for u in p.phunit],
            anunit=[(u >> 24, _s24(u)) for u in p.anunit],
            digunit=[(u >> 16, u & 0xFFFF) for u in p.digunit],
            fnom=50.0 if p.fnom & 1 else 60.0, cfgcnt=p.cfgcnt,
        ))
    return ConfigFrame(idcode, pmus, _time_base(c.time_base), c.data_rate, soc, frac, tq,
                       ftype, version, 0, now)


def _parse_cfg3(body: bytes, idcode: int, soc: int, frac: int, tq: int, version: int,
                now: float) -> ConfigFrame:
    if len(body) >= 2 and _U16.unpack_from(body)[0] != 0:
        raise InvalidField("fragmented CFG-3 (CONT_IDX != 0) is not reassembled", HEADER_SIZE)
    c = _parse_body(CFG3_BODY, body, "cfg3")
    pmus = []
    for p in c.pmus:
        names = [n.decode("utf-8", "replace") for n in p.names]
        ph, an, dg = _split_names(names, p.phnmr, p.annmr)
        pmus.append(PmuConfig(
            station=p.station.decode("utf-8", "replace"), idcode=p.idcode, format=p.format,
            phasor_names=ph, analog_names=an, digital_names=dg,
            phunit=[((s.kind >> 3) & 1, 0) for s in p.phscale],
            anunit=[(0, 0) for _ in p.anscale],
            digunit=[(u >> 16, u & 0xFFFF) for u in p.digunit],
            fnom=50.0 if p.fnom & 1 else 60.0, cfgcnt=p.cfgcnt,
            g_pmu_id=bytes(p.g_pmu_id),
            phscale=[(s.flags, s.kind, s.user, s.scale, s.angle) for s in p.phscale],
            anscale=[(a.scale, a.offset) for a in p.anscale],
            lat=p.lat, lon=p.lon, elev=p.elev, svc_class=p.svc_class.decode("latin-1"),
            window=p.window, grp_dly=p.grp_dly,
        ))
    return ConfigFrame(idcode, pmus, _time_base(c.time_base), c.data_rate, soc, frac, tq,
                       FRAME_CFG3, version, c.cont_idx, now)


def _name16(s: str) -> bytes:
    b = s.encode("latin-1")
    if len(b) > 16:
        raise ValueError(f"name {s!r} is longer than 16 bytes")
    return b.ljust(16, b" ")


def _check_pmu(p: PmuConfig) -> None:
    if len(p.digital_names) % 16:
        raise ValueError(f"{p.station}: digital names come 16 per word")
    if len(p.phunit) != p.n_phasors or len(p.anunit) != p.n_analogs \
            or len(p.digunit) != p.n_digitals:
        raise ValueError(f"{p.station}: unit lists must match the channel counts")


def _fnom_word(f: float) -> int:
    return 1 if f == 50.0 else 0


def _build_cfg12_body(c: ConfigFrame) -> bytes:
    pmus = []
    for p in c.pmus:
        _check_pmu(p)
        pmus.append(dict(
            station=_name16(p.station), idcode=p.idcode, format=p.format,
            phnmr=p.n_phasors, annmr=p.n_analogs, dgnmr=p.n_digitals,
            names=[_name16(n) for n in p.phasor_names + p.analog_names + p.digital_names],
            phunit=[(k << 24) | (s & 0xFFFFFF) for k, s in p.phunit],
            anunit=[(k << 24) | (s & 0xFFFFFF) for k, s in p.anunit],
            digunit=[(a << 16) | b for a, b in p.digunit],
            fnom=_fnom_word(p.fnom), cfgcnt=p.cfgcnt,
        ))
    return bytes(CFG12_BODY.build(dict(time_base=c.time_base, num_pmu=len(pmus), pmus=pmus,
                                       data_rate=c.data_rate)))


def _build_cfg3_body(c: ConfigFrame) -> bytes:
    pmus = []
    for p in c.pmus:
        _check_pmu(p)
        phscale = p.phscale if p.phscale is not None else [
            (0, (k & 1) << 3, 0, float(f.real), 0.0)
            for (k, _), f in zip(p.phunit, p.phasor_factor(), strict=True)]
        anscale = p.anscale if p.anscale is not None else [
            (float(m), float(b)) for m, b in zip(*p.analog_scale(), strict=True)]
        pmus.append(dict(
            station=p.station.encode("utf-8"), idcode=p.idcode, g_pmu_id=p.g_pmu_id,
            format=p.format, phnmr=p.n_phasors, annmr=p.n_analogs, dgnmr=p.n_digitals,
            names=[n.encode("utf-8") for n in
                   p.phasor_names + p.analog_names + p.digital_names],
            phscale=[dict(flags=f, kind=k, user=u, scale=s, angle=a)
                     for f, k, u, s, a in phscale],
            anscale=[dict(scale=m, offset=b) for m, b in anscale],
            digunit=[(a << 16) | b for a, b in p.digunit],
            lat=p.lat, lon=p.lon, elev=p.elev, svc_class=p.svc_class.encode("latin-1")[:1],
            window=p.window, grp_dly=p.grp_dly, fnom=_fnom_word(p.fnom), cfgcnt=p.cfgcnt,
        ))
    return bytes(CFG3_BODY.build(dict(cont_idx=c.cont_idx, time_base=c.time_base,
                                      num_pmu=len(pmus), pmus=pmus, data_rate=c.data_rate)))


# --------------------------------------------------------------------------------------
# data frames: declaration and the fast decoder derived from it


def data_struct(config: ConfigFrame) -> cs.Struct:
    """construct declaration of a data frame for ``config`` (Table 5, one block per PMU)."""
    pmus = []
    for p in config.pmus:
        if p.phasor_float:
            a: cs.Construct = cs.Float32b
            b: cs.Construct = cs.Float32b
        elif p.polar:  # magnitude unsigned, angle in 1e-4 rad (6.3, PHASORS)
            a, b = cs.Int16ub, cs.Int16sb
        else:
            a, b = cs.Int16sb, cs.Int16sb
        f = cs.Float32b if p.freq_float else cs.Int16sb
        an = cs.Float32b if p.analog_float else cs.Int16sb
        pmus.append(cs.Struct(
            "stat" / cs.Int16ub,
            "phasors" / cs.Array(p.n_phasors, cs.Struct("a" / a, "b" / b)),
            "freq" / f,
            "dfreq" / f,
            "analogs" / cs.Array(p.n_analogs, an),
            "digitals" / cs.Array(p.n_digitals, cs.Int16ub),
        ))
    return cs.Struct(
        "sync" / cs.Int8ub,
        "kind" / cs.Int8ub,
        "framesize" / cs.Int16ub,
        "idcode" / cs.Int16ub,
        "soc" / cs.Int32ub,
        "fracsec" / cs.Int32ub,
        *[f"pmu{i}" / s for i, s in enumerate(pmus)],
        "chk" / cs.Int16ub,
    )


class _Gather:
    """Byte-gather of fields sharing one dtype: ``raw[idx].view(dtype)``."""

    __slots__ = ("dest", "dtype", "idx")

    def __init__(self, offsets: list[int], dtype: np.dtype[Any], dest: list[int]) -> None:
        w = dtype.itemsize
        self.idx = (np.asarray(offsets, np.intp)[:, None] + np.arange(w)).astype(np.intp)
        self.dtype = dtype
        self.dest = np.asarray(dest, np.intp)


class DataDecoder:
    """Fast data-frame codec for one configuration (the gateway's hot path).

    Numeric fields (phasor components, FREQ, DFREQ, analogs) are gathered per dtype into
    one float64 vector laid out as [a(P) | b(P) | freq(N) | dfreq(N) | analogs(A)]; STAT and
    digital words into one uint16 vector [stat(N) | digitals(D)]. Units are then applied
    with precomputed per-channel factors.
    """

    def __init__(self, config: ConfigFrame) -> None:
        self.config = config
        self.declaration = data_struct(config)
        self.size = self.declaration.sizeof()
        leaves = declaration_leaves(self.declaration)
        pmus = config.pmus
        n = len(pmus)
        P = sum(p.n_phasors for p in pmus)
        A = sum(p.n_analogs for p in pmus)
        D = sum(p.n_digitals for p in pmus)
        self.n_pmu, self.n_phasors, self.n_analogs, self.n_digitals = n, P, A, D
        # destination index of every leaf in the float / word vectors
        ph_base = np.cumsum([0] + [p.n_phasors for p in pmus])
        an_base = np.cumsum([0] + [p.n_analogs for p in pmus])
        dg_base = np.cumsum([0] + [p.n_digitals for p in pmus])
        num: dict[str, tuple[list[int], list[int]]] = {}
        words: tuple[list[int], list[int]] = ([], [])
        for path, off, dt in leaves:
            if not path or not str(path[0]).startswith("pmu"):
                continue
            i = int(str(path[0])[3:])
            role = path[1]
            if role == "stat":
                words[0].append(off)
                words[1].append(i)
                continue
            if role == "digitals":
                words[0].append(off)
                words[1].append(n + int(dg_base[i]) + int(path[2]))
                continue
            if role == "phasors":
                k = int(ph_base[i]) + int(path[2])
                dest = k if path[3] == "a" else P + k
            elif role == "freq":
                dest = 2 * P + i
            elif role == "dfreq":
                dest = 2 * P + n + i
            else:  # analogs
                dest = 2 * P + 2 * n + int(an_base[i]) + int(path[2])
            offs, dests = num.setdefault(dt.str, ([], []))
            offs.append(off)
            dests.append(dest)
        self._n_num = 2 * P + 2 * n + A
        self._num = [_Gather(o, np.dtype(k), d) for k, (o, d) in num.items()]
        self._single = len(self._num) == 1 and bool(
            np.array_equal(self._num[0].dest, np.arange(self._n_num)))
        self._words = _Gather(words[0], np.dtype(">u2"), words[1])
        # the STAT word of each PMU, in configuration order (see stat_words)
        self._stat_idx = self._words.idx[np.argsort(self._words.dest)[:n]]
        self._words_identity = bool(np.array_equal(self._words.dest, np.arange(n + D)))
        self._block = self._block_layout(leaves)
        # unit factors
        polar = np.concatenate([[p.polar] * p.n_phasors for p in pmus] or [[]]).astype(bool)
        pfloat = np.concatenate([[p.phasor_float] * p.n_phasors for p in pmus]
                                or [[]]).astype(bool)
        self._all_rect = not polar.any()
        self._all_polar = bool(polar.all()) and P > 0
        self._polar = polar
        # int16 polar angle is in 1e-4 rad
        self._ang_scale = np.where(polar & ~pfloat, 1e-4, 1.0)
        self._ang_unit = bool(np.all(self._ang_scale == 1.0))
        self._factor = (np.concatenate([p.phasor_factor() for p in pmus])
                        if P else np.zeros(0, complex))
        self._factor_unit = bool(np.all(self._factor == 1))
        ffloat = np.array([p.freq_float for p in pmus], bool)
        fnom = np.array([p.fnom for p in pmus], float)
        # FREQ int16: deviation from nominal in mHz; DFREQ int16: ROCOF x 100 (6.3)
        self._fmul = np.where(ffloat, 1.0, 1e-3)
        self._fadd = np.where(ffloat, 0.0, fnom)
        self._dmul = np.where(ffloat, 1.0, 1e-2)
        self._freq_unit = bool(ffloat.all())
        if A:
            ms, bs = zip(*(p.analog_scale() for p in pmus), strict=True)
            self._amul = np.concatenate(ms)
            self._aoff = np.concatenate(bs)
        else:
            self._amul = self._aoff = np.zeros(0)
        self._analog_unit = bool(np.all(self._amul == 1) and np.all(self._aoff == 0))
        self._inv_tb = 1.0 / config.time_base

    def _block_layout(self, leaves: list[tuple[tuple[str | int, ...], int, np.dtype[Any]]]
                      ) -> np.dtype[Any] | None:
        """A per-PMU record dtype when every PMU block has the same layout and its numeric
        fields (phasors, FREQ, DFREQ, analogs) form one run of a single dtype.

        Then a frame is ``N`` records with a fixed stride after the common header, and
        ``np.frombuffer`` with that dtype decodes every field in a few calls.
        """
        by_pmu: dict[int, list[tuple[str, int, np.dtype[Any]]]] = {}
        for path, off, dt in leaves:
            if path and str(path[0]).startswith("pmu"):
                by_pmu.setdefault(int(str(path[0])[3:]), []).append((str(path[1]), off, dt))
        if not by_pmu:
            return None
        layouts = []
        for i in range(len(by_pmu)):
            base = by_pmu[i][0][1]
            layouts.append([(role, off - base, dt.str) for role, off, dt in by_pmu[i]])
        if any(lay != layouts[0] for lay in layouts[1:]):
            return None
        lay = layouts[0]
        if lay[0][0] != "stat":
            return None
        numeric = [x for x in lay if x[0] not in ("stat", "digitals")]
        digitals = [x for x in lay if x[0] == "digitals"]
        if not numeric or len({x[2] for x in numeric}) != 1:
            return None
        t = np.dtype(numeric[0][2])
        start = numeric[0][1]
        if any(off != start + k * t.itemsize for k, (_, off, _) in enumerate(numeric)):
            return None
        fields: list[tuple[Any, ...]] = [("stat", ">u2"), ("num", t, (len(numeric),))]
        if digitals:
            fields.append(("dig", ">u2", (len(digitals),)))
        dt = np.dtype(fields)
        blocks = [by_pmu[i][0][1] for i in range(len(by_pmu))]
        if blocks[0] != HEADER_SIZE or any(
                b - a != dt.itemsize for a, b in itertools.pairwise(blocks)):
            return None
        return dt

    def _decode_blocks(self, data: bytes | bytearray | memoryview
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                  np.ndarray, np.ndarray]:
        assert self._block is not None
        N, P, A = self.n_pmu, self.n_phasors, self.n_analogs
        p = P // N
        blk = np.frombuffer(data, self._block, N, HEADER_SIZE)
        num = blk["num"].astype(np.float64)
        ph = num[:, : 2 * p]
        f = num[:, 2 * p]
        df = num[:, 2 * p + 1]
        an = num[:, 2 * p + 2:].reshape(A) if A else _EMPTY_F
        stat = blk["stat"].astype(np.uint16)
        dg = blk["dig"].astype(np.uint16).reshape(-1) if self.n_digitals else _EMPTY_U
        if self._all_rect:
            return ph.view(np.complex128).reshape(P), _EMPTY_F, f, df, an, stat, dg
        return ph[:, 0::2].reshape(P), ph[:, 1::2].reshape(P), f, df, an, stat, dg

    def _units(self, a: np.ndarray, b: np.ndarray, f: np.ndarray, df: np.ndarray,
               an: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Wire numbers to engineering units: phasors, FREQ, DFREQ, analogs.

        ``a`` is already the complex phasor vector when every phasor is rectangular (``b``
        unused); otherwise ``a``/``b`` are the first/second components.
        """
        if self._all_rect:
            z = a
        else:
            if not self._ang_unit:
                b = b * self._ang_scale
            zp = a * np.exp(1j * b)
            z = zp if self._all_polar else np.where(self._polar, zp, a + 1j * b)
        if not self._factor_unit:
            z = z * self._factor
        if not self._freq_unit:
            f = f * self._fmul + self._fadd
            df = df * self._dmul
        if not self._analog_unit:
            an = an * self._amul + self._aoff
        return z, f, df, an

    # -- decode -----------------------------------------------------------------------
    def _check(self, data: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
        """Size, SYNC, version, CRC and IDCODE of a data frame for this configuration;
        returns (SYNC second byte, IDCODE, SOC, FRACSEC word)."""
        n = len(data)
        if n != self.size:
            ftype = check_common(data)[0]  # raises the precise error for broken frames
            if ftype != FRAME_DATA:
                raise UnknownFrameType(f"{FRAME_NAMES[ftype]} frame where data was due", 1)
            raise LayoutMismatch(
                f"{n}-byte data frame, the configuration describes {self.size}",
                min(n, self.size))
        sync, kind, size, idcode, soc, frac = _COMMON.unpack_from(data)
        (chk,) = _U16.unpack_from(data, n - 2)
        if sync != SYNC_BYTE or kind & 0xF0 or (kind & 0x0F) not in VERSIONS \
                or size != n or chk != crc_ccitt(memoryview(data)[: n - 2]):
            ftype = check_common(data)[0]
            raise UnknownFrameType(f"{FRAME_NAMES[ftype]} frame where data was due", 1)
        if idcode != self.config.idcode:
            raise ConfigMismatch(
                f"IDCODE {idcode}, the configuration is for {self.config.idcode}", 4)
        return kind, idcode, soc, frac

    def stat_words(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """Every PMU's STAT word (configuration order) of a data frame, checked as
        :meth:`decode` checks it but without converting a value: what a session needs to
        follow the error and configuration-change bits cheaply."""
        self._check(data)
        raw = np.frombuffer(data, np.uint8)
        return raw[self._stat_idx].view(">u2").ravel().astype(np.uint16)

    def decode(self, data: bytes | bytearray | memoryview, now: float) -> DataFrame:
        """Decode one complete data frame (common header and CRC checked here too)."""
        kind, idcode, soc, frac = self._check(data)
        P, N = self.n_phasors, self.n_pmu
        fr = frac & 0xFFFFFF
        if self._block is not None:
            a, b, f, df, an, stat, dg = self._decode_blocks(data)
            z, f, df, an = self._units(a, b, f, df, an)
            return DataFrame(idcode, soc, fr, stat, z, f, df, an, dg, frac >> 24,
                             kind & 0x0F, soc + fr * self._inv_tb, now)
        raw = np.frombuffer(data, np.uint8)
        if self._single:
            g = self._num[0]
            v = raw[g.idx].view(g.dtype).ravel().astype(np.float64)
        else:
            v = np.empty(self._n_num)
            for g in self._num:
                v[g.dest] = raw[g.idx].view(g.dtype).ravel()
        w = self._words
        wv = raw[w.idx].view(w.dtype).ravel().astype(np.uint16)
        if not self._words_identity:
            tmp = np.empty_like(wv)
            tmp[w.dest] = wv
            wv = tmp
        a = v[:P]
        b = v[P:2 * P]
        if self._all_rect:
            a = a + 1j * b
        z, f, df, an = self._units(a, b, v[2 * P:2 * P + N], v[2 * P + N:2 * P + 2 * N],
                                   v[2 * P + 2 * N:])
        return DataFrame(idcode, soc, fr, wv[:N], z, f, df, an, wv[N:], frac >> 24,
                         kind & 0x0F, soc + fr * self._inv_tb, now)

    # -- encode -----------------------------------------------------------------------
    def encode(self, frame: DataFrame) -> bytes:
        """Build a data frame; integer fields are rounded, out-of-range ones raise."""
        P, N, A, D = self.n_phasors, self.n_pmu, self.n_analogs, self.n_digitals
        z = np.asarray(frame.phasors, complex).reshape(-1)
        f = np.asarray(frame.freq, float).reshape(-1)
        df = np.asarray(frame.dfreq, float).reshape(-1)
        an = np.asarray(frame.analogs, float).reshape(-1)
        st = np.asarray(frame.stat).reshape(-1)
        dg = np.asarray(frame.digitals).reshape(-1)
        for name, arr, want in (("phasors", z, P), ("freq", f, N), ("dfreq", df, N),
                                ("analogs", an, A), ("stat", st, N), ("digitals", dg, D)):
            if arr.shape[0] != want:
                raise ValueError(f"{name}: {arr.shape[0]} values, configuration has {want}")
        with np.errstate(divide="ignore", invalid="ignore"):
            # a zero scale decodes everything to 0, so 0 is the only encodable value
            w = np.where(self._factor == 0, 0, z / self._factor) if P else z
        a = np.where(self._polar, np.abs(w), w.real)
        b = np.where(self._polar, np.angle(w) / self._ang_scale, w.imag)
        v = np.concatenate([a, b, (f - self._fadd) / self._fmul, df / self._dmul,
                            (an - self._aoff) / np.where(self._amul == 0, 1, self._amul)])
        buf = bytearray(self.size)
        raw = np.frombuffer(buf, np.uint8)
        for g in self._num:
            vals = v[g.dest]
            if g.dtype.kind in "iu":
                vals = np.rint(vals)
                info = np.iinfo(g.dtype)
                ok = np.isfinite(vals) & (vals >= info.min) & (vals <= info.max)
                if not ok.all():
                    raise ValueError(f"a value does not fit {g.dtype} at byte "
                                     f"{int(g.idx[np.flatnonzero(~ok)[0], 0])}")
            else:
                # -0.0 -> +0.0: decoding applies units with + and *, which do not keep a
                # zero's sign, so a decoded frame would not rebuild to the same bytes
                vals = vals + 0.0
            raw[g.idx] = vals.astype(g.dtype).view(np.uint8).reshape(g.idx.shape)
        words = np.concatenate([st, dg]).astype(np.int64)
        if ((words < 0) | (words > 0xFFFF)).any():
            raise ValueError("STAT and digital words are 16-bit unsigned")
        wg = self._words
        raw[wg.idx] = words[wg.dest].astype(">u2").view(np.uint8).reshape(wg.idx.shape)
        frac = frame.fracsec
        if not 0 <= frac < 1 << 24:
            raise ValueError(f"FRACSEC {frac} does not fit 24 bits")
        _COMMON.pack_into(buf, 0, SYNC_BYTE, (FRAME_DATA << 4) | frame.version, self.size,
                          frame.idcode, frame.soc, ((frame.time_quality & 0xFF) << 24) | frac)
        _U16.pack_into(buf, self.size - 2, crc_ccitt(memoryview(buf)[: self.size - 2]))
        return bytes(buf)

    def parse_reference(self, data: bytes) -> Any:
        """Plain construct parse of the same frame (the bench's peer; no unit handling)."""
        return self.declaration.parse(data)


def split_time(t: float, time_base: int) -> tuple[int, int]:
    """SOC and FRACSEC (in ``time_base`` units) of a POSIX time, for builders."""
    soc = math.floor(t)
    frac = round((t - soc) * time_base)
    if frac >= time_base:
        soc, frac = soc + 1, frac - time_base
    return soc, frac


def command(idcode: int, cmd: int, *, now: float = 0.0, time_base: int = 1_000_000,
            version: int = 2) -> bytes:
    """A command frame stamped with ``now`` (what a PDC sends: CMD_START, CMD_CFG2, ...)."""
    soc, frac = split_time(now, time_base) if now > 0 else (0, 0)
    frac = min(frac, (1 << 24) - 1)
    return CommandFrame(idcode, cmd, b"", soc, frac, 0, version).build()


def frame_type_of(data: bytes | bytearray | memoryview) -> int:
    """Frame type from SYNC without any other check (for dispatch after reassembly)."""
    if len(data) < 2:
        raise FrameTooShort("no SYNC word", len(data))
    return (data[1] >> 4) & 0x07


def make_config(
    idcode: int,
    stations: Sequence[tuple[str, int, Sequence[str]]],
    *,
    fmt: int = FMT_PHASOR_FLOAT | FMT_FREQ_FLOAT | FMT_ANALOG_FLOAT,
    data_rate: int = 50,
    fnom: float = 50.0,
    frame_type: int = FRAME_CFG2,
) -> ConfigFrame:
    """A configuration of float phasor-only PMUs: (station, idcode, phasor names) each.

    Convenience for the emulator and benches; full control goes through the dataclasses.
    """
    pmus = [
        PmuConfig(station=st, idcode=pid, format=fmt, phasor_names=list(names),
                  analog_names=[], digital_names=[], phunit=[(0, 1)] * len(names),
                  anunit=[], digunit=[], fnom=fnom)
        for st, pid, names in stations
    ]
    return ConfigFrame(idcode, pmus, data_rate=data_rate, frame_type=frame_type)

