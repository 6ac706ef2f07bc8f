"""Seeded fault injection for the emulator, logged with ground truth.

A :class:`FaultPlan` says what to inject (percentages per frame, delay jitter, burst
outages); a :class:`FaultInjector` applies it frame by frame, sans-IO: it takes the bytes
the emulator built for one stream at one step and returns the :class:`Emission` list to put
on the wire (none when the frame is lost, two for a duplicate, a malformed variant, an
extra copy from a foreign source ...), and appends one :class:`FaultRecord` per injected
fault to :attr:`FaultInjector.log`. A test (or the gateway's counters) is checked against
that log.

Determinism: one ``numpy.random.Generator`` seeded with ``plan.seed`` draws a fixed block
of uniforms for every frame offered, in the order frames are offered (step by step, streams
in config order), whether or not a fault fires, so the same seed, config and step range
give the same faults.

Per frame, in this order:

1. ``burst``      the step is inside a burst outage (for this stream or all): dropped.
2. ``loss``       dropped with probability ``loss_pct``.
3. ``malformed``  replaced by a broken variant with probability ``malformed_pct``:
                  ``truncated`` (bytes cut off the end), ``wrong_length`` (an extra word;
                  for C37.118 a FRAMESIZE that disagrees with the datagram, CRC still
                  correct) or ``bad_crc`` (C37.118 only: the CHK word flipped). On a TCP
                  stream only ``bad_crc`` keeps the byte stream's framing intact, so a
                  GTNET-SKT TCP stream gets no malformed frames and a C37.118 TCP stream
                  only ``bad_crc``.
4. ``duplicate``  sent twice (back to back) with probability ``dup_pct``.
5. ``reorder``    held back with probability ``reorder_pct`` and sent right after the
                  stream's next frame (at the next step; if that frame is lost the held
                  one is merely late).
6. ``delay``      with ``jitter_ms > 0`` every frame is sent ``U(0, jitter_ms)`` after its
                  slot (logged per frame; frames may overtake each other when the jitter
                  exceeds the period).
7. ``foreign``    UDP only, probability ``foreign_pct``: an extra copy of the frame is sent
                  from a socket bound to another loopback address (127.0.0.2), which the
                  gateway's allowlist must drop. The genuine frame is sent as well.

``seq`` in the log is the emulator step (the GTNET-SKT header sequence number; for
C37.118 the step whose timestamp the frame carries).

**A lab, impolitely.** Besides network faults, a real GTNET-SKT sender does things to its
sequence numbers and timestamps; :class:`CaseClock` plays them (sans-IO, seeded), on
demand (:class:`Disturbance`, ``KIND@SECONDS[:ARG]``) or as a compressed "lab day"
(:func:`lab_day`):

``stop_start``   the case is stopped (silence for ARG s) and started again: sequence and
                 case time (trace rows) from step 0; the GPS time goes on.
``restart``      restart from step 0 without a pause: sequence and rows from 0.
``recompile``    silence for ARG s, then sequence, rows *and time* reset (the timestamp
                 goes back to the case's start).
``card_reboot``  the GTNET card reboots: silence for ARG s, then its sequence from 0
                 (the case kept running: rows and time go on).
``no_gtsync``    the card loses GTSYNC for ARG s: timestamps are 0 (the key is the
                 sequence number).
``clock_step``   the sender's clock steps by ARG s (negative: back) and stays there.
``future_ts``    one stray frame stamped one day ahead.

Every frame's timestamp can sit at a ``phase`` of the period with uniform ``jitter``
(fractions of the period), as VILLASnode stamps (it takes the time before waiting for
the tick); a stream without a header carries no timestamp, so there the phase and
jitter delay the send instead.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hil.errors import HilError

DAY_S = 86_400.0
DISTURBANCE_KINDS = ("stop_start", "restart", "recompile", "card_reboot", "no_gtsync",
                     "clock_step", "future_ts")
#: the disturbances that take an argument, and its default
_DEFAULT_ARG = {"stop_start": 0.5, "recompile": 0.5, "card_reboot": 0.5, "no_gtsync": 1.0,
                "clock_step": -1.0}
FAULT_KINDS = ("burst", "loss", "malformed", "duplicate", "reorder", "delay", "foreign")
MALFORMED_KINDS = ("truncated", "wrong_length", "bad_crc")
_N_DRAWS = 9  # uniforms drawn per offered frame (fixed, for reproducibility)
_PCT_FIELDS = ("loss_pct", "dup_pct", "reorder_pct", "malformed_pct", "foreign_pct")


class FaultSpecError(HilError):
    """A fault option is out of range or cannot be parsed."""


@dataclass(frozen=True)
class Burst:
    """An outage: every frame of ``stream`` (all streams when None) in
    ``[start, start + length)`` steps is dropped."""

    start: int
    length: int
    stream: str | None = None

    @classmethod
    def parse(cls, text: str) -> Burst:
        """``START:LEN`` or ``START:LEN:STREAM`` (steps)."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise FaultSpecError(f"burst {text!r}: write START:LEN or START:LEN:STREAM")
        try:
            start, length = int(parts[0]), int(parts[1])
        except ValueError:
            raise FaultSpecError(f"burst {text!r}: START and LEN are step counts") from None
        if start < 0 or length <= 0:
            raise FaultSpecError(f"burst {text!r}: START >= 0 and LEN > 0")
        return cls(start, length, parts[2] if len(parts) == 3 and parts[2] else None)

    def covers(self, step: int, stream: str) -> bool:
        return (self.stream is None or self.stream == stream) and \
            self.start <= step < self.start + self.length


