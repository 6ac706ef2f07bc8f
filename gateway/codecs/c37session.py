"""The PDC side of an IEEE C37.118.2 session, sans-IO: bytes and ``now`` in, events and
bytes to send out, timers through :meth:`C37Session.next_deadline` / :meth:`C37Session.tick`.

Shaped like h11's ``Connection``: the object owns the protocol state and never touches a
socket or a clock. A transport (TCP or UDP) feeds it what it reads, sends what
:meth:`C37Session.data_to_send` returns, calls ``tick(now)`` when ``next_deadline()`` is
due and acts on the events (hand frames on, close a silent connection). The emulator's
PMU side (``hil.c37server.PmuSession``) is the mirror image.

The handshake (clause 6.6 commands): on a new connection ask for CFG-2 (repeated every
``cfg_retry_s`` until one comes), answer an accepted configuration with *turn on
transmission*, and send *turn off transmission* on close. No frame for ``silence_s``
(a silent or half-open peer) is a :class:`Silent` event: the TCP transport drops the
connection and reconnects, the UDP one starts the handshake again when data comes back.

**Identity** (:func:`match_config`): a configuration frame is compared with the twin
config's PMUs (station name, IDCODE, phasor names and kinds). The same PMUs in another
order are remapped when station and IDCODE identify each one; anything else is refused
with an error naming both lists, and no data is taken from it. **Configuration changes**:
the STAT bit "configuration change" (bit 10) makes the session ask for CFG-2; when the
STAT words move after that (the bit clears, or a new layout read at the old STAT offsets)
the change may be in force: data is held back and CFG-2 asked for again, so values never
land on channels of the old layout; a data frame of another size than the configuration's
asks for CFG-2 too. (CFGCNT travels in configuration frames only: a change that is
neither announced nor changes the frame size cannot be seen in data.) **STAT words**
become quality flags per PMU (:func:`stat_flags`).

:class:`C37Receiver` is the configuration/data half, used alone by the stream decoder
(which sees frames, not connections); :class:`C37Session` adds framing, the handshake and
the timers around it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gateway.codecs import c37118 as c37
from gateway.codecs.stream import StreamReassembler
from gateway.config import C37Pmu
from gateway.errors import FrameError
from gateway.snapshot import Flag

CFG_RETRY_S = 1.0  # CFG-2 request repeated this often until a configuration comes
RESYNC_REPORT_S = 1.0  # framing trouble reported at most this often

# STAT word (Table 7)
STAT_DATA_ERROR = 0xC000
STAT_SYNC_LOST = 0x2000
STAT_SORTED_BY_ARRIVAL = 0x1000
STAT_TRIGGER = 0x0800
STAT_CONFIG_CHANGE = 0x0400


def stat_flags(word: int) -> int:
    """Quality flags of one PMU's values from its STAT word (openPDC does the same).

    Data error (bits 15-14: PMU error or test mode) -> BAD: the estimator leaves the value
    out unless the quality stage replaced it. PMU sync lost (13) or data sorted by arrival
    (12) -> TIME_SUSPECT: the value is fine, its timestamp is not traceable. Trigger (11)
    -> TRIGGER. The configuration-change bit is the session's business, not a flag.
    """
    f = 0
    if word & STAT_DATA_ERROR:
        f |= Flag.BAD
    if word & (STAT_SYNC_LOST | STAT_SORTED_BY_ARRIVAL):
        f |= Flag.TIME_SUSPECT
    if word & STAT_TRIGGER:
        f |= Flag.TRIGGER
    return int(f)


# --------------------------------------------------------------------------------------
# errors


class IdentityMismatch(c37.ConfigMismatch):
    """A configuration frame whose PMUs are not the configured ones (or not identifiable).

    ``configured`` and ``received`` describe both PMU lists; the message names both.
    """

    def __init__(self, reason: str, configured: str, received: str, what: str = "CFG-2"
                 ) -> None:
        self.configured = configured
        self.received = received
        super().__init__(f"{what} refused: {reason}; configured PMUs: {configured}; "
                         f"{what} lists: {received}", 0)


class ConfigPending(c37.ConfigMismatch):
    """Data while no usable configuration is in force (none yet, refused, or changing)."""


# --------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class Event:
    """Something the session saw; ``kind`` names it for the transport's event sink."""

    kind: ClassVar[str] = "c37_event"

    def detail(self) -> dict[str, object]:
        return {}


