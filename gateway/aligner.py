"""Time alignment of several streams into one snapshot, sans-IO (openPDC's concentrator).

**Slots.** Frames are grouped into time slots of ``1 / rate`` seconds. Every timestamp
and sequence number from outside is untrusted, so each stream has its own discipline
(:class:`_Source`):

* the slot grid follows the sender: the grid's *phase* (where in the period the sender
  stamps, or where its frames arrive) is a robust running estimate of
  ``ts * rate - slot`` (updates clipped to ``jitter`` of a period), and a frame's slot is
  ``round(ts * rate - phase)``; a sender stamping at half a period with jitter never
  puts two frames into one slot;
* a stream with a sequence number is slotted by sequence once its slots per sequence
  step are known (learned from two frames' timestamps; 1 for a stream at the aligner's
  rate, more for a slower one); its timestamp then only has to agree within
  ``0.5 + jitter`` periods, and a stream that loses its time source (no GTSYNC:
  timestamp 0) keeps its slots;
* without a timestamp or sequence number the arrival time is used with the same phase
  tracking, and a frame never takes a slot its own stream already used (a late frame
  and the next one both keep their data; a sender's backlog arriving at once takes
  consecutive slots in arrival order); arrival is our own clock, so such a frame is
  never held as a jump or a restart (a silence is only a gap);
* a timestamp more than ``max_ahead_s`` ahead of the local clock is refused (FUTURE),
  once the stream's timestamps have been within that bound (a sender whose clock is not
  synchronised with ours is judged by its own rate and sequence only);
* a key more than ``max_jump_s`` ahead of the stream's newest, or more than
  ``reorder_s`` behind it, is **held**: if the stream's next frame continues from it,
  the sender jumped (forward: a clock step or an outage) or **restarted** (backwards:
  case restart, recompile, card reboot). A restart re-bases the stream: its keys are
  shifted so the new run continues at the slot of the time it arrived (beside streams
  that did not restart), the held frame and the new one are placed at once (alignment
  resumes within one lag window, nothing stalls for as long as the old run lasted) and
  an :class:`AlignEvent` is queued. If the next
  frame does not continue from it, the held frame was an outlier and is refused
  (OUTLIER, or FUTURE when it was ahead): one stray datagram cannot move the slot grid;
* a timestamp that disagrees with a continuous sequence number is held the same way: the
  next frame with the same disagreement makes it a **clock step** (event; the stream
  stays on its sequence), otherwise it was a stray timestamp and is refused.

**Publishing.** A slot is published *early*, the moment every expected stream has
delivered its frame (wait-for-all), or when its *lag window* expires: ``lag_s`` after the
slot's first frame arrived (:meth:`Aligner.tick`; :meth:`next_deadline` says when). Slots
are published in key order; publishing a slot first publishes any older pending slot, so
published keys strictly increase. Values of a stream that did not make it into its slot
are NaN and flagged MISSING, plus LATE when that stream is alive (it delivered something
within ``alive_s``). Non-finite values on the wire are flagged MISSING.

**Outputs besides snapshots** (the runner drains them; nothing here logs):
:attr:`Aligner.late` holds :class:`LateFrame` items, frames that arrived after their slot
was published (they are not merged, but the runner stores them flagged LATE);
:attr:`Aligner.events` holds :class:`AlignEvent` items (restart, jump, clock step, refused
frames, timestamps lost or back: a GTNET card without GTSYNC sends 0);
:attr:`Aligner.last_verdict` says what became of the last frame fed, and
``stats.dropped`` counts every frame not placed and not late, by reason.

``now`` is always passed in; nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.snapshot import Flag, Snapshot
from gateway.stats import SEQ_MOD, seq_diff

SEQ_HALF = SEQ_MOD // 2
MISSING = np.uint32(Flag.MISSING)
MISSING_LATE = np.uint32(Flag.MISSING | Flag.LATE)
PHASE_GAIN = 1.0 / 32.0  # weight of one frame in the running phase estimate
#: refusals of one kind per stream that become events; afterwards one in EVENT_EVERY
EVENT_CAP = 100
EVENT_EVERY = 1000
#: a stream restarting this long after another reuses that one's re-basing (same sender)
RESTART_JOIN_S = 1.0


class Verdict(enum.StrEnum):
    """What became of one frame fed to the aligner."""

    PLACED = "placed"  # in a pending slot (or published with it)
    LATE = "late"  # its slot was already published: queued in Aligner.late
    HELD = "held"  # a jump; the stream's next frame decides
    DUPLICATE = "duplicate"  # its stream already filled that slot: dropped
    FUTURE = "future"  # refused: ahead of the local clock or an unconfirmed jump ahead
    OUTLIER = "outlier"  # refused: an unconfirmed jump back or a stray timestamp


#: reasons a frame is dropped (counted in AlignerStats.dropped)
DROP_REASONS = (Verdict.DUPLICATE, Verdict.FUTURE, Verdict.OUTLIER)


@dataclass(frozen=True)
class LateFrame:
    """A frame whose slot was already published: stored raw (flagged LATE) by the runner.

    ``channels`` are the snapshot channel indices the frame fills, ``values`` their
    engineering values; ``key`` is the slot (same space as :attr:`Snapshot.seq`)."""

    stream: str
    stream_index: int
    key: int
    seq: int | None
    ts: float | None
    arrival: float
    source_time: float
    channels: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class AlignEvent:
    """Something the runner turns into an event: ``restart``, ``jump``, ``clock_step``,
    ``future_frame``, ``outlier_frame``, ``timestamps_lost``, ``timestamps_back``."""

    kind: str
    stream: str
    time: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class StreamLayout:
    """Where a stream's decoded points land in the snapshot vector."""

    name: str
    points: np.ndarray  # indices into the decoded point vector
    channels: np.ndarray  # channel index for each of those points
    scale: np.ndarray  # engineering value = wire value * scale
    # fast path, derived: contiguous runs become slices (views), unit scale skips the multiply
    point_sel: slice | np.ndarray = field(init=False, repr=False, compare=False)
    chan_sel: slice | np.ndarray = field(init=False, repr=False, compare=False)
    unit: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "point_sel", _as_slice(self.points))
        object.__setattr__(self, "chan_sel", _as_slice(self.channels))
        object.__setattr__(self, "unit", bool(np.all(self.scale == 1.0)))

    @classmethod
    def of(cls, name: str, point_channels: Sequence[int | None],
           scales: Sequence[float] | None = None) -> StreamLayout:
        sel = [i for i, c in enumerate(point_channels) if c is not None]
        sc = [1.0] * len(point_channels) if scales is None else list(scales)
        return cls(name, np.array(sel, np.intp),
                   np.array([point_channels[i] for i in sel], np.intp),
                   np.array([sc[i] for i in sel], np.float64))


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


