"""Start, feed and supervise the estimator worker.

The estimator runs in its own OS process (``python -m gateway.estimator_worker``, started
through :mod:`gateway.workers`) so a crash or a hang in the numerics never stops ingest
and storage. The gateway talks to it over an AF_UNIX ``SOCK_SEQPACKET`` pair
(:mod:`gateway.handoff`): one copy of ``Snapshot.to_bytes`` each way, no pickling.

Flow control (newest wins, deadline, stale, and what counts as a deadline miss) is the
sans-IO :class:`~gateway.flow.FlowControl`; this class is its I/O runner: it sends what
the flow says to send, feeds it the answers and the crashes, and keeps one timer at
:meth:`FlowControl.next_deadline` so every miss is counted (and an event) at its deadline.
A snapshot in flight for longer than ``hang_timeout_s`` means a hung estimator: it is
killed and restarted.

Restarts: a warm *spare* process (model built, waiting) is kept beside the active one, so
a crash is answered by promoting the spare at once and starting a new spare behind it.
Repeated crashes back off exponentially (:class:`~gateway.workers.Backoff`: 0.1 s
doubling to 5 s when more than two crashes fall within 10 s). Every crash and restart is
an event (for the historian's events table, with the process ids) and a counter. The
process ids are not reported anywhere else (``/summary`` has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.errors import GatewayError
from gateway.flow import FlowControl, FlowStats, Ticket
from gateway.handoff import (
    READY,
    STOP,
    FailMsg,
    HandoffError,
    ReadyMsg,
    StateMsg,
    decode_reply,
    encode_snapshot,
    stamp_send_time,
)
from gateway.snapshot import Snapshot
from gateway.workers import Backoff, Worker, WorkerError, WorkerSpec, spawn, wait_ready

log = logging.getLogger("gridtwin.supervisor")

READY_TIMEOUT_S = 60.0

#: on_state(state, received_time, deadline_met)
StateSink = Callable[[StateMsg, float, bool], None]
#: on_event(kind, detail)
EventSink = Callable[[str, dict[str, object]], None]


def _log_miss(n: int) -> bool:
    """Log the first 10 deadline misses, then every 1000th (an overloaded host misses
    many; the counter and the events carry them all, the log must not add load)."""
    return n <= 10 or n % 1000 == 0


class SupervisorError(GatewayError):
    """The estimator process could not be started at all."""


@dataclass
class SupervisorStats(FlowStats):
    restarts: int = 0
    crashes: int = 0
    spawned: int = 0


class EstimatorSupervisor:
    def __init__(self, config: str, *, deadline_s: float, on_state: StateSink,
                 on_fail: Callable[[FailMsg], None] | None = None,
                 on_event: EventSink | None = None, method: str | None = None,
                 spare: bool = True, hang_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.time,
                 python: str = sys.executable, module: str = "gateway.estimator_worker",
                 extra_args: list[str] | None = None) -> None:
        self.deadline_s = deadline_s
        self.on_state = on_state
        self.on_fail = on_fail or (lambda f: None)
        self.on_event = on_event or (lambda k, d: None)
        self.use_spare = spare
        self.hang_timeout_s = hang_timeout_s or max(2.0, 100 * deadline_s)
        self.clock = clock
        args = ["--config", config] + (["--method", method] if method else [])
        self.spec = WorkerSpec(module, args + list(extra_args or []), python=python,
                               is_ready=lambda msg: msg[:1] == READY, stop_message=STOP)
        self.stats = SupervisorStats()
        #: a waiting snapshot older than this is dropped instead of estimated; younger
        #: ones are estimated even past their deadline (the newest is always worth it)
        self.flow = FlowControl(deadline_s, max(10 * deadline_s, 0.1), stats=self.stats)
        self.active: Worker | None = None
        self.spare: Worker | None = None
        self.backoff = Backoff()
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._respawn_task: asyncio.Task[None] | None = None
        self.n_bus: int | None = None
        self.restart_durations: list[float] = []

    @property
    def inflight(self) -> Ticket | None:
        return self.flow.inflight

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the active process (and the spare) and wait until the active is ready."""
        child = await self._spawn()
        try:
            ready = await self._ready(child, timeout)
        except SupervisorError as exc:
            raise SupervisorError(f"estimator process did not become ready: {exc}") from exc
        self.n_bus = ready.n_bus
        self.active = child
        self.on_event("estimator_started", {"pid": child.pid, "ready_s": round(
            ready.time - child.started, 4)})
        if self.use_spare:
            self.spare = await self._spawn()
        self._watchdog = asyncio.create_task(self._watch(), name="estimator-watchdog")

    async def close(self) -> None:
        self._closing = True
        for t in (self._watchdog, self._respawn_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if self._timer is not None:
            self._timer.cancel()
        for child in (self.active, self.spare):
            if child is not None:
                await child.stop()
        self.active = self.spare = None

    # ------------------------------------------------------------------ spawning
    async def _spawn(self) -> Worker:
        try:
            child = await spawn(self.spec, on_message=self._message, on_exit=self._child_gone,
                                started=self.clock())
        except WorkerError as exc:
            raise SupervisorError(str(exc)) from exc
        self.stats.spawned += 1
        return child

    async def _ready(self, child: Worker, timeout: float) -> ReadyMsg:
        try:
            reply = decode_reply(await wait_ready(child, timeout))
        except (WorkerError, HandoffError) as exc:
            raise SupervisorError(str(exc)) from exc
        assert isinstance(reply, ReadyMsg)
        return reply

    def _message(self, child: Worker, msg: bytes) -> None:
        try:
            reply = decode_reply(msg)
        except HandoffError as exc:
            log.error("estimator %d: %s", child.pid, exc)
            return
        if child is self.active and not isinstance(reply, ReadyMsg):
            self._reply(reply)

    def _child_gone(self, child: Worker, why: str) -> None:
        if self._closing:
            return
        if child is self.spare:
            self.spare = None
            log.warning("spare estimator %d %s; starting another", child.pid, why)
            self._schedule_respawn(0.5)
            return
        if child is not self.active:
            return
        now = self.clock()
        self.stats.crashes += 1
        delay = self.backoff.crashed(now)
        self.active = None
        log.error("estimator process %d %s; restarting", child.pid, why)
        self.on_event("estimator_crashed", {"pid": child.pid, "reason": why})
        self.flow.lost()
        self._arm()
        self._schedule_respawn(delay, crashed_at=now, old_pid=child.pid)

    def _schedule_respawn(self, delay: float, *, crashed_at: float | None = None,
                          old_pid: int | None = None) -> None:
        if self._respawn_task is not None and not self._respawn_task.done():
            return  # a restart is already under way; it re-checks what is missing
        self._respawn_task = asyncio.create_task(self._respawn(delay, crashed_at, old_pid),
                                                 name="estimator-respawn")

    async def _respawn(self, delay: float, crashed_at: float | None, old_pid: int | None
                       ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        while not self._closing and (self.active is None or
                                     (self.use_spare and self.spare is None)):
            try:
                if self.active is None:
                    await self._promote(delay, crashed_at, old_pid)
                if self.use_spare and self.spare is None and not self._closing:
                    self.spare = await self._spawn()
            except SupervisorError as exc:
                log.error("estimator restart failed: %s", exc)
                now = self.clock()
                await asyncio.sleep(max(self.backoff.start_s, self.backoff.crashed(now)))

    async def _promote(self, delay: float, crashed_at: float | None, old_pid: int | None
                       ) -> None:
        """Make the spare (or a new process) the active one once it is ready."""
        cand = self.spare if self.spare is not None else await self._spawn()
        if cand is self.spare:
            self.spare = None
        ready = await self._ready(cand, READY_TIMEOUT_S)
        if cand.dead:
            return
        self.active = cand
        self.n_bus = ready.n_bus
        self.stats.restarts += 1
        took = self.clock() - crashed_at if crashed_at is not None else 0.0
        self.restart_durations.append(took)
        self.on_event("estimator_restarted", {"pid": cand.pid, "old_pid": old_pid,
                                              "after_s": round(took, 4), "backoff_s": delay})
        log.warning("estimator restarted as pid %d after %.3f s", cand.pid, took)
        self._send_pending()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.hang_timeout_s / 4))
            active = self.active
            hung = self.flow.hung(self.clock(), self.hang_timeout_s)
            if hung is not None and active is not None:
                log.error("estimator %d hung on snapshot %d for %.1f s; killing it",
                          active.pid, hung.seq, self.clock() - (hung.sent_at or 0.0))
                self.on_event("estimator_hung", {"pid": active.pid, "seq": hung.seq})
                with contextlib.suppress(ProcessLookupError):
                    os.kill(active.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ feeding
    def submit(self, snap: Snapshot, pv_mw: np.ndarray, pv_sigma: np.ndarray) -> None:
        """Hand a snapshot on; never blocks (newest wins, see :mod:`gateway.flow`)."""
        self.flow.submit(snap.seq, snap.published_time, (snap, pv_mw, pv_sigma), self.clock())
        self._send_pending()

    def _send_pending(self) -> None:
        child = self.active
        up = child is not None and not child.dead
        t = self.flow.take(self.clock(), up)
        if t is not None and child is not None:
            snap, pv, sig = t.item
            msg = bytearray(encode_snapshot(snap, pv, sig, 0.0))
            # the handoff clock starts when the encoded snapshot is handed to the kernel
            now = self.clock()
            stamp_send_time(msg, now)
            try:
                child.send(msg)
            except (BlockingIOError, InterruptedError):
                self.flow.unsent(t)  # socket full: the estimator is not reading
            except OSError as exc:
                self.flow.unsent(t)
                child.gone(f"send failed: {exc}")
            else:
                self.flow.sent(t, now)
        self._arm()

    def _arm(self) -> None:
        """Count the misses already due, and set the timer for the next deadline."""
        self._tick()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.flow.next_deadline()
        if at is not None and not self._closing:
            loop = asyncio.get_running_loop()
            # just past the deadline: the flow counts a deadline once it has passed
            self._timer = loop.call_later(max(0.0, at - self.clock()) + 1e-4, self._arm)

    def _tick(self) -> None:
        for t in self.flow.tick(self.clock()):
            self._missed(t, "not estimated within %.1f ms", self.deadline_s * 1e3)

    def _missed(self, t: Ticket, how: str, ms: float) -> None:
        """Log (maybe) and report one deadline miss of ``t``; ``how % ms`` says what
        happened (formatted only when logged)."""
        n = self.stats.deadline_misses
        if _log_miss(n):
            log.warning("deadline missed: snapshot %d " + how + " (%d misses so far)",
                        t.seq, ms, n)
        self.on_event("deadline_missed", {"seq": t.seq, "deadline_ms": self.deadline_s * 1e3})

    def _reply(self, reply: StateMsg | FailMsg) -> None:
        now = self.clock()
        self._tick()
        ok = isinstance(reply, StateMsg)
        ans = self.flow.answered(reply.seq, now, ok)
        if ans is None:
            return  # an answer to a snapshot we gave up on
        if ans.newly_missed:
            self._missed(ans.ticket, "estimated after %.2f ms",
                         (now - ans.ticket.published_time) * 1e3)
        try:
            if isinstance(reply, StateMsg):
                self.on_state(reply, now, ans.met)
            else:
                self.on_fail(reply)
        finally:
            self._send_pending()
