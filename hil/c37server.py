"""The emulator's IEEE C37.118.2 PMU server (a GTNET-PMU stand-in), sans-IO.

:class:`C37Stream` turns a config stream (``format = "c37.118"``) into the frames a PMU
sends: CFG-1/2/3 and header frames and one data frame per step, all built with the
gateway's own declarations (:mod:`gateway.codecs.c37118`). :class:`PmuSession` is the
command state machine of one peer (a TCP connection, or the UDP peer that sent commands):
bytes in, reply frames out; ``streaming`` says whether data frames go to it.

Conventions (written down in docs/c37-conventions.md, shared with the gateway):

* one C37.118 PMU block per config PMU (``Stream.pmus``), IDCODEs from the config;
  the frame's IDCODE is ``Stream.idcode``;
* FORMAT: polar, float phasors, float FREQ/DFREQ (0x000B); PHUNIT scale 1 (ignored for
  float phasors), PHUNIT type 0 voltage / 1 current;
* phasor magnitude on the wire = channel value x ``C37Phasor.wire_factor``: per-phase RMS
  volts from the kV line-to-line voltage channel (x 1000/sqrt(3)), amperes from the kA
  current channel (x 1000); angle in rad as
  the channel carries it;
* FREQ = nominal (50 Hz, FNOM bit set), DFREQ = 0, STAT = 0; a missing value is sent as
  NaN (the gateway flags it MISSING);
* timestamp: SOC/FRACSEC of the step time, TIME_BASE 1 000 000, time quality 0 (locked);
* commands: CMD_STOP/CMD_START switch data off/on, CMD_HEADER -> header frame,
  CMD_CFG1/2/3 -> that configuration frame; any other command is counted and ignored.
  Over TCP data flows only after CMD_START; over UDP it flows from the start (the
  emulator sends one CFG-2 first) and STOP/START still apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gateway.codecs import c37118 as c37
from gateway.codecs.stream import StreamReassembler
from gateway.config import Stream
from gateway.errors import FrameError

NOMINAL_HZ = 50.0
FORMAT = c37.FMT_POLAR | c37.FMT_PHASOR_FLOAT | c37.FMT_FREQ_FLOAT | c37.FMT_ANALOG_FLOAT
TIME_BASE = 1_000_000


def stream_config(stream: Stream, rate_hz: float, frame_type: int = c37.FRAME_CFG2
                  ) -> c37.ConfigFrame:
    """The configuration frame describing ``stream``'s data frames."""
    pmus = [
        c37.PmuConfig(
            station=p.station, idcode=p.idcode, format=FORMAT,
            phasor_names=[ph.name for ph in p.phasors], analog_names=[], digital_names=[],
            phunit=[(1 if ph.kind == "i" else 0, 1) for ph in p.phasors],
            anunit=[], digunit=[], fnom=NOMINAL_HZ,
        )
        for p in stream.pmus
    ]
    rate = round(rate_hz) if rate_hz >= 1 else -round(1.0 / rate_hz)
    return c37.ConfigFrame(stream.idcode, pmus, time_base=TIME_BASE, data_rate=rate,
                           frame_type=frame_type)


class C37Stream:
    """Frame factory of one C37.118 stream: configuration, header and data frames."""

    def __init__(self, stream: Stream, rate_hz: float, *, text: str = "") -> None:
        self.stream = stream
        self.idcode = stream.idcode
        self.rate_hz = rate_hz
        self.cfg2 = stream_config(stream, rate_hz, c37.FRAME_CFG2)
        self.mag = np.array([ph.mag for p in stream.pmus for ph in p.phasors], np.intp)
        self._factor = np.array([ph.wire_factor for p in stream.pmus for ph in p.phasors])
        self.ang = np.array([ph.ang for p in stream.pmus for ph in p.phasors], np.intp)
        n = len(stream.pmus)
        self._stat = np.zeros(n, np.uint16)
        self._freq = np.full(n, NOMINAL_HZ)
        self._dfreq = np.zeros(n)
        self._none = np.zeros(0)
        self._nodig = np.zeros(0, np.uint16)
        self.text = text or f"gridtwin emulator, stream {stream.name}"
        self._decoder = self.cfg2.decoder()

    def config_frame(self, frame_type: int, now: float) -> bytes:
        cfg = stream_config(self.stream, self.rate_hz, frame_type)
        cfg.soc, cfg.fracsec = _stamp(now)
        return cfg.build()

    def header_frame(self, now: float) -> bytes:
        soc, frac = _stamp(now)
        return c37.HeaderFrame(self.idcode, self.text, soc, frac).build()

    def data_frame(self, values: np.ndarray, ts: float) -> bytes:
        """Data frame of one row of channel values (engineering units) stamped ``ts``."""
        # phasor = |.| (kV line-to-line or kA) * wire_factor (V per phase or A) * e^{j angle}
        z = values[self.mag] * self._factor * np.exp(1j * values[self.ang])
        soc, frac = _stamp(ts)
        frame = c37.DataFrame(self.idcode, soc, frac, self._stat, z, self._freq,
                              self._dfreq, self._none, self._nodig)
        return self._decoder.encode(frame)


def _stamp(t: float) -> tuple[int, int]:
    if not math.isfinite(t) or t < 0:
        t = 0.0
    soc, frac = c37.split_time(t, TIME_BASE)
    return soc, min(frac, TIME_BASE - 1)


@dataclass
class PmuSession:
    """Command handling for one peer. ``receive`` returns the frames to send back."""

    source: C37Stream
    streaming: bool = False
    tcp: bool = True
    commands: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._reasm = StreamReassembler() if self.tcp else None

    def receive(self, data: bytes, now: float) -> list[bytes]:
        frames = self._reasm.feed(data) if self._reasm is not None else [bytes(data)]
        out: list[bytes] = []
        for raw in frames:
            try:
                frame = c37.parse(raw, now)
            except FrameError:
                self.errors += 1
                continue
            if not isinstance(frame, c37.CommandFrame):
                self.errors += 1
                continue
            out += self.command(frame.cmd, now)
        return out

    def command(self, cmd: int, now: float) -> list[bytes]:
        name = {c37.CMD_STOP: "stop", c37.CMD_START: "start", c37.CMD_HEADER: "header",
                c37.CMD_CFG1: "cfg1", c37.CMD_CFG2: "cfg2", c37.CMD_CFG3: "cfg3"}.get(
                    cmd, f"cmd{cmd}")
        self.commands[name] = self.commands.get(name, 0) + 1
        if cmd == c37.CMD_STOP:
            self.streaming = False
        elif cmd == c37.CMD_START:
            self.streaming = True
        elif cmd == c37.CMD_HEADER:
            return [self.source.header_frame(now)]
        elif cmd == c37.CMD_CFG1:
            return [self.source.config_frame(c37.FRAME_CFG1, now)]
        elif cmd == c37.CMD_CFG2:
            return [self.source.config_frame(c37.FRAME_CFG2, now)]
        elif cmd == c37.CMD_CFG3:
            return [self.source.config_frame(c37.FRAME_CFG3, now)]
        return []


__all__ = ["FORMAT", "NOMINAL_HZ", "C37Stream", "PmuSession", "stream_config"]
