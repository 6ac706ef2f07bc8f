"""Software RTDS: replays a scenario trace on the wire the way the RTDS and its GTNET card do.

Two layers, as in h11/aioquic:

* :class:`Emulator` (sans-IO): for step ``k`` it builds every enabled stream's frame with
  the gateway's codec declarations (GTNET-SKT: :class:`~gateway.codecs.gtnet_skt.GtnetSktCodec`;
  C37.118: :mod:`hil.c37server`), runs it through the seeded :class:`~hil.faults.FaultInjector`
  and returns what to put on the wire. It also owns the closed loop
  (:class:`~hil.closedloop.ClosedLoop`): commands change the truth of the steps built after.
* :class:`EmulatorRunner` (I/O): one thread, one ``selectors`` loop. It binds the sockets
  (UDP senders, TCP servers for ``tcp://`` GTNET-SKT and C37.118 streams, the UDP command
  port), paces the steps on an absolute schedule ``t0 + k / (rate * speed)`` (select/sleep
  until a spin margin before the slot, then spin on ``perf_counter``), sends, and records
  the send-time error of every step. The margin adapts (:class:`SpinMargin`) to the
  measured wake-up overshoot of ``time.sleep``, between ``SPIN_FLOOR_S`` and ``SPIN_S``.

Steps, rows and sequence numbers: step ``k`` (starting at ``start_step``) replays trace row
``k % T`` (``loop``) or ``k`` (no loop: the run ends at the trace's end); the GTNET-SKT
header's sequence number is ``k``; the frame timestamp is the trace time of the row
(``timestamps="trace"``; shifted by whole trace lengths when looping) or the wall-clock
time of the step's slot (``timestamps="wall"``).

Values: channel point ``p`` carries ``measured[row, p.channel] / p.scale`` (NaN stays NaN
for float32 points; an int32 channel point with a missing value carries -2**31). Status
points (no channel) carry 0, except points named ``seq``, ``step`` or ending ``_seq``/
``_counter``, which carry the step number (mod 2**31), and switch status points whose
name has a column ``status__<name>`` in the trace's extras (a reconfiguring scenario,
:mod:`hil.reconfigure`): 1 closed, 0 open, the int32 missing marker where the status is
withheld (NaN in the column).

Lab behaviours (:class:`~hil.faults.CaseClock`, GTNET-SKT streams only): with
``disturbances`` (restart, recompile, card reboot, stop/start, lost GTSYNC, clock step,
stray future timestamp) or a timestamp ``phase``/``jitter``, a GTNET-SKT frame's sequence
number, trace row and timestamp come from the case clock instead of the step; silent
steps send nothing; :attr:`Emulator.disturbances` records what was played.

The emulator steps at ``rate_hz`` (``--rate``; default the config's fastest stream). The
fastest stream is sent every step; a stream with a lower ``rate_hz`` every
``round(fastest / rate_hz)``-th step, so ``--rate`` scales all streams together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import heapq
import itertools
import math
import os
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gateway.codecs import c37118 as c37
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import Stream, TwinConfig
from hil.c37server import C37Stream, PmuSession
from hil.closedloop import ClosedLoop, CommandError, CommandRecord, StepState
from hil.errors import HilError
from hil.faults import (
    CaseClock,
    Disturbance,
    DisturbanceRecord,
    Emission,
    FaultInjector,
    FaultPlan,
    FaultRecord,
)
from hil.trace import STATUS_PREFIX

PACING_WINDOW = 1_000_000  # steps of pacing error kept for the summary's percentiles
SPIN_S = 0.0005  # the most the pacer spins before a slot (and where the margin starts)
#: the spin never takes more than this fraction of a period (see :func:`spin_ceiling`)
SPIN_PERIOD_FRACTION = 0.1
SPIN_FLOOR_S = 30e-6  # the least it spins, however punctual time.sleep has been
SPIN_SAFETY_S = 20e-6  # added to the overshoot quantile
SPIN_QUANTILE = 0.99  # quantile of the recent wake-up overshoots the spin covers
SPIN_WINDOW = 512  # sleeps whose overshoot is kept (~0.5 s at 1 kHz)
SPIN_UPDATE_EVERY = 64  # new samples between two recomputations of the margin
SELECT_MARGIN_S = 0.002  # stop select()ing (ms granularity) this long before a slot
INT32_MISSING = -(2**31)
FOREIGN_ADDR = "127.0.0.2"
REALTIME_PRIORITY = 10  # SCHED_FIFO priority with realtime=True
_SEQ_NAMES = ("seq", "step")
_MAX_TCP_BACKLOG = 4 << 20  # bytes queued for a slow TCP client before it is dropped
_GROUND_TRUTH_KEEP = 100_000  # closed-loop steps whose re-solved truth is kept
_SENT_KEEP = 100_000  # steps whose send time is kept (command round trips)


class EmulatorError(HilError):
    """The emulator cannot run with this config, trace or options."""


class TraceLike(Protocol):
    """What the emulator reads from a trace (``hil.trace.Trace`` satisfies it)."""

    time: np.ndarray
    measured: np.ndarray
    truth: np.ndarray
    v: np.ndarray
    s_inj: np.ndarray
    pv_mw: np.ndarray


@dataclass
class StreamPlan:
    """How one enabled config stream is built and sent."""

    stream: Stream
    index: int
    every: int
    skt: GtnetSktCodec | None = None
    c37: C37Stream | None = None
    chan_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    chan_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    chan_scale: np.ndarray = field(default_factory=lambda: np.zeros(0))
    int_chan: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    seq_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    #: switch status points the trace has a column for (``extras["status__<name>"]``)
    status_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    status_cols: list[np.ndarray] = field(default_factory=list)
    n_points: int = 0

    @property
    def name(self) -> str:
        return self.stream.name

    @property
    def fmt(self) -> str:
        return self.stream.format

    @property
    def transport(self) -> str:
        return self.stream.scheme


@dataclass
class Outgoing:
    """One emission of one stream at one step."""

    plan: StreamPlan
    step: int
    emission: Emission


class Emulator:
    """Sans-IO core: frames per step, faults, closed loop. See the module docstring."""

    def __init__(self, cfg: TwinConfig, trace: TraceLike, *, rate_hz: float | None = None,
                 faults: FaultPlan | None = None, start_step: int = 0, loop: bool = False,
                 timestamps: str = "trace", closed_loop: bool | None = None,
                 disturbances: tuple[Disturbance, ...] = (), phase: float = 0.0,
                 jitter: float = 0.0) -> None:
        self.cfg = cfg
        self.trace = trace
        self.n_rows = int(np.asarray(trace.time).shape[0])
        m = len(cfg.channels)
        if np.asarray(trace.measured).shape[1:] != (m,):
            raise EmulatorError(
                f"trace has {np.asarray(trace.measured).shape[1:]} channels, config "
                f"{cfg.name} has {m}: make the trace with this config (gridtwin scenario make)")
        if self.n_rows == 0:
            raise EmulatorError("the trace has no steps")
        names = getattr(trace, "channel_names", None)
        if names is not None and list(names) != [c.name for c in cfg.channels]:
            raise EmulatorError("the trace's channel names differ from the config's channels")
        if not 0 <= start_step < self.n_rows:
            raise EmulatorError(f"start step {start_step} outside the trace (0..{self.n_rows - 1})")
        if timestamps not in ("trace", "wall"):
            raise EmulatorError(f"timestamps {timestamps!r}: use 'trace' or 'wall'")
        self.rate_hz = float(rate_hz or cfg.rate_hz)
        if not 0 < self.rate_hz <= 10_000:
            raise EmulatorError(f"rate {self.rate_hz} Hz: use 0 < rate <= 10000")
        self.start_step = start_step
        self.loop = loop
        self.timestamps = timestamps
        self.injector = FaultInjector(faults or FaultPlan())
        self.plans = [self._plan(s, i) for i, s in enumerate(cfg.enabled_streams)]
        if not self.plans:
            raise EmulatorError(f"config {cfg.name} has no enabled stream")
        use_loop = cfg.commands.enabled if closed_loop is None else closed_loop
        self.closed_loop = ClosedLoop(cfg, trace) if use_loop else None
        self.next_step = start_step
        self.ground_truth: OrderedDict[int, StepState] = OrderedDict()
        step_s = float(trace.time[1] - trace.time[0]) if self.n_rows > 1 else 1.0
        self._span = step_s * self.n_rows
        self.case: CaseClock | None = None
        if disturbances or phase or jitter:
            self.case = CaseClock(self.rate_hz, disturbances, phase=phase, jitter=jitter,
                                  seed=(faults or FaultPlan()).seed, start_step=start_step)
        self.silent_steps = 0

    # -- setup --------------------------------------------------------------------------
    def _plan(self, s: Stream, i: int) -> StreamPlan:
        # the config's rate ratios are kept: the fastest stream goes every step
        every = max(1, round(self.cfg.rate_hz / s.rate_hz)) if s.rate_hz > 0 else 1
        if s.scheme not in ("udp", "tcp"):
            raise EmulatorError(f"stream {s.name}: the emulator sends over udp:// or tcp://, "
                                f"not {s.scheme}://")
        plan = StreamPlan(s, i, every)
        if s.format == "c37.118":
            plan.c37 = C37Stream(s, self.rate_hz / every)
            return plan
        plan.skt = GtnetSktCodec([p.type for p in s.points], header=s.header)
        pos = [j for j, p in enumerate(s.points) if p.channel is not None]
        plan.chan_pos = np.array(pos, np.intp)
        plan.chan_idx = np.array([s.points[j].channel for j in pos], np.intp)
        plan.chan_scale = np.array([s.points[j].scale for j in pos], float)
        plan.int_chan = np.array([s.points[j].type == "int32" for j in pos], bool)
        plan.seq_pos = np.array(
            [j for j, p in enumerate(s.points) if p.channel is None and _is_seq(p.name)],
            np.intp)
        extras = getattr(self.trace, "extras", None) or {}
        status = [(j, extras[STATUS_PREFIX + p.name]) for j, p in enumerate(s.points)
                  if p.channel is None and STATUS_PREFIX + p.name in extras]
        plan.status_pos = np.array([j for j, _ in status], np.intp)
        plan.status_cols = [np.asarray(col, float) for _, col in status]
        plan.n_points = len(s.points)
        return plan

    # -- rows and values ----------------------------------------------------------------
    def end_step(self) -> int | None:
        """One past the last step (None when looping)."""
        return None if self.loop else self.n_rows

    def row(self, step: int) -> int:
        if step < 0 or (not self.loop and step >= self.n_rows):
            raise EmulatorError(f"step {step} is outside the trace (0..{self.n_rows - 1})")
        return step % self.n_rows

    def trace_time(self, step: int) -> float:
        return float(self.trace.time[step % self.n_rows]) + (step // self.n_rows) * self._span

    def measured(self, step: int) -> np.ndarray:
        """The channel values sent at ``step`` (closed loop applied)."""
        row = self.row(step)
        if self.closed_loop is not None:
            st = self.closed_loop.state(row)
            if st is not None:
                self._keep(step, st)
                return st.measured
        return np.asarray(self.trace.measured[row], float)

    def _keep(self, step: int, st: StepState) -> None:
        _put_bounded(self.ground_truth, step, st, _GROUND_TRUTH_KEEP)

    def truth(self, step: int) -> np.ndarray:
        """Ground-truth channel values of a step already built (the re-solved truth where a
        command changed it, else the trace's)."""
        st = self.ground_truth.get(step)
        return st.truth if st is not None else np.asarray(self.trace.truth[self.row(step)])

    def pv_mw(self, step: int) -> np.ndarray:
        st = self.ground_truth.get(step)
        return st.pv_mw if st is not None else np.asarray(self.trace.pv_mw[self.row(step)])

    def v(self, step: int) -> np.ndarray:
        st = self.ground_truth.get(step)
        return st.v if st is not None else np.asarray(self.trace.v[self.row(step)])

    def statuses(self, step: int) -> dict[str, float]:
        """The switch statuses of ``step`` (the trace's ``status__<switch>`` columns)."""
        extras = getattr(self.trace, "extras", None) or {}
        row = step % self.n_rows
        return {k[len(STATUS_PREFIX):]: float(v[row]) for k, v in extras.items()
                if k.startswith(STATUS_PREFIX)}

    def skt_values(self, plan: StreamPlan, step: int, measured: np.ndarray) -> np.ndarray:
        vals = np.zeros(plan.n_points)
        # wire value = engineering value / scale
        x = measured[plan.chan_idx] / plan.chan_scale
        if plan.int_chan.any():
            x = np.where(plan.int_chan & ~np.isfinite(x), INT32_MISSING, x)
        vals[plan.chan_pos] = x
        vals[plan.seq_pos] = step % (2**31)
        if plan.status_cols:
            row = step % self.n_rows
            st = np.array([col[row] for col in plan.status_cols])
            vals[plan.status_pos] = np.where(np.isfinite(st), st, INT32_MISSING)
        return vals

    # -- frames -------------------------------------------------------------------------
    def clean_frame(self, plan: StreamPlan, step: int, *, measured: np.ndarray | None = None,
                    ts: float | None = None) -> bytes:
        """The frame of ``plan`` at ``step`` before faults."""
        meas = self.measured(step) if measured is None else measured
        t = self.trace_time(step) if ts is None else ts
        if plan.c37 is not None:
            return plan.c37.data_frame(meas, t, self.statuses(step) if plan.stream.digitals
                                       else None)
        assert plan.skt is not None
        return plan.skt.build(self.skt_values(plan, step, meas), seq=step, ts=t)

    def frames(self, step: int, *, wall_ts: float | None = None) -> list[Outgoing]:
        """Everything to send at ``step`` (faults applied), in send order; advances
        :attr:`next_step` so later commands apply after it."""
        ts = wall_ts if (self.timestamps == "wall" and wall_ts is not None) \
            else self.trace_time(step)
        if self.case is not None:
            return self._case_frames(step, ts, wall=self.timestamps == "wall"
                                     and wall_ts is not None)
        meas = self.measured(step)
        out: list[Outgoing] = []
        for plan in self.plans:
            if (step - self.start_step) % plan.every:
                continue
            frame = self.clean_frame(plan, step, measured=meas, ts=ts)
            for em in self.injector.apply(step, plan.name, step, frame, fmt=plan.fmt,
                                          transport=plan.transport):
                out.append(Outgoing(plan, step, em))
        self.next_step = step + 1
        return out

    def _case_frames(self, step: int, ts: float, *, wall: bool) -> list[Outgoing]:
        """:meth:`frames` with the case clock: GTNET-SKT frames carry its sequence
        number, trace row and timestamp (C37.118 streams are sent as without it)."""
        assert self.case is not None
        stamp = self.case.at(step, ts)
        self.next_step = step + 1
        out: list[Outgoing] = []
        if not stamp.send:
            self.silent_steps += 1
        meas = self.measured(stamp.row_step) if stamp.send else None
        for plan in self.plans:
            if (step - self.start_step) % plan.every:
                continue
            if plan.skt is None:
                frame = self.clean_frame(plan, step, ts=ts)
                seq, delay = step, 0.0
            elif meas is None:
                continue
            else:
                t = ts - (step - stamp.time_step) / self.rate_hz if wall else \
                    self.trace_time(stamp.time_step)
                wire_ts = 0.0 if stamp.ts_offset is None else t + stamp.ts_offset
                frame = plan.skt.build(self.skt_values(plan, stamp.row_step, meas),
                                       seq=stamp.seq, ts=wire_ts)
                seq, delay = stamp.seq, 0.0 if plan.stream.header else stamp.delay_s
            for em in self.injector.apply(step, plan.name, seq, frame, fmt=plan.fmt,
                                          transport=plan.transport):
                em.delay_s += delay
                out.append(Outgoing(plan, step, em))
        return out

    @property
    def disturbances(self) -> list[DisturbanceRecord]:
        """The disturbances played so far (step, kind, argument, nominal time)."""
        return [] if self.case is None else list(self.case.log)

    def flush(self) -> list[Outgoing]:
        """Frames the fault injector still holds back (reordering) at the end of a run."""
        by_name = {p.name: p for p in self.plans}
        return [Outgoing(by_name[name], em.seq, em) for name, em in self.injector.flush()]

    def command(self, data: bytes, *, now: float, sent_at: dict[int, float] | None = None,
                source: str = "") -> CommandRecord:
        """Apply a command frame from :attr:`next_step` on (closed loop)."""
        if self.closed_loop is None:
            raise EmulatorError("commands are not enabled ([commands] enabled = true)")
        return self.closed_loop.receive(data, next_step=self.next_step, now=now,
                                        sent_at=sent_at, source=source)

    @property
    def fault_log(self) -> list[FaultRecord]:
        return self.injector.log


def retarget(cfg: TwinConfig, urls: dict[str, str], *, enable: tuple[str, ...] = (),
             disable: tuple[str, ...] = (), commands_url: str | None = None) -> TwinConfig:
    """A copy of ``cfg`` with stream URLs replaced (name -> url), streams enabled or
    disabled, and optionally the command URL set (and commands enabled)."""
    streams = []
    for s in cfg.streams:
        s2 = dataclasses.replace(s, url=urls.get(s.name, s.url))
        if s.name in enable:
            s2 = dataclasses.replace(s2, enabled=True)
        if s.name in disable:
            s2 = dataclasses.replace(s2, enabled=False)
        streams.append(s2)
    out = dataclasses.replace(cfg, streams=streams)
    if commands_url is not None:
        out.commands = dataclasses.replace(cfg.commands, enabled=True, url=commands_url)
    return out


def _put_bounded(d: OrderedDict[int, Any], key: int, value: Any, keep: int) -> None:
    """``d[key] = value``, dropping the oldest key once ``d`` holds more than ``keep``."""
    d[key] = value
    if len(d) > keep:
        d.popitem(last=False)


def _is_seq(name: str) -> bool:
    n = name.lower()
    return n in _SEQ_NAMES or n.endswith(("_seq", "_counter"))


# ====================================================================================
# I/O runner


@dataclass
class _Client:
    sock: socket.socket
    addr: tuple[str, int]
    session: PmuSession | None = None
    out: bytearray = field(default_factory=bytearray)


@dataclass
class StreamStats:
    frames: int = 0  # data frames written (duplicates and malformed included)
    bytes: int = 0
    foreign: int = 0  # extra datagrams sent from the foreign address
    skipped: int = 0  # emissions with no receiver (TCP: no client / not started)
    send_errors: int = 0
    control: int = 0  # C37.118 config/header frames sent
    clients: int = 0  # TCP connections accepted


@dataclass
class Summary:
    """What a run did: per stream counts, faults, pacing error, commands."""

    steps: int
    first_step: int
    duration_s: float
    rate_hz: float
    speed: float | None
    streams: dict[str, StreamStats]
    faults: dict[str, int]
    fault_log: list[FaultRecord]
    pacing_us: dict[str, float]
    commands: list[CommandRecord]
    command_errors: int = 0
    realtime: bool = False
    spin_us: float | None = None  # the pacer's spin margin at the end (None: --fast)
    disturbances: list[DisturbanceRecord] = field(default_factory=list)
    silent_steps: int = 0  # steps the case clock kept silent (stops, reboots)

    def as_dict(self, *, with_log: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "steps": self.steps, "first_step": self.first_step,
            "duration_s": round(self.duration_s, 6), "rate_hz": self.rate_hz,
            "speed": self.speed,
            "streams": {k: vars(v) for k, v in self.streams.items()},
            "frames_sent": sum(s.frames for s in self.streams.values()),
            "faults": self.faults, "pacing_us": self.pacing_us,
            "commands": [c.as_dict() for c in self.commands],
            "command_errors": self.command_errors, "realtime": self.realtime,
            "spin_us": self.spin_us,
            "disturbances": [r.as_dict() for r in self.disturbances],
            "silent_steps": self.silent_steps,
        }
        rtts = [c.rtt_ms for c in self.commands if c.rtt_ms is not None]
        d["command_rtt_ms"] = ({"count": len(rtts), "p50": float(np.median(rtts)),
                                "max": float(np.max(rtts))} if rtts else None)
        if with_log:
            d["fault_log"] = [vars(r) for r in self.fault_log]
        return d


class SpinMargin:
    """Adaptive sleep-then-spin margin: how long before a slot the pacer stops sleeping.

    ``time.sleep`` wakes late by the timer slack plus the scheduler's wake-up latency
    (~15 µs typical under SCHED_FIFO on the 2-core dev VM, 100 µs and more when it is
    busy); spinning on ``perf_counter`` through the last part of the wait hides that
    lateness, but every µs of spin is CPU the twin's processes on the same cores could
    use. So the margin is what this machine needs now: the ``quantile`` of the last
    ``window`` wake-up overshoots (actual wake time - requested wake time) plus
    ``safety_s``, clamped to
    ``[floor_s, ceiling_s]``. It starts at the ceiling and is recomputed, up or down,
    every ``update_every`` samples. A quantile rather than the max, so that one
    preemption (which no affordable spin would cover) does not pin it at the ceiling.
    ``adaptive=False`` keeps it at the ceiling (a fixed spin).

    Pure: samples in through :meth:`record`, no clock and no sleeping. The recomputation
    (a partial sort of ``window`` floats) runs in :meth:`margin`, which the pacer calls at
    the start of a wait, not between the wake-up and the slot.
    """

    def __init__(self, ceiling_s: float = SPIN_S, *, floor_s: float = SPIN_FLOOR_S,
                 safety_s: float = SPIN_SAFETY_S, quantile: float = SPIN_QUANTILE,
                 window: int = SPIN_WINDOW, update_every: int = SPIN_UPDATE_EVERY,
                 adaptive: bool = True) -> None:
        if ceiling_s < 0 or floor_s < 0 or safety_s < 0:
            raise EmulatorError("spin margins must be >= 0")
        if not 0 < quantile <= 1 or window < 1 or not 1 <= update_every <= window:
            raise EmulatorError("spin estimator: need 0 < quantile <= 1 and "
                                "1 <= update_every <= window")
        self.ceiling_s = ceiling_s
        self.floor_s = min(floor_s, ceiling_s)
        self.safety_s = safety_s
        self.quantile = quantile
        self.update_every = update_every
        self.adaptive = adaptive
        self._ring = np.zeros(window)
        self._count = 0  # samples recorded so far (the ring holds the last ``window``)
        self._fresh = 0  # samples since the last recomputation
        self._margin = ceiling_s

    def record(self, overshoot_s: float) -> None:
        """One sleep's wake-up overshoot (s; negative if it woke early)."""
        self._ring[self._count % self._ring.size] = overshoot_s
        self._count += 1
        self._fresh += 1

    def margin(self) -> float:
        """The spin margin (s) to use for the next wait."""
        if self.adaptive and self._fresh >= self.update_every:
            self._fresh = 0
            recent = self._ring[:min(self._count, self._ring.size)]
            # the "higher" empirical quantile: the k-th smallest, k = ceil(q (n - 1))
            k = math.ceil(self.quantile * (recent.size - 1))
            high = float(np.partition(recent, k)[k])
            self._margin = min(self.ceiling_s, max(self.floor_s, high + self.safety_s))
        return self._margin


def spin_ceiling(spin_s: float, period_s: float) -> float:
    """The most the pacer spins before a slot: ``spin_s``, at most
    :data:`SPIN_PERIOD_FRACTION` of the period.

    Why: an emulator on the twin's machine runs SCHED_FIFO beside the gateway, which
    preempts it after every send; the pacer then reached its wait already inside the
    margin, never slept, so the margin never learnt and stayed at the ceiling: at 1 kHz
    it spun up to half of every period. With the gateway and the predictor on the same
    CPU that took the CPU's real-time tasks past Linux's budget
    (``kernel.sched_rt_runtime_us``, 95 %), and the kernel stopped them all for ~50 ms
    about once a second (``sched: RT throttling activated``): the emulator's pacing p99
    was 50 ms and the twin missed its deadlines in bursts. Measured on
    ``gridtwin bench --only e2e`` (1 kHz, 20 s), together with the estimator's changes
    of the same day: misses 62-189 -> 18-33 (docs/measured.md)."""
    return min(spin_s, period_s * SPIN_PERIOD_FRACTION)


def pacing_stats(errors_s: np.ndarray) -> dict[str, float]:
    """Send-time error (µs) of the steps: p50, p99, max, mean."""
    if errors_s.size == 0:
        return {}
    us = errors_s * 1e6
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "max": float(us.max()), "mean": float(us.mean())}