@dataclass(slots=True)
class _Slot:
    key: int
    source_time: float
    first_arrival: float
    values: np.ndarray
    flags: np.ndarray
    got: int = 0  # bitmask of streams received


@dataclass
class AlignerStats:
    published: int = 0
    early: int = 0  # published because every stream had arrived
    expired: int = 0  # published by the lag window
    incomplete: int = 0  # published with at least one stream missing
    late_frames: int = 0
    duplicate_frames: int = 0
    late_by_stream: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    jumps: int = 0
    clock_steps: int = 0
    #: frames neither placed nor late, by reason (duplicate, future, outlier)
    dropped: dict[str, int] = field(
        default_factory=lambda: {str(r): 0 for r in DROP_REASONS})
    dropped_by_stream: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Frame:
    """A frame on its way to a slot (or held until the stream's next frame decides)."""

    key: int
    values: np.ndarray
    now: float
    ts: float | None
    seq: int | None
    x: float | None  # ts * rate (or arrival * rate), for the phase estimate
    shift: int | None = None  # held for a timestamp/sequence disagreement of this size
    flags: np.ndarray | None = None  # the source's quality bits per point


@dataclass(slots=True)
class RunPlan:
    """What :meth:`Aligner.plan_run` found: the stream's index, and for each ordinary
    frame its slot key, ``ts * rate`` and slot instant; the grid phase after them."""

    index: int
    keys: list[int] = field(default_factory=list)
    xs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    phase: float = 0.0