@dataclass(frozen=True)
class FaultPlan:
    """What to inject; percentages are per frame offered (0..100)."""

    seed: int = 0
    loss_pct: float = 0.0
    dup_pct: float = 0.0
    reorder_pct: float = 0.0
    jitter_ms: float = 0.0
    bursts: tuple[Burst, ...] = ()
    malformed_pct: float = 0.0
    foreign_pct: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS

    def __post_init__(self) -> None:
        for name in _PCT_FIELDS:
            v = getattr(self, name)
            if not 0.0 <= v <= 100.0:
                raise FaultSpecError(f"{name} = {v}: a percentage in 0..100")
        if self.jitter_ms < 0:
            raise FaultSpecError(f"jitter_ms = {self.jitter_ms}: must be >= 0")
        bad = [k for k in self.malformed_kinds if k not in MALFORMED_KINDS]
        if bad or not self.malformed_kinds:
            raise FaultSpecError(f"malformed kinds {bad or '()'}: use {MALFORMED_KINDS}")

    @property
    def active(self) -> bool:
        return bool(self.jitter_ms or self.bursts
                    or any(getattr(self, name) for name in _PCT_FIELDS))


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: the ground truth a gateway counter is checked against."""

    step: int
    stream: str
    seq: int
    kind: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Emission:
    """One write to the wire: ``delay_s`` after the step's slot, from the foreign source
    when ``foreign``; ``tags`` name the faults it carries (empty for a clean frame)."""

    data: bytes
    seq: int
    delay_s: float = 0.0
    foreign: bool = False
    tags: tuple[str, ...] = ()


@dataclass
class _StreamState:
    held: Emission | None = None


@dataclass
class FaultInjector:
    """Apply a :class:`FaultPlan` frame by frame; see the module docstring for the order."""

    plan: FaultPlan
    log: list[FaultRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.plan.seed)
        self._active = self.plan.active  # the plan is frozen: decided once, not per frame
        self._streams: dict[str, _StreamState] = {}
        self.counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def _record(self, step: int, stream: str, seq: int, kind: str, detail: str = "") -> None:
        self.log.append(FaultRecord(step, stream, seq, kind, detail))
        self.counts[kind] += 1

    def apply(self, step: int, stream: str, seq: int, frame: bytes, *, fmt: str,
              transport: str) -> list[Emission]:
        """The emissions for one built frame (``fmt`` "gtnet-skt"/"c37.118", ``transport``
        "udp"/"tcp"), including a frame held back from the stream's previous step."""
        plan = self.plan
        st = self._streams.setdefault(stream, _StreamState())
        u = self._rng.random(_N_DRAWS)
        out: list[Emission] = []
        released = st.held
        st.held = None
        if not self._active:
            out.append(Emission(frame, seq))
        elif any(b.covers(step, stream) for b in plan.bursts):
            self._record(step, stream, seq, "burst")
        elif u[0] * 100.0 < plan.loss_pct:
            self._record(step, stream, seq, "loss")
        else:
            tags: list[str] = []
            data = frame
            if u[1] * 100.0 < plan.malformed_pct:
                kinds = allowed_malformed(plan.malformed_kinds, fmt, transport)
                if kinds:
                    kind = kinds[min(int(u[2] * len(kinds)), len(kinds) - 1)]
                    data = malform(frame, kind, fmt, u[3])
                    self._record(step, stream, seq, "malformed",
                                 f"{kind} {len(frame)}->{len(data)} bytes")
                    tags.append(f"malformed:{kind}")
            delay = u[4] * plan.jitter_ms / 1000.0 if plan.jitter_ms > 0 else 0.0
            if plan.jitter_ms > 0:
                self._record(step, stream, seq, "delay", f"{delay * 1000.0:.3f} ms")
            copies = 1
            if u[5] * 100.0 < plan.dup_pct:
                copies = 2
                self._record(step, stream, seq, "duplicate")
                tags.append("duplicate")
            em = [Emission(data, seq, delay, False, tuple(tags)) for _ in range(copies)]
            if transport == "udp" and u[7] * 100.0 < plan.foreign_pct:
                self._record(step, stream, seq, "foreign", "extra copy from 127.0.0.2")
                em.append(Emission(frame, seq, delay, True, ("foreign",)))
            if u[6] * 100.0 < plan.reorder_pct:
                self._record(step, stream, seq, "reorder", "held until after the next frame")
                # hold the first copy back; a duplicate or foreign copy still goes now
                em[0].tags = (*em[0].tags, "reorder")
                st.held = em.pop(0)
            out.extend(em)
        if released is not None:
            out.append(released)
        return out

    def flush(self) -> list[tuple[str, Emission]]:
        """(stream, frame) still held back at the end of a run (sent last)."""
        out = [(name, s.held) for name, s in self._streams.items() if s.held is not None]
        for s in self._streams.values():
            s.held = None
        return out

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}


