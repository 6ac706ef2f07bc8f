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
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hil.errors import HilError

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


__all__ = [
    "FAULT_KINDS", "MALFORMED_KINDS", "Burst", "Emission", "FaultInjector", "FaultPlan",
    "FaultRecord", "FaultSpecError", "allowed_malformed", "malform", "read_log",
    "write_log",
]