@dataclass(frozen=True, slots=True)
class FrameReceived(Event):
    """One complete frame (any type), to hand on unchanged."""

    kind: ClassVar[str] = "c37_frame"
    frame: bytes
    frame_type: int


@dataclass(frozen=True, slots=True)
class Started(Event):
    """*Turn on transmission* sent after an accepted configuration."""

    kind: ClassVar[str] = "c37_started"


@dataclass(frozen=True, slots=True)
class ConfigAccepted(Event):
    kind: ClassVar[str] = "c37_config"
    stations: tuple[str, ...]
    cfgcnt: tuple[int, ...]
    remapped: bool
    order: tuple[int, ...]  # CFG block of each configured PMU (identity when not remapped)

    def detail(self) -> dict[str, object]:
        return {"stations": list(self.stations), "cfgcnt": list(self.cfgcnt),
                "remapped": self.remapped, "order": list(self.order)}


@dataclass(frozen=True, slots=True)
class ConfigRefused(Event):
    kind: ClassVar[str] = "c37_config_refused"
    error: str
    configured: str
    received: str

    def detail(self) -> dict[str, object]:
        return {"error": self.error, "configured": self.configured,
                "received": self.received}


@dataclass(frozen=True, slots=True)
class ConfigChangeAnnounced(Event):
    """STAT bit 10 rose: the PMU's configuration is about to change; CFG-2 asked for."""

    kind: ClassVar[str] = "c37_config_change"
    stations: tuple[str, ...]

    def detail(self) -> dict[str, object]:
        return {"stations": list(self.stations)}


@dataclass(frozen=True, slots=True)
class ConfigChanged(Event):
    """A configuration with other CFGCNTs (or another layout) replaced the one in force."""

    kind: ClassVar[str] = "c37_config_changed"
    old_cfgcnt: tuple[int, ...]
    new_cfgcnt: tuple[int, ...]

    def detail(self) -> dict[str, object]:
        return {"old_cfgcnt": list(self.old_cfgcnt), "new_cfgcnt": list(self.new_cfgcnt)}


@dataclass(frozen=True, slots=True, eq=False)
class DataReceived(Event):
    """Values of one data frame in the configured point order (magnitude, angle per
    phasor) and their flags (None: all good)."""

    kind: ClassVar[str] = "c37_data"
    seq: int | None
    ts: float | None
    values: np.ndarray
    flags: np.ndarray | None
    #: the raw DIGITAL words of the frame, PMUs in the sender's configuration order
    digitals: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class StatChanged(Event):
    """A PMU's STAT-derived flags changed (edge, not every frame)."""

    kind: ClassVar[str] = "c37_stat"
    station: str
    word: int
    flags: int

    def detail(self) -> dict[str, object]:
        return {"station": self.station, "stat": f"0x{self.word:04X}",
                "flags": [f.name for f in Flag if f and self.flags & f]}


@dataclass(frozen=True, slots=True)
class AnalogUnitWarning(Event):
    """An int16 analog whose ANUNIT scale is 0: it always decodes to 0."""

    kind: ClassVar[str] = "c37_analog_unit"
    station: str
    analog: str

    def detail(self) -> dict[str, object]:
        return {"station": self.station, "analog": self.analog,
                "warning": "int16 analog with ANUNIT scale 0 decodes to 0"}


@dataclass(frozen=True, slots=True)
class FrameRejected(Event):
    """A frame that could not be used (first of a run; later ones are only counted)."""

    kind: ClassVar[str] = "c37_frame_error"
    error: str

    def detail(self) -> dict[str, object]:
        return {"error": self.error}