def allowed_malformed(kinds: Sequence[str], fmt: str, transport: str) -> list[str]:
    """Malformed variants that make sense for a stream (see the module docstring)."""
    out = [k for k in kinds if fmt == "c37.118" or k != "bad_crc"]
    if transport == "tcp":
        out = [k for k in out if k == "bad_crc" and fmt == "c37.118"]
    return out


def malform(frame: bytes, kind: str, fmt: str, u: float) -> bytes:
    """A broken variant of ``frame`` (``u`` in [0, 1) picks the cut for truncation)."""
    if kind == "truncated":
        # cut 1 .. len-1 bytes off the end (a GTNET-SKT cut is a size error, whole words
        # or not; a C37.118 cut leaves FRAMESIZE pointing past the end)
        cut = 1 + int(u * (len(frame) - 1))
        return frame[: len(frame) - min(cut, len(frame) - 1)]
    if kind == "wrong_length":
        if fmt == "c37.118":
            # FRAMESIZE one word short of the datagram, CHK recomputed over the new header
            from gateway.codecs.crc import crc_ccitt

            body = bytearray(frame[:-2])
            struct.pack_into(">H", body, 2, len(frame) - 2)
            return bytes(body) + struct.pack(">H", crc_ccitt(body))
        return frame + b"\x00\x00\x00\x00"
    if kind == "bad_crc":
        chk = struct.unpack_from(">H", frame, len(frame) - 2)[0] ^ 0xFFFF
        return frame[:-2] + struct.pack(">H", chk)
    raise FaultSpecError(f"unknown malformed kind {kind!r}")