@dataclass
class _Source:
    """One stream's discipline: phase, newest key, sequence mapping, a held frame."""

    phase: float | None = None  # the sender's grid phase, in periods (not wrapped)
    last_key: int | None = None  # newest key placed (or late) for this stream
    last_seq: int | None = None  # sequence number of that frame
    offset: int = 0  # added to the stream's own keys (re-basing after a restart)
    held: _Frame | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    timed: bool | None = None  # whether its last frame had a timestamp
    last_now: float = 0.0  # arrival of the frame with the newest key
    synced: bool = False  # its timestamps have been within max_ahead of the local clock
    stepped: int = 0  # slots the sender's clock stepped (taken out of source times)
    scale: int | None = None  # slots per sequence step (learned from the timestamps)
    last_x: float | None = None  # ts * rate of the newest frame (None: it had none)


class Aligner:
    def __init__(self, n_channels: int, streams: Sequence[StreamLayout], *, rate_hz: float,
                 lag_s: float, alive_s: float = 1.0, max_pending: int = 64,
                 reorder_s: float = 0.2, max_jump_s: float = 2.0,
                 max_ahead_s: float | None = None, jitter: float = 0.45) -> None:
        if not streams:
            raise ValueError("an aligner needs at least one stream")
        if len(streams) > 62:
            raise ValueError("at most 62 streams per aligner")
        if not 0.0 < jitter < 1.0:
            raise ValueError(f"jitter {jitter}: a fraction of the period in (0, 1)")
        self.n = n_channels
        self.streams = list(streams)
        self.index = {s.name: i for i, s in enumerate(self.streams)}
        self.rate = float(rate_hz)
        self.lag = float(lag_s)
        self.alive_s = alive_s
        self.max_pending = max_pending
        self.reorder = max(2, math.ceil(reorder_s * self.rate))  # slots
        self.jump = max(self.reorder, math.ceil(max_jump_s * self.rate))  # slots
        self.max_ahead = max_ahead_s
        self.jitter = float(jitter)
        self.all_mask = (1 << len(self.streams)) - 1
        self._pending: dict[int, _Slot] = {}
        self._last_key: int | None = None  # newest published slot
        self._last_seen = [-math.inf] * len(self.streams)
        self._src = [_Source() for _ in self.streams]
        self._rebase: tuple[int, int, float] | None = None  # (held key, offset delta, now)
        self._template_flags = np.full(n_channels, MISSING, np.uint32)
        self._template_vals = np.full(n_channels, np.nan)
        self._blank: tuple[np.ndarray, np.ndarray] | None = None  # see _blank_rows
        self.stats = AlignerStats(late_by_stream={s.name: 0 for s in self.streams})
        for s in self.streams:
            self.stats.dropped_by_stream[s.name] = {str(r): 0 for r in DROP_REASONS}
        self.late: list[LateFrame] = []
        self.events: list[AlignEvent] = []
        self.last_verdict: Verdict = Verdict.PLACED

    @classmethod
    def for_config(cls, cfg: Any, streams: Sequence[StreamLayout]) -> Aligner:
        """The aligner of a twin config (``cfg.align`` holds the discipline settings)."""
        a = cfg.align
        return cls(len(cfg.channels), streams, rate_hz=cfg.rate_hz, lag_s=a.lag_s,
                   reorder_s=getattr(a, "reorder_s", 0.2),
                   max_jump_s=getattr(a, "max_jump_s", 2.0),
                   max_ahead_s=getattr(a, "max_ahead_s", 2.0),
                   jitter=getattr(a, "jitter", 0.45))

    # -- draining ------------------------------------------------------------------------
    def drain_late(self) -> list[LateFrame]:
        out, self.late = self.late, []
        return out

    def drain_events(self) -> list[AlignEvent]:
        out, self.events = self.events, []
        return out

    # -- slot key ----------------------------------------------------------------------
    def key_of(self, ts: float | None, seq: int | None, now: float) -> tuple[int, float]:
        """The slot of a frame of a stream that has seen nothing yet (grid phase 0)."""
        if ts is not None and ts > 0:
            return round(ts * self.rate), ts
        if seq is not None:
            return int(seq), now
        return round(now * self.rate), now

    def _key(self, src: _Source, ts: float | None, seq: int | None,
             now: float) -> tuple[int, float | None, int | None]:
        """(key, x, shift): the frame's slot, ``ts * rate`` (arrival-based without time
        or sequence) and, when a timestamp disagrees with a continuous sequence number,
        the disagreement in slots."""
        r = self.rate
        x = ts * r if ts is not None else None
        ks = None
        if seq is not None and src.last_seq is not None and src.last_key is not None:
            d = (seq - src.last_seq) % SEQ_MOD  # seq_diff, inline (hot path)
            if d >= SEQ_HALF:
                d -= SEQ_MOD
            # forward by sequence; back by sequence only without a timestamp (with one,
            # a reordered frame's time places it, and a restart's time is newer); a
            # timed stream is slotted by sequence once its slots per step are learned
            sc = src.scale
            if sc is None and x is None:
                sc = 1
            if sc is not None and (0 < d * sc <= self.jump or (
                    x is None and -self.reorder <= d * sc <= 0)):
                ks = src.last_key + d * sc
        if x is not None:
            ph = x - round(x) if src.phase is None else src.phase
            kt = round(x - ph) + src.offset
            if ks is None:
                return kt, x, None
            if abs(x - ph + src.offset - ks) < 0.5 + self.jitter:
                return ks, x, None
            return ks, x, kt - ks
        if ks is not None:
            return ks, None, None
        if seq is not None:
            # no tie yet between sequence and slots, or the sequence jumped: continue
            # from the newest key by the sequence step if known, else start at seq
            if src.last_key is None or src.last_seq is None:
                return int(seq) + src.offset, None, None
            return src.last_key + seq_diff(seq, src.last_seq) * (src.scale or 1), None, None
        xa = now * r
        ph = xa - round(xa) if src.phase is None else src.phase
        k = round(xa - ph) + src.offset
        last = src.last_key
        if last is not None and k <= last:
            k = last + 1  # never the slot its own stream already filled (a burst: in order)
        return k, xa, None

    # -- feeding -------------------------------------------------------------------------
    def feed(self, stream: str, values: np.ndarray, now: float, *, ts: float | None = None,
             seq: int | None = None, flags: np.ndarray | None = None) -> list[Snapshot]:
        """Add one decoded frame (point order); return the snapshots now complete.
        :attr:`last_verdict` says what became of the frame.

        ``flags``: quality bits per point from the source (e.g. a C37.118 STAT word),
        OR-ed into the channels' flags; None when the source reports nothing."""
        i = self.index[stream]
        self._last_seen[i] = now
        src = self._src[i]
        timed = ts is not None and ts > 0
        if timed and self.max_ahead is not None:
            assert ts is not None
            if ts <= now + self.max_ahead:
                src.synced = True
            elif src.synced:
                return self._refuse(i, Verdict.FUTURE, now, {"ts": ts, "seq": seq,
                                                             "ahead_s": ts - now})
        if timed is not src.timed:
            if src.timed is not None and seq is not None:  # GTSYNC lost or back
                self.events.append(AlignEvent(
                    "timestamps_back" if timed else "timestamps_lost", self.streams[i].name,
                    now, {"seq": seq, "ts": ts}))
            src.timed = timed
        key, x, shift = self._key(src, ts if timed else None, seq, now)
        fr = _Frame(key, values, now, ts if timed else None, seq, x, shift, flags)
        if src.last_key is None or (x is not None and not timed and seq is None):
            # arrival-slotted: our own clock, never a stray or a restart to hold
            return self._place(i, fr)
        if shift is not None:
            return self._on_disagreement(i, fr)
        d = key - src.last_key
        if -self.reorder <= d <= self.jump:
            if src.held is not None:
                self._refute(i, now)
            return self._place(i, fr)
        return self._on_jump(i, fr)

    # -- a run of ordinary frames (the batch path) -------------------------------------
    def plan_run(self, stream: str, seqs: list[int], tss: list[float],
                 nows: list[float], limit: int) -> RunPlan:
        """How many leading frames (at most ``limit``) of a batch of ``stream`` are
        *ordinary*, and where they go, without changing anything. Ordinary: timed (as
        the stream's frame before), within ``max_ahead_s``, slotted by sequence one step
        or more ahead with a timestamp that agrees, nothing held, not late, not a
        duplicate: :meth:`feed` would place each and do nothing else (no event, no
        refusal). :meth:`place_run` then places them; the rest go through :meth:`feed`."""
        i = self.index[stream]
        src = self._src[i]
        plan = RunPlan(i)
        last_key, last_seq, ph, sc = src.last_key, src.last_seq, src.phase, src.scale
        if (src.timed is not True or src.held is not None or last_key is None
                or last_seq is None or ph is None or sc is None):
            return plan
        r, off, jit, ahead = self.rate, src.offset, self.jitter, self.max_ahead
        agree, jump, stepped = 0.5 + jit, self.jump, src.stepped
        published = self._last_key if self._last_key is not None else -math.inf
        pending, bit = self._pending, 1 << i
        keys, xs, times = plan.keys, plan.xs, plan.times
        for k in range(limit):
            ts, now = tss[k], nows[k]
            if not ts > 0 or (ahead is not None and ts > now + ahead):
                break
            d = (seqs[k] - last_seq) % SEQ_MOD
            if d >= SEQ_HALF:
                d -= SEQ_MOD
            key = last_key + d * sc
            x = ts * r
            if not 0 < d * sc <= jump or not abs(x - ph + off - key) < agree \
                    or key <= published:
                break
            slot = pending.get(key)
            if slot is not None and slot.got & bit:
                break
            res = x - (key - off) - ph  # finite: the agreement test above passed
            ph += PHASE_GAIN * (jit if res > jit else -jit if res < -jit else res)
            keys.append(key)
            xs.append(x)
            times.append((key + ph - stepped) / r)
            last_key, last_seq = key, seqs[k]
        plan.phase = ph
        return plan

    def place_run(self, plan: RunPlan, seqs: list[int], nows: list[float],
                  values: np.ndarray) -> list[tuple[int, list[Snapshot]]]:
        """Place the frames :meth:`plan_run` found ordinary (``values``: their decoded
        points, one row each): the same slots, flags, publications and counts as
        :meth:`feed` frame by frame. New slots take rows of two blocks filled for the
        whole run (no per-slot copies); with a single stream each frame's slot is
        published at once, without a slot object.
        (frame index, snapshots) for each frame that published some."""
        i, keys, m = plan.index, plan.keys, len(plan.keys)
        lay, src = self.streams[i], self._src[i]
        v = values[:m, lay.point_sel]
        if not lay.unit:
            v = v * lay.scale
        # one reduction: NaN or inf anywhere makes it non-finite (flags per value then)
        finite = math.isfinite(np.add.reduce(v, axis=None))
        f: Any = 0 if finite else np.where(np.isfinite(v), np.uint32(0), MISSING)
        bv, bf = self._blank_rows(m)
        bv[:, lay.chan_sel] = v
        bf[:, lay.chan_sel] = f
        src.synced = src.synced or self.max_ahead is not None
        src.last_key, src.last_seq = keys[-1], seqs[m - 1]
        src.last_now, src.last_x, src.phase = nows[m - 1], plan.xs[-1], plan.phase
        self._last_seen[i] = nows[m - 1]
        self.last_verdict = Verdict.PLACED
        pending, bit, full, st = self._pending, 1 << i, self.all_mask, self.stats
        cs, times = lay.chan_sel, plan.times
        if bit == full and not pending:  # one stream: each frame opens and completes a slot
            st.published += m
            st.early += m
            self._last_key = keys[-1]  # newer than any published (plan_run)
            trusted = Snapshot.trusted
            return [(k, [trusted(keys[k], times[k], nows[k], bv[k], bf[k], nows[k])])
                    for k in range(m)]
        out: list[tuple[int, list[Snapshot]]] = []
        for k in range(m):
            key, now = keys[k], nows[k]
            slot = pending.get(key)
            if slot is None:
                slot = pending[key] = _Slot(key, times[k], now, bv[k], bf[k], bit)
            else:
                slot.values[cs] = v[k]
                slot.flags[cs] = 0 if finite else f[k]
                slot.got |= bit
            if slot.got == full:
                out.append((k, self._publish_through(key, now, early=True)))
            elif len(pending) > self.max_pending:
                out.append((k, self._publish_through(min(pending), now, early=False)))
        return out

    def _blank_rows(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh (values, flags) blocks of ``m`` empty slots (NaN, MISSING): one copy
        each of a block kept for the purpose, not a copy per slot."""
        if self._blank is None or len(self._blank[0]) < m:
            size = max(m, 64)
            self._blank = (np.tile(self._template_vals, (size, 1)),
                           np.tile(self._template_flags, (size, 1)))
        vals, flags = self._blank
        return vals[:m].copy(), flags[:m].copy()

    def _on_jump(self, i: int, fr: _Frame) -> list[Snapshot]:
        """A key beyond the stream's window: hold it, or confirm the held one."""
        src = self._src[i]
        h = src.held
        if h is not None and h.shift is None and 0 < fr.key - h.key <= self.jump:
            src.held = None
            assert src.last_key is not None
            back = h.key < src.last_key
            kind = "restart" if back else "jump"
            detail = {"from_key": src.last_key, "to_key": h.key,
                      "seq": h.seq, "ts": h.ts}
            if back:
                self.stats.restarts += 1
                delta = self._restart_delta(h.key, h.now, src)
                src.offset += delta
                h.key += delta
                fr.key += delta
                detail["rebased_key"] = h.key
            else:
                self.stats.jumps += 1
            self.events.append(AlignEvent(kind, self.streams[i].name, fr.now, detail))
            src.last_key = None  # the held frame starts the stream anew
            src.last_seq = None
            out = self._place(i, h)
            return out + self._place(i, fr)
        if h is not None and h.shift is None and fr.key == h.key:
            return self._drop(i, Verdict.DUPLICATE)
        out = self._refute(i, fr.now)
        src.held = fr
        self.last_verdict = Verdict.HELD
        return out

    def _on_disagreement(self, i: int, fr: _Frame) -> list[Snapshot]:
        """The timestamp disagrees with a continuous sequence number: a clock step when
        the next frame disagrees the same way, else a stray timestamp."""
        src = self._src[i]
        h = src.held
        assert fr.shift is not None
        if h is not None and h.shift is not None and abs(fr.shift - h.shift) <= 1 \
                and 0 < fr.key - h.key <= self.jump:
            src.held = None
            self.stats.clock_steps += 1
            self.events.append(AlignEvent("clock_step", self.streams[i].name, fr.now, {
                "step_s": h.shift / self.rate, "seq": h.seq, "ts": h.ts}))
            # the stream stays on its sequence; its timestamps now sit shift slots off
            if src.phase is not None:
                src.phase += h.shift
                src.stepped += h.shift
            h.shift = fr.shift = None
            out = self._place(i, h)
            return out + self._place(i, fr)
        if h is not None and h.shift is not None:
            # two disagreements that disagree with each other: the sequence does not step
            # as learned; both go by their timestamps and the step is learned anew
            src.held = None
            src.scale = None
            h.key += h.shift
            fr.key += fr.shift
            h.shift = fr.shift = None
            out = self._place(i, h)
            return out + self._place(i, fr)
        out = self._refute(i, fr.now)
        src.held = fr
        self.last_verdict = Verdict.HELD
        return out

    def _restart_delta(self, key: int, now: float, src: _Source) -> int:
        """How far to shift a restarted stream's keys: to the slot of ``now`` by the
        stream's old run (the time it was silent counts), or as another stream that
        restarted just before (same sender)."""
        rb = self._rebase
        if rb is not None and now - rb[2] <= RESTART_JOIN_S and abs(key - rb[0]) <= \
                self.reorder:
            return rb[1]
        # by time, not "after everything": the other streams' frames of this instant (a
        # PMU that did not restart) are in that slot; if it was published meanwhile, the
        # held frame goes out late (stored) and the stream is aligned from the next one
        target = key
        if src.last_key is not None:
            target = src.last_key + max(1, round((now - src.last_now) * self.rate))
        elif self._last_key is not None:
            target = self._last_key + 1
        delta = target - key
        self._rebase = (key, delta, now)
        return delta

    def _refute(self, i: int, now: float) -> list[Snapshot]:
        """The stream's held frame was not confirmed: refuse it (counted, an event)."""
        src = self._src[i]
        h = src.held
        if h is None:
            return []
        src.held = None
        ahead = h.key > (src.last_key if src.last_key is not None else h.key) or \
            (h.shift is not None and h.shift > 0)
        reason = Verdict.FUTURE if ahead else Verdict.OUTLIER
        verdict = self.last_verdict
        self._refuse(i, reason, now, {"ts": h.ts, "seq": h.seq, "key": h.key,
                                      "newest_key": src.last_key})
        self.last_verdict = verdict
        return []

    def _refuse(self, i: int, reason: Verdict, now: float,
                detail: dict[str, Any]) -> list[Snapshot]:
        self._drop(i, reason)
        src = self._src[i]
        n = src.refusals[reason] = src.refusals.get(reason, 0) + 1
        if n <= EVENT_CAP or n % EVENT_EVERY == 0:
            self.events.append(AlignEvent(f"{reason}_frame", self.streams[i].name, now,
                                          {**detail, "count": n}))
        return []

    def _drop(self, i: int, reason: Verdict) -> list[Snapshot]:
        st = self.stats
        st.dropped[reason] += 1
        st.dropped_by_stream[self.streams[i].name][reason] += 1
        if reason is Verdict.DUPLICATE:
            st.duplicate_frames += 1
        self.last_verdict = reason
        return []

    def _track(self, i: int, fr: _Frame) -> None:
        """The stream accepted ``fr``: newest key, sequence tie, grid phase."""
        src = self._src[i]
        if src.last_key is None or fr.key > src.last_key:
            if src.scale is None and fr.x is not None and src.last_x is not None and \
                    fr.seq is not None and src.last_seq is not None:
                self._learn_scale(src, fr.x - src.last_x, seq_diff(fr.seq, src.last_seq))
            src.last_key = fr.key
            src.last_seq = fr.seq
            src.last_now = fr.now
            src.last_x = fr.x
        if fr.x is not None:
            ph = src.phase
            if ph is None:
                src.phase = fr.x - (fr.key - src.offset)
            else:
                res = fr.x - (fr.key - src.offset) - ph
                src.phase = ph + PHASE_GAIN * max(-self.jitter, min(self.jitter, res))

    @staticmethod
    def _learn_scale(src: _Source, dx: float, dseq: int) -> None:
        """Slots per sequence step from two frames a few steps apart, when their time
        difference is clearly a whole number of slots (jitter makes some pairs unclear:
        the next clear pair decides)."""
        if 1 <= dseq <= 4:
            r = dx / dseq
            if r >= 0.75 and abs(r - round(r)) <= 0.25:
                src.scale = round(r)

    def _place(self, i: int, fr: _Frame) -> list[Snapshot]:
        """Put an accepted frame into its slot (or out as late)."""
        self._track(i, fr)
        key = fr.key
        lay = self.streams[i]
        v = fr.values[lay.point_sel]
        if not lay.unit:
            v = v * lay.scale
        src = self._src[i]
        # the slot's instant on the stream's grid, continuous across restarts and clock
        # steps (keys are re-based, steps taken out); arrival time before any timestamp
        src_time = fr.now if src.phase is None else \
            (key + src.phase - src.stepped) / self.rate
        if self._last_key is not None and key <= self._last_key:
            st = self.stats
            st.late_frames += 1
            st.late_by_stream[lay.name] += 1
            self.late.append(LateFrame(lay.name, i, key, fr.seq, fr.ts, fr.now,
                                       src_time,
                                       lay.channels, np.array(v, np.float64)))
            self.last_verdict = Verdict.LATE
            return []
        slot = self._pending.get(key)
        if slot is None:
            slot = _Slot(key, src_time, fr.now, self._template_vals.copy(),
                         self._template_flags.copy())
            self._pending[key] = slot
        bit = 1 << i
        if slot.got & bit:
            return self._drop(i, Verdict.DUPLICATE)
        slot.got |= bit
        cs = lay.chan_sel
        slot.values[cs] = v
        # one reduction: NaN or inf anywhere makes it non-finite
        if math.isfinite(np.add.reduce(v)):
            slot.flags[cs] = 0
        else:
            slot.flags[cs] = np.where(np.isfinite(v), np.uint32(0), MISSING)
        if fr.flags is not None:
            slot.flags[cs] |= fr.flags[lay.point_sel].astype(np.uint32, copy=False)
        self.last_verdict = Verdict.PLACED
        if slot.got == self.all_mask:
            return self._publish_through(key, fr.now, early=True)
        if len(self._pending) > self.max_pending:
            return self._publish_through(min(self._pending), fr.now, early=False)
        return []

    def tick(self, now: float) -> list[Snapshot]:
        """Publish the slots whose lag window has expired at ``now``."""
        out: list[Snapshot] = []
        while self._pending:
            k = min(self._pending)
            if self._pending[k].first_arrival + self.lag > now:
                break
            out += self._publish_through(k, now, early=False)
        return out

    def next_deadline(self) -> float | None:
        """When the oldest pending slot's lag window expires (None when nothing pends)."""
        if not self._pending:
            return None
        return self._pending[min(self._pending)].first_arrival + self.lag

    def flush(self, now: float) -> list[Snapshot]:
        """Publish everything pending (shutdown); held frames are refused."""
        for i in range(len(self.streams)):
            self._refute(i, now)
        if not self._pending:
            return []
        return self._publish_through(max(self._pending), now, early=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        """Frames held until their stream's next frame decides (jumps)."""
        return sum(s.held is not None for s in self._src)

    # -- publishing ---------------------------------------------------------------------
    def _publish_through(self, key: int, now: float, *, early: bool) -> list[Snapshot]:
        pending = self._pending
        if len(pending) == 1 and key in pending:  # the usual case: no older slot pends
            out = [self._finish(pending.pop(key), now, early=early)]
        else:
            out = [self._finish(pending.pop(k), now, early=early and k == key)
                   for k in sorted(k for k in pending if k <= key)]
        self._last_key = key if self._last_key is None else max(self._last_key, key)
        return out

    def _finish(self, slot: _Slot, now: float, *, early: bool) -> Snapshot:
        st = self.stats
        st.published += 1
        if early:
            st.early += 1
        else:
            st.expired += 1
        if slot.got != self.all_mask:
            st.incomplete += 1
            for i, lay in enumerate(self.streams):
                if not slot.got & (1 << i) and now - self._last_seen[i] <= self.alive_s:
                    slot.flags[lay.channels] = MISSING_LATE
        # the slot's rows are float64 / uint32 copies of the templates: no checks needed
        return Snapshot.trusted(slot.key, slot.source_time, slot.first_arrival,
                                slot.values, slot.flags, now)