@dataclass(frozen=True, slots=True)
class Resynced(Event):
    """TCP framing skipped bytes (garbage or CRC-failed candidates); totals so far."""

    kind: ClassVar[str] = "c37_resync"
    skipped_bytes: int
    crc_rejects: int

    def detail(self) -> dict[str, object]:
        return {"skipped_bytes": self.skipped_bytes, "crc_rejects": self.crc_rejects}


@dataclass(frozen=True, slots=True)
class Silent(Event):
    """No frame for ``silent_s``: the peer is silent or the connection half-open."""

    kind: ClassVar[str] = "silent"
    silent_s: float
    timeout_s: float

    def detail(self) -> dict[str, object]:
        return {"silent_s": round(self.silent_s, 3), "timeout_s": self.timeout_s}


# --------------------------------------------------------------------------------------
# identity


def _key(s: str) -> str:
    return s.strip().casefold()


def describe_configured(pmus: Sequence[C37Pmu]) -> str:
    """``STATION#IDCODE(phasor, ...)`` per configured PMU, in config order."""
    return "[" + "; ".join(f"{p.station}#{p.idcode}({', '.join(ph.name for ph in p.phasors)})"
                           for p in pmus) + "]"


def describe_received(cfg: c37.ConfigFrame) -> str:
    """The same description of a configuration frame's PMU blocks, in wire order."""
    return "[" + "; ".join(f"{p.station}#{p.idcode}({', '.join(p.phasor_names)})"
                           for p in cfg.pmus) + "]"


@dataclass(frozen=True)
class PmuMap:
    """Where each configured PMU and phasor sits in a configuration frame."""

    pmu_src: tuple[int, ...]  # CFG block of each configured PMU
    phasor_src: np.ndarray  # flat CFG phasor index of each configured phasor
    remapped: bool


def _phasor_order(want: C37Pmu, got: c37.PmuConfig) -> list[int] | None:
    """Index in ``got`` of each configured phasor, matched by name (and kind), or None."""
    names = [_key(n) for n in got.phasor_names]
    if len(names) != len(want.phasors) or len(set(names)) != len(names):
        return None
    try:
        order = [names.index(_key(ph.name)) for ph in want.phasors]
    except ValueError:
        return None
    kinds = [u[0] for u in got.phunit]
    if any(kinds[j] != (1 if ph.kind == "i" else 0) for j, ph in zip(order, want.phasors,
                                                                     strict=True)):
        return None
    return order


def _find_pmu(want: C37Pmu, cfg: c37.ConfigFrame) -> int | str:
    """The CFG block identified by ``want``'s station name and IDCODE, or why none is."""
    hits = [j for j, p in enumerate(cfg.pmus)
            if _key(p.station) == _key(want.station) and p.idcode == want.idcode]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        return f"{want.station}#{want.idcode} appears {len(hits)} times: names do not " \
               "identify the order"
    return f"{want.station}#{want.idcode} is not in it"


def match_config(expected: Sequence[C37Pmu], cfg: c37.ConfigFrame,
                 idcode: int | None = None) -> PmuMap:
    """Map the configured PMUs onto a configuration frame, or raise :class:`IdentityMismatch`.

    A PMU is identified by station name (case and padding ignored) and IDCODE, a phasor
    by its name within the PMU, and its PHUNIT type must match the configured kind
    (voltage/current). The same PMUs and phasors in another order are remapped; extra,
    missing, renamed or ambiguous ones are refused.
    """
    what = c37.FRAME_NAMES[cfg.frame_type].upper().replace("CFG", "CFG-")

    def refuse(reason: str) -> IdentityMismatch:
        return IdentityMismatch(reason, describe_configured(expected),
                                describe_received(cfg), what)

    if idcode is not None and cfg.idcode != idcode:
        raise refuse(f"stream IDCODE {cfg.idcode}, configured {idcode}")
    if len(cfg.pmus) != len(expected):
        raise refuse(f"{len(cfg.pmus)} PMUs, {len(expected)} configured")
    pmu_src: list[int] = []
    for want in expected:
        j = _find_pmu(want, cfg)
        if isinstance(j, str):
            raise refuse(j)
        pmu_src.append(j)
    base = np.cumsum([0] + [p.n_phasors for p in cfg.pmus])
    src: list[int] = []
    for want, j in zip(expected, pmu_src, strict=True):
        order = _phasor_order(want, cfg.pmus[j])
        if order is None:
            raise refuse(f"{want.station}: phasors ({', '.join(cfg.pmus[j].phasor_names)}) "
                         f"are not the configured "
                         f"({', '.join(ph.name for ph in want.phasors)}) with the same kinds")
        src += [int(base[j]) + k for k in order]
    phasor_src = np.array(src, np.intp)
    remapped = pmu_src != sorted(pmu_src) or not np.array_equal(phasor_src,
                                                                np.arange(len(src)))
    return PmuMap(tuple(pmu_src), phasor_src, bool(remapped))