def write_log(records: Iterable[FaultRecord], path: str | Path) -> None:
    """Fault log as JSON lines (one record per line)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(r.to_json() + "\n")


def read_log(path: str | Path) -> list[FaultRecord]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(FaultRecord(**json.loads(line)))
    return out


@dataclass(frozen=True)
class Disturbance:
    """One lab event at ``at_s`` seconds into the run (see the module docstring)."""

    kind: str
    at_s: float
    arg: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DISTURBANCE_KINDS:
            raise FaultSpecError(f"disturbance {self.kind!r}: use one of "
                                 f"{', '.join(DISTURBANCE_KINDS)}")
        if self.at_s < 0:
            raise FaultSpecError(f"disturbance {self.kind}@{self.at_s}: time must be >= 0")
        if self.kind in ("stop_start", "recompile", "card_reboot", "no_gtsync") and \
                self.arg < 0:
            raise FaultSpecError(f"disturbance {self.kind}: duration {self.arg} < 0")

    @classmethod
    def parse(cls, text: str) -> Disturbance:
        """``KIND@SECONDS`` or ``KIND@SECONDS:ARG`` (ARG: seconds of silence, of lost
        GTSYNC, or the clock step)."""
        kind, _, rest = text.partition("@")
        at, _, arg = rest.partition(":")
        try:
            return cls(kind, float(at), float(arg) if arg else _DEFAULT_ARG.get(kind, 0.0))
        except ValueError:
            raise FaultSpecError(f"disturbance {text!r}: write KIND@SECONDS[:ARG], e.g. "
                                 "restart@5 or clock_step@8:-1.5") from None


def lab_day(seed: int, seconds: float, *, first_s: float = 2.0) -> tuple[Disturbance, ...]:
    """A compressed lab day: every disturbance kind once, in a seeded order, spread over
    ``seconds`` after ``first_s`` (each gets an equal share, at a seeded point of it)."""
    rng = np.random.default_rng(seed)
    kinds = list(DISTURBANCE_KINDS)
    rng.shuffle(kinds)
    share = (seconds - first_s) / len(kinds)
    if share < 1.0:
        raise FaultSpecError(f"a lab day needs {len(kinds) + first_s:.0f} s or more, "
                             f"got {seconds:g}")
    out = []
    for i, kind in enumerate(kinds):
        at = first_s + share * (i + 0.1 + 0.3 * rng.random())
        arg = _DEFAULT_ARG.get(kind, 0.0)
        if kind == "clock_step":
            arg = float(rng.choice([-1.0, 1.0])) * (0.5 + rng.random())
        elif kind in ("stop_start", "recompile", "card_reboot", "no_gtsync"):
            arg = min(arg, 0.3 * share)
        out.append(Disturbance(kind, round(at, 3), round(arg, 3)))
    return tuple(out)


@dataclass(frozen=True)
class Stamp:
    """What a GTNET-SKT sender puts on the wire at one emulator step: whether it sends,
    its header sequence number, the case step whose trace row it carries, the step whose
    nominal time it carries, the offset to add to that time (None: timestamp 0, no
    GTSYNC) and the send delay of a header-less frame."""

    send: bool
    seq: int
    row_step: int
    time_step: int  # the step whose nominal time it carries (a recompile goes back)
    ts_offset: float | None
    delay_s: float
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class DisturbanceRecord:
    """A disturbance as played: the step it began and that step's nominal time."""

    step: int
    kind: str
    arg: float
    time: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class CaseClock:
    """Sequence numbers, trace rows and timestamp offsets of an RTDS case, disturbed on
    schedule (see the module docstring). Sans-IO and seeded."""

    def __init__(self, rate_hz: float, disturbances: Sequence[Disturbance] = (), *,
                 phase: float = 0.0, jitter: float = 0.0, seed: int = 0,
                 start_step: int = 0) -> None:
        if not 0.0 <= jitter < 1.0 or not -1.0 < phase < 1.0:
            raise FaultSpecError(f"phase {phase} / jitter {jitter}: fractions of the "
                                 "period, |phase| < 1 and 0 <= jitter < 1")
        self.rate = float(rate_hz)
        self.phase = phase
        self.jitter = jitter
        self._rng = np.random.default_rng(seed + 0x5EED)
        self.start_step = start_step
        self._todo = sorted(disturbances, key=lambda d: d.at_s)
        self.seq_origin = 0  # the step whose sequence number is 0
        self.row_origin = start_step  # the step that carries trace row start_step
        self.ts_offset = 0.0
        self.time_back = 0  # steps the case time went back (recompiles)
        self.silent_until = -1  # steps before this one send nothing
        self.no_sync_until = -1
        self.log: list[DisturbanceRecord] = []

    def at(self, step: int, nominal_time: float) -> Stamp:
        """The stamp of ``step`` (steps are asked for in increasing order)."""
        p = 1.0 / self.rate
        events: list[str] = []
        while self._todo and self._todo[0].at_s * self.rate <= step - self.start_step:
            d = self._todo.pop(0)
            self.log.append(DisturbanceRecord(step, d.kind, d.arg, nominal_time))
            events.append(d.kind)
            self._begin(d, step)
        u = self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        off: float | None = self.ts_offset + (self.phase + u) * p
        if step < self.no_sync_until:
            off = None
        elif "future_ts" in events:
            off = (off or 0.0) + DAY_S
        return Stamp(step >= self.silent_until, step - self.seq_origin,
                     self.start_step + step - self.row_origin, step - self.time_back, off,
                     max(0.0, (self.phase + u) * p), tuple(events))

    def _begin(self, d: Disturbance, step: int) -> None:
        resume = step + max(0, round(d.arg * self.rate))
        if d.kind in ("stop_start", "recompile", "card_reboot"):
            self.silent_until = resume
        if d.kind == "stop_start":
            self.seq_origin = self.row_origin = resume
        elif d.kind == "restart":
            self.seq_origin = self.row_origin = step
        elif d.kind == "recompile":
            # the case time starts again: the timestamp goes back to the run's start
            self.time_back += resume - self.row_origin
            self.seq_origin = self.row_origin = resume
        elif d.kind == "card_reboot":
            self.seq_origin = resume  # the case ran on: rows and time continue
        elif d.kind == "no_gtsync":
            self.no_sync_until = resume
        elif d.kind == "clock_step":
            self.ts_offset += d.arg


__all__ = [
    "DAY_S",
    "DISTURBANCE_KINDS",
    "FAULT_KINDS",
    "MALFORMED_KINDS",
    "Burst",
    "CaseClock",
    "Disturbance",
    "DisturbanceRecord",
    "Emission",
    "FaultInjector",
    "FaultPlan",
    "FaultRecord",
    "FaultSpecError",
    "Stamp",
    "allowed_malformed",
    "lab_day",
    "malform",
    "read_log",
    "write_log",
]