class EmulatorRunner:
    """Sockets and pacing around an :class:`Emulator` (one thread).

    ``open()`` binds everything and returns the bound addresses (stream name -> (host,
    port) for TCP servers, ``"commands"`` for the command port), so a test using port 0
    can connect; ``run()`` paces the steps and returns a :class:`Summary`; ``stop()`` may
    be called from another thread. ``wait_clients_s`` > 0: before the first step, wait
    that long for a client on every TCP stream (a C37.118 client must also have sent
    CMD_START). ``spin_s`` is the most the pacer spins before a slot; with
    ``adaptive_spin`` (default) it spins only as long as the measured wake-up overshoot
    of ``time.sleep`` needs (:class:`SpinMargin`), without it always ``spin_s``.
    """

    def __init__(self, emulator: Emulator, *, speed: float = 1.0, fast: bool = False,
                 steps: int | None = None, seconds: float | None = None,
                 wait_clients_s: float = 0.0, progress: Callable[[str], None] | None = None,
                 progress_every_s: float = 1.0, foreign_addr: str = FOREIGN_ADDR,
                 spin_s: float = SPIN_S, adaptive_spin: bool = True,
                 realtime: bool = False) -> None:
        if speed <= 0:
            raise EmulatorError(f"speed {speed}: must be > 0")
        self.em = emulator
        self.speed = speed
        self.fast = fast
        self.period = 1.0 / (emulator.rate_hz * speed)
        first = emulator.start_step
        end = emulator.end_step()
        n = steps if steps is not None else (
            round(seconds * emulator.rate_hz) if seconds is not None else None)
        if n is None:
            if end is None:
                raise EmulatorError("looping needs --steps or --seconds")
            n = end - first
        if end is not None:
            n = min(n, end - first)
        if n <= 0:
            raise EmulatorError("nothing to send: no steps left in the trace")
        self.n_steps = n
        self.wait_clients_s = wait_clients_s
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.foreign_addr = foreign_addr
        self.spin = SpinMargin(spin_ceiling(spin_s, self.period), adaptive=adaptive_spin)
        self.realtime = realtime
        self.realtime_active = False
        self.sel = selectors.DefaultSelector()
        self.stats = {p.name: StreamStats() for p in emulator.plans}
        self.addresses: dict[str, tuple[str, int]] = {}
        self.sent_at: OrderedDict[int, float] = OrderedDict()
        self._stop = threading.Event()
        self._opened = False
        self._udp: dict[str, socket.socket] = {}
        self._listen: dict[str, socket.socket] = {}
        self._clients: dict[str, list[_Client]] = {p.name: [] for p in emulator.plans}
        self._udp_session: dict[str, PmuSession] = {}
        self._udp_peers: dict[str, set[tuple[str, int]]] = {}
        self._foreign: socket.socket | None = None
        self._cmd: socket.socket | None = None
        # pacing errors of the last PACING_WINDOW steps (a ring: a service runs for ever)
        self.errors = np.zeros(min(n, PACING_WINDOW))
        self.command_errors = 0
        self._plans = {p.name: p for p in emulator.plans}

    # -- sockets ----------------------------------------------------------------------
    def open(self) -> dict[str, tuple[str, int]]:
        """Bind all sockets; returns the bound addresses."""
        if self._opened:
            return self.addresses
        self._opened = True
        try:
            for plan in self.em.plans:
                s = plan.stream
                if plan.transport == "tcp":
                    ls = socket.create_server((s.host, s.port), reuse_port=False)
                    ls.setblocking(False)
                    self._listen[plan.name] = ls
                    self.addresses[plan.name] = ls.getsockname()[:2]
                    self.sel.register(ls, selectors.EVENT_READ, ("accept", plan.name))
                else:
                    fam = _family(s.host)
                    us = socket.socket(fam, socket.SOCK_DGRAM)
                    us.bind(("", 0))
                    us.setblocking(False)
                    self._udp[plan.name] = us
                    self.addresses[plan.name] = us.getsockname()[:2]
                    if plan.c37 is not None:
                        self._udp_session[plan.name] = PmuSession(plan.c37, streaming=True,
                                                                  tcp=False)
                        self._udp_peers[plan.name] = set()
                        self.sel.register(us, selectors.EVENT_READ, ("c37udp", plan.name))
            faults = self.em.injector.plan
            if faults.foreign_pct > 0 and any(p.transport == "udp" for p in self.em.plans):
                fs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    fs.bind((self.foreign_addr, 0))
                except OSError as exc:
                    fs.close()
                    raise EmulatorError(
                        f"cannot bind the foreign source {self.foreign_addr}: {exc} "
                        "(Linux routes all of 127/8 to lo; elsewhere add the alias)") from exc
                fs.setblocking(False)
                self._foreign = fs
            if self.em.closed_loop is not None:
                url = self.em.cfg.commands.url
                from urllib.parse import urlsplit

                u = urlsplit(url)
                if u.scheme != "udp":
                    raise EmulatorError(f"commands.url {url!r}: the emulator listens for "
                                        "commands over udp://HOST:PORT")
                host = u.hostname or "127.0.0.1"
                cs_ = socket.socket(_family(host), socket.SOCK_DGRAM)
                cs_.bind((host, u.port or 0))
                cs_.setblocking(False)
                self._cmd = cs_
                self.addresses["commands"] = cs_.getsockname()[:2]
                self.sel.register(cs_, selectors.EVENT_READ, ("cmd", ""))
        except OSError as exc:
            self.close()
            raise EmulatorError(f"cannot open the emulator's sockets: {exc}") from exc
        return self.addresses

    def close(self) -> None:
        for lst in self._clients.values():
            for c in lst:
                self._drop(c, lst)
        socks = [*self._udp.values(), *self._listen.values(), self._foreign, self._cmd]
        for s in socks:
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            s.close()
        self._udp.clear()
        self._listen.clear()
        self._foreign = self._cmd = None
        self.sel.close()

    def stop(self) -> None:
        self._stop.set()

    # -- event handling -----------------------------------------------------------------
    def _service(self, timeout: float | None) -> None:
        for key, mask in self.sel.select(timeout):
            kind, name = key.data
            if kind == "accept":
                self._accept(name)
            elif kind == "client":
                client = self._find_client(name, key.fileobj)
                if client is None:
                    continue
                if mask & selectors.EVENT_READ:
                    self._client_read(name, client)
                if mask & selectors.EVENT_WRITE and client in self._clients[name]:
                    self._flush_client(name, client)
            elif kind == "c37udp":
                self._c37_udp_read(name)
            elif kind == "cmd":
                self._cmd_read()

    def _find_client(self, name: str, sock: Any) -> _Client | None:
        for c in self._clients[name]:
            if c.sock is sock:
                return c
        return None

    def _accept(self, name: str) -> None:
        ls = self._listen[name]
        while True:
            try:
                sock, addr = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            plan = self._plans[name]
            session = PmuSession(plan.c37, streaming=False) if plan.c37 is not None else None
            self._clients[name].append(_Client(sock, addr[:2], session))
            self.stats[name].clients += 1
            self.sel.register(sock, selectors.EVENT_READ, ("client", name))

    def _drop(self, c: _Client, lst: list[_Client]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        with contextlib.suppress(OSError):
            c.sock.close()
        if c in lst:
            lst.remove(c)

    def _client_read(self, name: str, c: _Client) -> None:
        lst = self._clients[name]
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, lst)
            return
        if not data:
            self._drop(c, lst)
            return
        if c.session is not None:  # a C37.118 PDC's commands
            for frame in c.session.receive(data, time.time()):
                self.stats[name].control += 1
                self._write(name, c, frame)
        # bytes a GTNET-SKT TCP client sends are read and discarded

    def _write(self, name: str, c: _Client, data: bytes) -> None:
        if not c.out:
            try:
                n = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._drop(c, self._clients[name])
                return
            if n == len(data):
                return
            data = data[n:]
            self.sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                            ("client", name))
        c.out += data
        if len(c.out) > _MAX_TCP_BACKLOG:
            self._drop(c, self._clients[name])

    def _flush_client(self, name: str, c: _Client) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, self._clients[name])
            return
        del c.out[:n]
        if not c.out:
            self.sel.modify(c.sock, selectors.EVENT_READ, ("client", name))

    def _c37_udp_read(self, name: str) -> None:
        sock = self._udp[name]
        session = self._udp_session[name]
        while True:
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._udp_peers[name].add(addr[:2])
            for frame in session.receive(data, time.time()):
                self.stats[name].control += 1
                with contextlib.suppress(OSError):
                    sock.sendto(frame, addr)

    def _cmd_read(self) -> None:
        assert self._cmd is not None
        while True:
            try:
                data, addr = self._cmd.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            now = time.perf_counter()
            try:
                self.em.command(data, now=now, sent_at=self.sent_at,
                                source=f"{addr[0]}:{addr[1]}")
            except CommandError:
                self.command_errors += 1

    # -- sending ------------------------------------------------------------------------
    def _send(self, out: Outgoing) -> None:
        plan, em = out.plan, out.emission
        st = self.stats[plan.name]
        s = plan.stream
        if plan.transport == "udp":
            if plan.c37 is not None and not self._udp_session[plan.name].streaming:
                st.skipped += 1
                return
            sock = self._foreign if em.foreign else self._udp[plan.name]
            if sock is None:
                st.skipped += 1
                return
            try:
                sock.sendto(em.data, (s.host, s.port))
            except OSError:  # refused (ICMP), buffer full, no route: count, keep pacing
                st.send_errors += 1
                return
        else:
            targets = [c for c in self._clients[plan.name]
                       if c.session is None or c.session.streaming]
            if not targets:
                st.skipped += 1
                return
            for c in targets:
                self._write(plan.name, c, em.data)
        if em.foreign:
            st.foreign += 1
        else:
            st.frames += 1
            st.bytes += len(em.data)

    def _ready(self) -> bool:
        for plan in self.em.plans:
            if plan.transport != "tcp":
                continue
            cl = self._clients[plan.name]
            if not cl or (plan.c37 is not None and not any(
                    c.session is not None and c.session.streaming for c in cl)):
                return False
        return True

    def _start_udp_c37(self) -> None:
        now = time.time()
        for name in self._udp_session:
            plan = self._plans[name]
            assert plan.c37 is not None
            frame = plan.c37.config_frame(c37.FRAME_CFG2, now)
            with contextlib.suppress(OSError):
                self._udp[name].sendto(frame, (plan.stream.host, plan.stream.port))
                self.stats[name].control += 1

    # -- the loop -----------------------------------------------------------------------
    def _wait_until(self, target: float) -> None:
        """Serve sockets until ``target`` (perf_counter), then sleep and spin.

        epoll's timeout has millisecond granularity (Python rounds it up), so sockets are
        served by ``select`` only while more than ``SELECT_MARGIN_S`` is left; then one
        non-blocking poll, ``time.sleep`` (nanosleep, µs resolution) to the spin margin
        before the slot and a spin on ``perf_counter`` for the rest. The sleep's wake-up
        overshoot is fed back into the margin (:class:`SpinMargin`).
        """
        clock = time.perf_counter
        spin = self.spin.margin()
        while True:
            remaining = target - clock()
            if remaining <= SELECT_MARGIN_S + spin:
                break
            self._service(remaining - SELECT_MARGIN_S - spin)
        if target - clock() > spin:
            self._service(0)
        wake = target - spin
        remaining = wake - clock()
        if remaining > 0:
            time.sleep(remaining)
            self.spin.record(clock() - wake)
        while clock() < target:
            pass

    def run(self) -> Summary:
        """Send all steps; returns the summary (closes the sockets).

        The order matters for the twin's figures: wait for the clients (so no step is sent
        to nobody), pace the steps, send the delayed tail, then let TCP clients drain
        before the summary is taken.
        """
        self.open()
        restore = self._enter_realtime() if self.realtime and not self.fast else None
        # objects alive now (trace, config, imports) leave the collector's view, so a
        # full collection during the run scans only what the run allocates
        gc.collect()
        gc.freeze()
        try:
            self._wait_for_clients()
            self._start_udp_c37()
            t0, done, pending, tie = self._paced_steps()
            self._send_tail(pending, tie)
            self._drain_clients()
            return self._summary(done, time.perf_counter() - t0)
        finally:
            gc.unfreeze()
            if restore is not None:
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(0, restore[0], restore[1])
                    os.sched_setaffinity(0, restore[2])
            self.close()

    def _wait_for_clients(self) -> None:
        """With ``wait_clients_s`` > 0, serve the sockets until every TCP stream has a
        (started) client: a step sent before would be counted as skipped, not lost."""
        if self.wait_clients_s <= 0:
            return
        clock = time.perf_counter
        limit = clock() + self.wait_clients_s
        while not self._ready():
            left = limit - clock()
            if left <= 0 or self._stop.is_set():
                raise EmulatorError(
                    "no client connected to the TCP stream(s) within "
                    f"{self.wait_clients_s} s")
            self._service(min(left, 0.05))

    def _paced_steps(self) -> tuple[float, int, list[tuple[float, int, Outgoing]],
                                    itertools.count[int]]:
        """Send the steps on their slots; returns (clock origin, steps done, the delayed
        emissions still pending, their tie-breaker).

        The next step's frames are built right after a slot, while waiting for the next
        one, so building never delays a send; the first step's are built before the
        clock starts (a short lead), for the same reason.
        """
        em = self.em
        clock = time.perf_counter
        first = em.start_step
        lead = 0.005
        step_outs = em.frames(first, wall_ts=time.time() + lead)
        t0 = clock() + lead
        wall0 = time.time() + lead
        pending: list[tuple[float, int, Outgoing]] = []
        tie = itertools.count()
        last_progress = clock()
        done = 0
        for k in range(self.n_steps):
            if self._stop.is_set():
                break
            deadline = clock() if self.fast else t0 + k * self.period
            self._send_step(k, first + k, deadline, step_outs, pending, tie)
            done = k + 1
            if k + 1 < self.n_steps:
                step_outs = em.frames(first + k + 1, wall_ts=wall0 + (k + 1) * self.period)
            if self.progress is not None and clock() - last_progress >= \
                    self.progress_every_s:
                last_progress = clock()
                self.progress(self._progress_line(done))
        return t0, done, pending, tie

    def _send_step(self, k: int, step: int, deadline: float, step_outs: list[Outgoing],
                   pending: list[tuple[float, int, Outgoing]],
                   tie: itertools.count[int]) -> None:
        """One slot: delayed emissions due before it go first (a delayed frame overtaken
        by a later one is exactly the fault being emulated), then wait for the slot,
        record the pacing error and send (or queue, when delayed) this step's frames."""
        if self.fast:
            self._service(0)
        self._send_due(pending, deadline)
        if not self.fast:
            self._wait_until(deadline)
        self.errors[k % self.errors.size] = time.perf_counter() - deadline
        self._mark_sent(step, deadline)
        for out in step_outs:
            if out.emission.delay_s > 0:
                heapq.heappush(pending, (deadline + out.emission.delay_s, next(tie), out))
            else:
                self._send(out)

    def _send_due(self, pending: list[tuple[float, int, Outgoing]], until: float) -> None:
        """Send, each at its due time (paced runs), the queued emissions due by ``until``."""
        while pending and pending[0][0] <= until:
            due, _, item = heapq.heappop(pending)
            if not self.fast:
                self._wait_until(due)
            self._send(item)

    def _send_tail(self, pending: list[tuple[float, int, Outgoing]],
                   tie: itertools.count[int]) -> None:
        """After the last step: the frames the faults still hold back (delayed, reordered)
        are sent too, so a run's frame counts do not depend on where it stopped."""
        clock = time.perf_counter
        for out in self.em.flush():
            heapq.heappush(pending, (clock() + out.emission.delay_s, next(tie), out))
        self._send_due(pending, math.inf)

    def _drain_clients(self) -> None:
        """Give TCP clients their queued bytes (at most 1 s) before the sockets close."""
        clock = time.perf_counter
        drain_until = clock() + 1.0
        while any(c.out for lst in self._clients.values() for c in lst) and \
                clock() < drain_until:
            self._service(0.01)

    def _summary(self, done: int, duration: float) -> Summary:
        """The run's :class:`Summary` (and a last progress line)."""
        em = self.em
        summary = Summary(
            steps=done, first_step=em.start_step, duration_s=duration, rate_hz=em.rate_hz,
            speed=None if self.fast else self.speed, streams=self.stats,
            faults=em.injector.summary(), fault_log=list(em.fault_log),
            pacing_us={} if self.fast else pacing_stats(self._recent_errors(done)),
            commands=list(em.closed_loop.records) if em.closed_loop else [],
            command_errors=self.command_errors, disturbances=em.disturbances,
            silent_steps=em.silent_steps)
        if self.progress is not None:
            self.progress(self._progress_line(done))
        summary.realtime = self.realtime_active
        summary.spin_us = None if self.fast else round(self.spin.margin() * 1e6, 1)
        return summary

    def _enter_realtime(self) -> tuple[int, os.sched_param, set[int]] | None:
        """SCHED_FIFO for the running thread when the OS allows it (Linux, root or
        CAP_SYS_NICE), on the emulator's CPU (``gateway.realtime``: never the
        estimator's when the twin runs on this machine); returns the policy and CPUs to
        restore, None when not switched."""
        if not hasattr(os, "sched_setscheduler"):
            return None
        from gateway.realtime import pin

        try:
            old = (os.sched_getscheduler(0), os.sched_getparam(0), os.sched_getaffinity(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        except OSError:
            return None
        self.realtime_active = True
        pin("emulator")
        return old

    def _recent_errors(self, done: int) -> np.ndarray:
        return self.errors[:min(done, self.errors.size)]

    def _mark_sent(self, step: int, t: float) -> None:
        _put_bounded(self.sent_at, step, t, _SENT_KEEP)

    def _progress_line(self, done: int) -> str:
        frames = sum(s.frames for s in self.stats.values())
        faults = sum(self.em.injector.counts.values())
        recent = self._recent_errors(done)
        p99 = np.percentile(recent, 99) * 1e6 if done and not self.fast else 0.0
        return (f"emulate: step {done}/{self.n_steps}, {frames} frames, {faults} faults, "
                f"pacing p99 {p99:.0f} us, spin {self.spin.margin() * 1e6:.0f} us")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def run_in_thread(runner: EmulatorRunner) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``runner.run()`` in a daemon thread; the result dict gets ``summary`` or
    ``error`` when it ends (tests join the thread)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = runner.run()
        except BaseException as exc:  # handed to the joining thread
            result["error"] = exc

    th = threading.Thread(target=target, name="gridtwin-emulator", daemon=True)
    th.start()
    return th, result


__all__ = ["Emulator", "EmulatorError", "EmulatorRunner", "Outgoing", "SpinMargin",
           "StreamPlan", "StreamStats", "Summary", "TraceLike", "pacing_stats", "retarget",
           "run_in_thread", "spin_ceiling"]
