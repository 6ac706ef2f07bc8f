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

Impolite behaviours of a real PMU, on demand (the lab-day schedule drives them):

* :meth:`C37Stream.set_stat` — STAT bits (data error, sync lost, sorting, trigger, ...)
  on one PMU or all;
* :meth:`C37Stream.announce_config_change` then :meth:`C37Stream.change_config` — a
  configuration change mid-stream as clause 6.3 describes it: STAT bit 10 set ahead of
  the change, then CFGCNT incremented (optionally with the PMUs in another order) and the
  bit cleared; data frames follow the new layout at once;
* ``order`` — the PMU blocks listed in another order than the config's (from the start or
  by a change);
* :meth:`PmuSession.go_silent` — a PMU that stops answering and sending while its TCP
  connection stays open (half-open as far as the PDC can tell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gateway.codecs import c37118 as c37
from gateway.codecs.stream import StreamReassembler
from gateway.config import Stream
from gateway.errors import FrameError

NOMINAL_HZ = 50.0
FORMAT = c37.FMT_POLAR | c37.FMT_PHASOR_FLOAT | c37.FMT_FREQ_FLOAT | c37.FMT_ANALOG_FLOAT
TIME_BASE = 1_000_000
STAT_CONFIG_CHANGE = 0x0400  # Table 7, bit 10


def stream_config(stream: Stream, rate_hz: float, frame_type: int = c37.FRAME_CFG2, *,
                  order: Sequence[int] | None = None, cfgcnt: int = 0) -> c37.ConfigFrame:
    """The configuration frame describing ``stream``'s data frames; ``order``: config PMU
    index of each wire block (default the config's order)."""
    digs = digital_names(stream)
    pmus = [
        c37.PmuConfig(
            station=p.station, idcode=p.idcode, format=FORMAT,
            phasor_names=[ph.name for ph in p.phasors], analog_names=[],
            digital_names=digs.get(p.station, []),
            phunit=[(1 if ph.kind == "i" else 0, 1) for ph in p.phasors],
            anunit=[], digunit=[(0, 0xFFFF)] * (len(digs.get(p.station, [])) // 16),
            fnom=NOMINAL_HZ, cfgcnt=cfgcnt,
        )
        for p in stream.pmus
    ]
    if order is not None:
        pmus = [pmus[k] for k in order]
    rate = round(rate_hz) if rate_hz >= 1 else -round(1.0 / rate_hz)
    return c37.ConfigFrame(stream.idcode, pmus, time_base=TIME_BASE, data_rate=rate,
                           frame_type=frame_type)


def digital_names(stream: Stream) -> dict[str, list[str]]:
    """Per station, the names of its DIGITAL bits (16 per word, bit 0 first): the switches
    the config's ``digitals`` map there, "" for unused bits."""
    out: dict[str, list[str]] = {}
    for station, bit, name in stream.digitals:
        names = out.setdefault(station, [])
        need = 16 * (bit // 16 + 1)
        names.extend([""] * (need - len(names)))
        names[bit] = name
    return out


class C37Stream:
    """Frame factory of one C37.118 stream: configuration, header and data frames. A
    stream whose config maps switch statuses to DIGITAL bits sends them
    (:meth:`data_frame`'s ``statuses``; a status not given keeps its last bit)."""

    def __init__(self, stream: Stream, rate_hz: float, *, text: str = "",
                 order: Sequence[int] | None = None) -> None:
        self.stream = stream
        self.idcode = stream.idcode
        self.rate_hz = rate_hz
        n = len(stream.pmus)
        self.cfgcnt = 0
        self.order = list(range(n))
        self.mag = np.array([ph.mag for p in stream.pmus for ph in p.phasors], np.intp)
        self._factor = np.array([ph.wire_factor for p in stream.pmus for ph in p.phasors])
        self.ang = np.array([ph.ang for p in stream.pmus for ph in p.phasors], np.intp)
        self._stat_cfg = np.zeros(n, np.uint16)  # set_stat words, config PMU order
        self._announcing = False
        self._freq = np.full(n, NOMINAL_HZ)
        self._dfreq = np.zeros(n)
        self._none = np.zeros(0)
        self._nodig = np.zeros(0, np.uint16)
        self.text = text or f"gridtwin emulator, stream {stream.name}"
        self._apply(order)

    def _apply(self, order: Sequence[int] | None) -> None:
        """Rebuild the CFG-2, the data encoder and the wire permutation."""
        pmus = self.stream.pmus
        if order is not None:
            if sorted(order) != list(range(len(pmus))):
                raise ValueError(f"order {list(order)} is not a permutation of "
                                 f"{len(pmus)} PMUs")
            self.order = list(order)
        base = np.cumsum([0] + [len(p.phasors) for p in pmus])
        self._wire = np.concatenate(
            [np.arange(base[k], base[k + 1]) for k in self.order] or [np.zeros(0, np.intp)]
        ).astype(np.intp)
        self.cfg2 = self.config(c37.FRAME_CFG2)
        self._decoder = self.cfg2.decoder()
        self._update_stat()
        # DIGITAL words in wire order and (word, bit, switch) of every mapped bit
        first = np.cumsum([0] + [p.n_digitals for p in self.cfg2.pmus])
        wire_pmu = {p.station: k for k, p in enumerate(self.cfg2.pmus)}
        self._dig_bits = [(int(first[wire_pmu[st]]) + bit // 16, bit % 16, name)
                          for st, bit, name in self.stream.digitals]
        old = getattr(self, "_dig_state", {})
        self._dig_state: dict[str, bool] = dict(old)
        self._dig = np.zeros(int(first[-1]), np.uint16)

    def config(self, frame_type: int) -> c37.ConfigFrame:
        return stream_config(self.stream, self.rate_hz, frame_type, order=self.order,
                             cfgcnt=self.cfgcnt)

    # -- impolite behaviours -------------------------------------------------------------
    def _update_stat(self) -> None:
        words = self._stat_cfg | (STAT_CONFIG_CHANGE if self._announcing else 0)
        self._stat = words[self.order].astype(np.uint16)

    def set_stat(self, word: int, station: str | None = None) -> None:
        """STAT word of the PMU ``station`` (every PMU when None) from now on."""
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"STAT word 0x{word:X} is not 16-bit")
        names = [p.station for p in self.stream.pmus]
        if station is None:
            self._stat_cfg[:] = word
        elif station in names:
            self._stat_cfg[names.index(station)] = word
        else:
            raise ValueError(f"no PMU {station!r} in stream {self.stream.name} "
                             f"(stations: {', '.join(names)})")
        self._update_stat()

    def announce_config_change(self) -> None:
        """STAT bit 10 on every PMU: the configuration will change (clause 6.3)."""
        self._announcing = True
        self._update_stat()

    def change_config(self, order: Sequence[int] | None = None) -> c37.ConfigFrame:
        """The change in force: CFGCNT + 1, bit 10 cleared, PMUs in ``order`` (default
        unchanged); returns the new CFG-2."""
        self.cfgcnt = (self.cfgcnt + 1) & 0xFFFF
        self._announcing = False
        self._apply(order)
        return self.cfg2

    # -- frames --------------------------------------------------------------------------
    def config_frame(self, frame_type: int, now: float) -> bytes:
        cfg = self.config(frame_type)
        cfg.soc, cfg.fracsec = _stamp(now)
        return cfg.build()

    def header_frame(self, now: float) -> bytes:
        soc, frac = _stamp(now)
        return c37.HeaderFrame(self.idcode, self.text, soc, frac).build()

    def data_frame(self, values: np.ndarray, ts: float,
                   statuses: dict[str, float] | None = None) -> bytes:
        """Data frame of one row of channel values (engineering units) stamped ``ts``;
        ``statuses`` (switch: 1 closed, 0 open, NaN not sent) set the DIGITAL bits the
        config maps."""
        # phasor = |.| (kV line-to-line or kA) * wire_factor (V per phase or A) * e^{j angle}
        z = values[self.mag] * self._factor * np.exp(1j * values[self.ang])
        soc, frac = _stamp(ts)
        dig = self._nodig
        if self._dig.size:
            dig = self._digital_words(statuses or {})
        frame = c37.DataFrame(self.idcode, soc, frac, self._stat, z[self._wire], self._freq,
                              self._dfreq, self._none, dig)
        return self._decoder.encode(frame)

    def _digital_words(self, statuses: dict[str, float]) -> np.ndarray:
        state = self._dig_state
        for name, v in statuses.items():
            if v == v:  # not NaN: a status sent (NaN: the bit keeps its last state)
                state[name] = bool(v)
        dig = self._dig
        dig[:] = 0
        for word, bit, name in self._dig_bits:
            if state.get(name):
                dig[word] |= np.uint16(1 << bit)
        return dig


def _stamp(t: float) -> tuple[int, int]:
    if not math.isfinite(t) or t < 0:
        t = 0.0
    soc, frac = c37.split_time(t, TIME_BASE)
    return soc, min(frac, TIME_BASE - 1)


_COMMAND_NAMES = {c37.CMD_STOP: "stop", c37.CMD_START: "start", c37.CMD_HEADER: "header",
                  c37.CMD_CFG1: "cfg1", c37.CMD_CFG2: "cfg2", c37.CMD_CFG3: "cfg3"}


class PmuSession:
    """Command handling for one peer. ``receive`` returns the frames to send back;
    ``streaming`` says whether data frames go to it (started and not silent)."""

    def __init__(self, source: C37Stream, streaming: bool = False, tcp: bool = True) -> None:
        self.source = source
        self.started = streaming
        self.tcp = tcp
        self.silent = False
        self.commands: dict[str, int] = {}
        self.errors = 0
        self.ignored = 0  # commands swallowed while silent
        self._reasm = StreamReassembler() if tcp else None

    @property
    def streaming(self) -> bool:
        return self.started and not self.silent

    def go_silent(self) -> None:
        """Stop sending and answering while the connection stays open."""
        self.silent = True

    def resume(self) -> None:
        self.silent = False

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
            if self.silent:
                self.ignored += 1
                continue
            out += self.command(frame.cmd, now)
        return out

    def command(self, cmd: int, now: float) -> list[bytes]:
        name = _COMMAND_NAMES.get(cmd, f"cmd{cmd}")
        self.commands[name] = self.commands.get(name, 0) + 1
        if cmd == c37.CMD_STOP:
            self.started = False
        elif cmd == c37.CMD_START:
            self.started = True
        elif cmd == c37.CMD_HEADER:
            return [self.source.header_frame(now)]
        elif cmd == c37.CMD_CFG1:
            return [self.source.config_frame(c37.FRAME_CFG1, now)]
        elif cmd == c37.CMD_CFG2:
            return [self.source.config_frame(c37.FRAME_CFG2, now)]
        elif cmd == c37.CMD_CFG3:
            return [self.source.config_frame(c37.FRAME_CFG3, now)]
        return []


#: the PMU behaviours :func:`disturb` knows (the lab-day schedule names them)
PMU_BEHAVIOURS = ("stat", "cfg_announce", "cfg_change", "pmu_order", "silent", "resume")


def disturb(source: C37Stream, sessions: Sequence[PmuSession], kind: str, *,
            station: str | None = None, word: int = 0,
            order: Sequence[int] | None = None) -> None:
    """Apply one impolite PMU behaviour by name (one entry point for a schedule).

    ``stat``: STAT ``word`` on ``station`` (all PMUs when None); ``cfg_announce``: STAT
    bit 10; ``cfg_change``: the change in force (CFGCNT + 1, PMUs in ``order`` if given);
    ``pmu_order``: the same as a change that only reorders (``order`` required);
    ``silent`` / ``resume``: the peers in ``sessions`` stop / go on sending and
    answering while their connections stay open.
    """
    if kind == "stat":
        source.set_stat(word, station)
    elif kind == "cfg_announce":
        source.announce_config_change()
    elif kind == "cfg_change":
        source.change_config(order)
    elif kind == "pmu_order":
        if order is None:
            raise ValueError("pmu_order needs an order (config PMU index per wire block)")
        source.change_config(order)
    elif kind == "silent":
        for s in sessions:
            s.go_silent()
    elif kind == "resume":
        for s in sessions:
            s.resume()
    else:
        raise ValueError(f"unknown PMU behaviour {kind!r}; known: {', '.join(PMU_BEHAVIOURS)}")


__all__ = ["FORMAT", "NOMINAL_HZ", "PMU_BEHAVIOURS", "C37Stream", "PmuSession", "disturb",
           "stream_config"]