def analog_warnings(cfg: c37.ConfigFrame) -> list[AnalogUnitWarning]:
    """int16 analogs (CFG-1/2) whose ANUNIT scale is 0."""
    out = []
    for p in cfg.pmus:
        if p.analog_float or p.anscale is not None:
            continue
        out += [AnalogUnitWarning(p.station, n)
                for n, (_, scale) in zip(p.analog_names, p.anunit, strict=True) if scale == 0]
    return out


# --------------------------------------------------------------------------------------
# configuration and data


@dataclass
class _Layout:
    """What decoding needs of the configuration in force."""

    config: c37.ConfigFrame
    decoder: c37.DataDecoder
    pmap: PmuMap | None  # None: no configured PMUs to map to (handshake only)
    point_pmu: np.ndarray  # CFG block of each output point
    cfgcnt: tuple[int, ...]


@dataclass
class ReceiverStats:
    configs: int = 0
    refused: int = 0
    changes: int = 0
    held_back: int = 0  # data frames dropped while a configuration change was pending


class C37Receiver:
    """Configuration and data frames of one stream -> events, against the twin config.

    ``expected``: the configured PMUs (values are produced and identities checked); None
    follows configurations and STAT words only (the transport's handshake needs no
    values). :meth:`config` takes a parsed configuration frame; :meth:`data` a raw data
    frame and raises the ``FrameError`` family when no usable configuration is in force.
    """

    def __init__(self, expected: Sequence[C37Pmu] | None = None, *, idcode: int | None = None,
                 rate_hz: float = 50.0) -> None:
        self.expected = tuple(expected) if expected is not None else None
        self.idcode = idcode
        self.rate = float(rate_hz)
        self.layout: _Layout | None = None
        self.refused: IdentityMismatch | None = None
        self.change_pending = False  # STAT bit 10 seen set
        self.stale = False  # the change is in force, the new configuration not yet in
        self.stats = ReceiverStats()
        phs = [ph for p in self.expected or () for ph in p.phasors]
        self._factor = np.array([ph.wire_factor for ph in phs])
        self._point_expected = np.repeat(
            np.arange(len(self.expected or ())),
            [2 * len(p.phasors) for p in self.expected or ()]).astype(np.intp)
        self._last_words: np.ndarray | None = None
        self._last_key = b""
        self._point_flags: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        """A configuration is in force and data can be used."""
        return self.layout is not None and not self.stale

    def reset(self) -> None:
        """Forget the configuration (a new connection may bring another PMU)."""
        self.layout = None
        self.refused = None
        self.change_pending = self.stale = False
        self._forget_words()

    def _forget_words(self) -> None:
        """STAT history restarts (the next frame's words are compared with nothing)."""
        self._last_words = self._point_flags = None
        self._last_key = b""

    # -- configuration frames --------------------------------------------------------
    def config(self, cfg: c37.ConfigFrame) -> list[Event]:
        """Take a configuration frame: accepted (maybe remapped), changed, or refused."""
        if cfg.frame_type == c37.FRAME_CFG1:
            return []  # capabilities, not what is sent: only CFG-2/3 describe data
        out: list[Event] = list(analog_warnings(cfg))
        cfgcnt = tuple(p.cfgcnt for p in cfg.pmus)
        old = self.layout
        changed = old is not None and (old.cfgcnt != cfgcnt or old.config.pmus != cfg.pmus)
        if changed:
            assert old is not None
            self.stats.changes += 1
            out.append(ConfigChanged(old.cfgcnt, cfgcnt))
        pmap = None
        if self.expected is not None:
            try:
                pmap = match_config(self.expected, cfg, self.idcode)
            except IdentityMismatch as exc:
                again = self.refused is not None and str(self.refused) == str(exc)
                self.layout, self.refused = None, exc
                self.stats.refused += 1
                self.stale = self.change_pending = False
                if not again:  # the same refusal, asked again later, is not news
                    out.append(ConfigRefused(str(exc), exc.configured, exc.received))
                return out
        point_pmu = (np.asarray(pmap.pmu_src, np.intp)[self._point_expected]
                     if pmap is not None else np.zeros(0, np.intp))
        self.layout = _Layout(cfg, cfg.decoder(), pmap, point_pmu, cfgcnt)
        if cfg.data_rate > 0:
            self.rate = float(cfg.data_rate)
        elif cfg.data_rate < 0:
            self.rate = 1.0 / -cfg.data_rate
        self.refused = None
        self.stale = False
        if changed or old is None:
            # a new layout: STAT history restarts. The same configuration again (the
            # answer to a request made when bit 10 rose) keeps the pending change
            self.change_pending = False
            self._forget_words()
        self.stats.configs += 1
        out.append(ConfigAccepted(tuple(p.station for p in cfg.pmus), cfgcnt,
                                  pmap.remapped if pmap else False,
                                  pmap.pmu_src if pmap else tuple(range(len(cfg.pmus)))))
        return out

    # -- data frames -----------------------------------------------------------------
    def _require(self) -> _Layout:
        if self.refused is not None:
            raise ConfigPending(f"data while the configuration is refused ({self.refused})", 0)
        if self.layout is None:
            raise ConfigPending("data frame before the configuration (CFG-2)", 0)
        return self.layout

    def data(self, raw: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Events of one data frame: STAT edges, and (with ``expected``) the values."""
        lay = self._require()
        frame: c37.DataFrame | None = None
        if lay.pmap is not None:
            frame = lay.decoder.decode(raw, now)
            words = frame.stat
        else:
            words = lay.decoder.stat_words(raw)
        out = self._stat_edges(lay, words)
        if self.stale:
            self.stats.held_back += 1
            return out
        if frame is not None and lay.pmap is not None:
            out.append(self._values(lay, lay.pmap, frame))
        return out

    def _stat_edges(self, lay: _Layout, words: np.ndarray) -> list[Event]:
        """Configuration-change bit edges and per-PMU flag changes (cheap when unchanged)."""
        key = words.tobytes()
        if key == self._last_key:  # the common case: nothing changed (bytes compare)
            return []
        last = self._last_words
        if self.change_pending:
            # announced, and now the words moved: bit 10 cleared, or a new layout read at
            # the old STAT offsets (which looks like anything). Either way the change may
            # be in force: hold data back until the configuration is asked again; the
            # words are not trusted for flags until then
            self.change_pending = False
            self.stale = True
            self._forget_words()
            return []
        out: list[Event] = []
        if np.any(words & STAT_CONFIG_CHANGE):
            self.change_pending = True
            out.append(ConfigChangeAnnounced(tuple(
                p.station for p, w in zip(lay.config.pmus, words, strict=True)
                if w & STAT_CONFIG_CHANGE)))
        flags = np.array([stat_flags(int(w)) for w in words], np.uint32)
        old = (np.array([stat_flags(int(w)) for w in last], np.uint32)
               if last is not None else np.zeros_like(flags))
        for i in np.flatnonzero(flags != old):
            out.append(StatChanged(lay.config.pmus[i].station, int(words[i]), int(flags[i])))
        self._last_words, self._last_key = words.copy(), key
        self._point_flags = flags[lay.point_pmu] if flags.any() else None
        return out

    def _values(self, lay: _Layout, pmap: PmuMap, f: c37.DataFrame) -> DataReceived:
        # per-phase volts/amperes on the wire -> channel units (C37Phasor.wire_factor)
        z = f.phasors[pmap.phasor_src] if pmap.remapped else f.phasors
        out = np.empty(2 * z.size)
        out[0::2] = np.abs(z) / self._factor
        out[1::2] = np.angle(z)
        ts = f.time
        seq = round(ts * self.rate) & 0xFFFFFFFF if ts is not None else None
        return DataReceived(seq, ts, out, self._point_flags,
                            f.digitals if len(f.digitals) else None)


# --------------------------------------------------------------------------------------
# the session


class State(enum.Enum):
    IDLE = "idle"  # no connection (TCP) / no peer heard yet or silent (UDP)
    AWAIT_CONFIG = "await_config"  # CFG-2 asked for
    STREAMING = "streaming"  # configuration accepted, START sent
    REFUSED = "refused"  # the configuration did not match the config's PMUs


@dataclass
class SessionStats:
    frames: int = 0
    data_frames: int = 0
    rejected: int = 0
    cfg_requests: int = 0
    starts: int = 0
    silences: int = 0


class C37Session:
    """One PDC-side C37.118 session (see the module docstring).

    ``tcp``: bytes are a stream reassembled into frames (CRC-checked, resynchronising on
    garbage); otherwise each :meth:`receive_data` call is one datagram. ``expected``: the
    configured PMUs, checked and mapped (:class:`C37Receiver`); None for a transport that
    only needs the handshake: then what the frames say (configuration accepted or changed,
    STAT flags, unit warnings) is left to the stream decoder, which knows the PMUs, and
    the session reports only its own doings (START, CFG-2 asked on an announced change,
    silence, framing). ``silence_s``: read timeout (the transport's
    ``TransportSpec.read_timeout``).
    """

    def __init__(self, *, idcode: int, silence_s: float,
                 expected: Sequence[C37Pmu] | None = None, rate_hz: float = 50.0,
                 tcp: bool = True, cfg_retry_s: float = CFG_RETRY_S) -> None:
        self.idcode = idcode
        self.tcp = tcp
        self.cfg_retry_s = cfg_retry_s
        self.silence_s = silence_s
        self.receiver = C37Receiver(expected, idcode=idcode if expected is not None else None,
                                    rate_hz=rate_hz)
        self.state = State.IDLE
        self.stats = SessionStats()
        self._out: list[bytes] = []
        self._reasm = StreamReassembler() if tcp else None
        self._asked_at = -float("inf")
        self._last_rx = 0.0
        self._failing = False  # a frame was rejected since the last good one
        self._resync_seen = (0, 0)
        self._resync_reported_at = -float("inf")

    # -- bytes out ---------------------------------------------------------------------
    def _command(self, cmd: int, now: float) -> None:
        self._out.append(c37.command(self.idcode, cmd, now=now))

    def _ask_config(self, now: float) -> None:
        self._command(c37.CMD_CFG2, now)
        self._asked_at = now
        self.stats.cfg_requests += 1

    def data_to_send(self) -> list[bytes]:
        """Command frames queued since the last call (the transport sends them in order)."""
        out, self._out = self._out, []
        return out

    # -- connection lifecycle --------------------------------------------------------
    def connection_made(self, now: float) -> None:
        """A connection (TCP) or a commanded peer (UDP): ask for the configuration."""
        self._wake(now)
        self._ask_config(now)

    def _wake(self, now: float) -> None:
        self.state = State.AWAIT_CONFIG
        self._last_rx = now
        self._failing = False

    def connection_lost(self) -> None:
        """The connection is gone: back to idle; the next one starts from scratch."""
        self.state = State.IDLE
        self.receiver.reset()
        if self._reasm is not None:
            self._reasm = StreamReassembler()
            self._resync_seen = (0, 0)

    def close(self, now: float) -> None:
        """Queue *turn off transmission* when data was flowing."""
        if self.state is State.STREAMING:
            self._command(c37.CMD_STOP, now)
        self.state = State.IDLE

    # -- bytes in ----------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Bytes read from the peer -> events (frames to hand on among them)."""
        if self._reasm is not None:
            frames = self._reasm.feed(data)
            out = self._resync_event(now)
        else:
            frames, out = [bytes(data)], []
        for raw in frames:
            out += self._frame(raw, now)
        return out

    def _resync_event(self, now: float) -> list[Event]:
        r = self._reasm
        assert r is not None
        seen = (r.garbage_bytes, r.crc_rejects)
        if seen == self._resync_seen or now - self._resync_reported_at < RESYNC_REPORT_S:
            return []
        self._resync_seen, self._resync_reported_at = seen, now
        return [Resynced(*seen)]

    def _frame(self, raw: bytes, now: float) -> list[Event]:
        self._last_rx = now
        self.stats.frames += 1
        if self.state is State.IDLE:
            self._wake(now)  # UDP: a datagram makes the peer known (asked when data comes)
        ftype = c37.frame_type_of(raw) if len(raw) >= 2 else -1
        out: list[Event] = [FrameReceived(raw, ftype)]
        try:
            if ftype == c37.FRAME_DATA:
                out += self._data(raw, now)
            elif ftype in (c37.FRAME_CFG2, c37.FRAME_CFG3):
                frame = c37.parse(raw, now)
                assert isinstance(frame, c37.ConfigFrame)
                out += self._config(frame, now)
            else:
                return out
        except FrameError as exc:
            self.stats.rejected += 1
            if not self._failing:
                self._failing = True
                out.append(FrameRejected(str(exc)))
            return out
        self._failing = False
        return out

    def _own(self, events: list[Event]) -> list[Event]:
        """Without configured PMUs, the content events are the decoder's to report."""
        if self.receiver.expected is not None:
            return events
        return [e for e in events if type(e) is ConfigChangeAnnounced]

    def _config(self, cfg: c37.ConfigFrame, now: float) -> list[Event]:
        events = self._own(self.receiver.config(cfg))
        if self.receiver.refused is not None:
            self.state = State.REFUSED
            self._asked_at = now
        elif self.state is not State.STREAMING:
            self.state = State.STREAMING
            self._command(c37.CMD_START, now)
            self.stats.starts += 1
            events.append(Started())
        return events

    def _data(self, raw: bytes, now: float) -> list[Event]:
        self.stats.data_frames += 1
        rx = self.receiver
        if not rx.ready:
            if rx.refused is None and now - self._asked_at >= self.cfg_retry_s:
                self._ask_config(now)  # data before (or without) its configuration
            if rx.layout is None:
                return []
        was_stale = rx.stale
        try:
            events = rx.data(raw, now)
        except c37.LayoutMismatch:
            if now - self._asked_at >= self.cfg_retry_s:
                self._ask_config(now)  # another layout without notice: ask what it is
            raise
        if (rx.stale and not was_stale) or any(isinstance(e, ConfigChangeAnnounced)
                                                for e in events):
            self._ask_config(now)  # announced, or in force: ask now (tick repeats it)
        return self._own(events)

    # -- timers ------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None while idle)."""
        if self.state is State.IDLE:
            return None
        due = self._last_rx + self.silence_s
        if self.state is State.AWAIT_CONFIG or self.receiver.stale:
            due = min(due, self._asked_at + self.cfg_retry_s)
        elif self.state is State.REFUSED:
            due = min(due, self._asked_at + self.silence_s)
        return due

    def tick(self, now: float) -> list[Event]:
        """Repeat an unanswered CFG-2 request; report silence (then the session is idle:
        the TCP transport reconnects, the UDP one waits for the next datagram)."""
        if self.state is State.IDLE:
            return []
        silent = now - self._last_rx
        if silent >= self.silence_s:
            self.stats.silences += 1
            self.state = State.IDLE
            self.receiver.reset()
            return [Silent(silent, self.silence_s)]
        waiting = self.state is State.AWAIT_CONFIG or self.receiver.stale
        retry = self.silence_s if self.state is State.REFUSED else self.cfg_retry_s
        if (waiting or self.state is State.REFUSED) and now - self._asked_at >= retry:
            self._ask_config(now)
        return []

