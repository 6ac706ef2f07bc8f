"""Start, feed and supervise the estimator process.

The estimator runs in its own OS process (``python -m gateway.estimator_worker``) so a crash or
a hang in the numerics never stops ingest and storage. The gateway talks to it over an
AF_UNIX ``SOCK_SEQPACKET`` pair (:mod:`gateway.handoff`): one copy of
``Snapshot.to_bytes`` each way, no pickling.

Flow control is *newest wins*: at most one snapshot is in flight and one waits in a
single pending slot; a newer snapshot replaces the pending one (counted ``superseded``).
The pending snapshot is estimated when the estimator frees up, even past its deadline (it
is the newest there is; the miss is counted), unless it is older than ``stale_after_s``
(10 deadlines, at least 0.1 s: e.g. it waited through a restart), then it is dropped
(``stale``). So every queue is bounded (one slot) and a slow estimator sheds load
instead of falling behind.

Deadline monitor: a snapshot's deadline is ``published_time + deadline_s``; a timer fires
at that instant and counts a miss if the estimate is not back, and a late estimate is
counted once. A snapshot in flight for longer than ``hang_timeout_s`` means a hung
estimator: it is killed and restarted.

Restarts: a warm *spare* process (model built, waiting) is kept beside the active one, so
a crash is answered by promoting the spare at once and starting a new spare behind it.
Repeated crashes back off exponentially (0.1 s doubling to 5 s when more than two crashes
fall within 10 s). Every crash and restart is an event (for the historian) and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.errors import GatewayError
from gateway.handoff import (
    MAX_MESSAGE,
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

log = logging.getLogger("gridtwin.supervisor")

SOCK_BUF = 4 * 1024 * 1024
CRASH_WINDOW_S = 10.0
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0

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
class SupervisorStats:
    submitted: int = 0
    sent: int = 0
    superseded: int = 0
    stale: int = 0
    no_estimator: int = 0
    states: int = 0
    failures: int = 0
    deadline_misses: int = 0
    restarts: int = 0
    crashes: int = 0
    spawned: int = 0

    @property
    def skipped(self) -> int:
        return self.superseded + self.stale + self.no_estimator


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket,
                 started: float) -> None:
        self.proc = proc
        self.sock = sock
        self.started = started
        self.ready: asyncio.Future[ReadyMsg] = asyncio.get_running_loop().create_future()
        self.dead = False
        self.pid = proc.pid


@dataclass
class _InFlight:
    snap: Snapshot
    send_time: float
    deadline_at: float
    missed: bool = False
    timer: asyncio.TimerHandle | None = None


class EstimatorSupervisor:
    def __init__(self, config: str, *, deadline_s: float, on_state: StateSink,
                 on_fail: Callable[[FailMsg], None] | None = None,
                 on_event: EventSink | None = None, method: str | None = None,
                 spare: bool = True, hang_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.time,
                 python: str = sys.executable, module: str = "gateway.estimator_worker",
                 extra_args: list[str] | None = None) -> None:
        self.config = config
        self.deadline_s = deadline_s
        self.on_state = on_state
        self.on_fail = on_fail or (lambda f: None)
        self.on_event = on_event or (lambda k, d: None)
        self.method = method
        self.use_spare = spare
        self.hang_timeout_s = hang_timeout_s or max(2.0, 100 * deadline_s)
        #: a pending snapshot older than this is dropped instead of estimated; younger
        #: ones are estimated even past their deadline (the newest is always worth it)
        self.stale_after_s = max(10 * deadline_s, 0.1)
        self.clock = clock
        self.python = python
        self.module = module
        self.extra_args = list(extra_args or [])
        self.stats = SupervisorStats()
        self.active: _Child | None = None
        self.spare: _Child | None = None
        self.pending: tuple[Snapshot, np.ndarray, np.ndarray] | None = None
        self.inflight: _InFlight | None = None
        self._crash_times: deque[float] = deque(maxlen=16)
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._respawn_task: asyncio.Task[None] | None = None
        self.n_bus: int | None = None
        self.restart_durations: list[float] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, timeout: float = 60.0) -> None:
        """Start the active process (and the spare) and wait until the active is ready."""
        self._loop = asyncio.get_running_loop()
        child = await self._spawn()
        try:
            ready = await asyncio.wait_for(asyncio.shield(child.ready), timeout)
        except (TimeoutError, SupervisorError) as exc:
            await self._kill(child)
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
        if self.inflight and self.inflight.timer:
            self.inflight.timer.cancel()
        for child in (self.active, self.spare):
            if child is not None:
                await self._stop_child(child)
        self.active = self.spare = None
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def pids(self) -> dict[str, int | None]:
        return {"active": self.active.pid if self.active else None,
                "spare": self.spare.pid if self.spare else None}

    # ------------------------------------------------------------------ spawning
    async def _spawn(self) -> _Child:
        parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child_end):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        args = [self.python, "-m", self.module, "--config", self.config,
                "--fd", str(child_end.fileno())]
        if self.method:
            args += ["--method", self.method]
        args += self.extra_args
        started = self.clock()
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, pass_fds=(child_end.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            child_end.close()
            raise SupervisorError(f"cannot start {' '.join(args)}: {exc}") from exc
        child_end.close()
        parent.setblocking(False)
        child = _Child(proc, parent, started)
        self.stats.spawned += 1
        assert self._loop is not None
        self._loop.add_reader(parent.fileno(), self._readable, child)
        task = asyncio.create_task(self._wait_exit(child), name=f"estimator-{proc.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return child

    async def _wait_exit(self, child: _Child) -> None:
        rc = await child.proc.wait()
        self._child_gone(child, f"exit status {rc}")

    def _readable(self, child: _Child) -> None:
        while not child.dead:
            try:
                msg = child.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._child_gone(child, f"socket error {exc}")
                return
            if not msg:
                self._child_gone(child, "closed its socket")
                return
            try:
                reply = decode_reply(msg)
            except HandoffError as exc:
                log.error("estimator %d: %s", child.pid, exc)
                continue
            if isinstance(reply, ReadyMsg):
                if not child.ready.done():
                    child.ready.set_result(reply)
            elif child is self.active:
                self._reply(reply)

    def _detach(self, child: _Child) -> None:
        """Mark ``child`` dead and stop reading its socket."""
        child.dead = True
        with contextlib.suppress(Exception):
            assert self._loop is not None
            self._loop.remove_reader(child.sock.fileno())
        child.sock.close()

    def _child_gone(self, child: _Child, why: str) -> None:
        if child.dead:
            return
        self._detach(child)
        if not child.ready.done():
            child.ready.set_exception(SupervisorError(f"estimator {child.pid} {why}"))
            child.ready.exception()  # mark retrieved
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
        self._crash_times.append(now)
        self.active = None
        log.error("estimator process %d %s; restarting", child.pid, why)
        self.on_event("estimator_crashed", {"pid": child.pid, "reason": why})
        if self.inflight is not None:
            if self.inflight.timer:
                self.inflight.timer.cancel()
            self.inflight = None
            self.stats.no_estimator += 1
        self._schedule_respawn(self._backoff(now), crashed_at=now, old_pid=child.pid)

    def _backoff(self, now: float) -> float:
        recent = sum(1 for t in self._crash_times if now - t <= CRASH_WINDOW_S)
        if recent <= 2:
            return 0.0
        return min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (recent - 3))

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
                    cand = self.spare if self.spare is not None else await self._spawn()
                    self.spare = None if cand is self.spare else self.spare
                    ready = await asyncio.wait_for(asyncio.shield(cand.ready), 60.0)
                    if cand.dead:
                        continue
                    self.active = cand
                    self.n_bus = ready.n_bus
                    self.stats.restarts += 1
                    took = self.clock() - crashed_at if crashed_at is not None else 0.0
                    self.restart_durations.append(took)
                    self.on_event("estimator_restarted", {
                        "pid": cand.pid, "old_pid": old_pid, "after_s": round(took, 4),
                        "backoff_s": delay})
                    log.warning("estimator restarted as pid %d after %.3f s", cand.pid, took)
                    self._send_pending()
                if self.use_spare and self.spare is None and not self._closing:
                    self.spare = await self._spawn()
            except (SupervisorError, TimeoutError) as exc:
                log.error("estimator restart failed: %s", exc)
                now = self.clock()
                self._crash_times.append(now)
                await asyncio.sleep(max(BACKOFF_START_S, self._backoff(now)))

    async def _stop_child(self, child: _Child) -> None:
        if not child.dead:
            with contextlib.suppress(OSError):
                child.sock.send(STOP)
        try:
            await asyncio.wait_for(child.proc.wait(), 2.0)
        except TimeoutError:
            await self._kill(child)
        if not child.dead:
            self._detach(child)

    async def _kill(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.proc.wait(), 5.0)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.hang_timeout_s / 4))
            inf = self.inflight
            if inf is not None and self.active is not None and \
                    self.clock() - inf.send_time > self.hang_timeout_s:
                log.error("estimator %d hung on snapshot %d for %.1f s; killing it",
                          self.active.pid, inf.snap.seq, self.clock() - inf.send_time)
                self.on_event("estimator_hung", {"pid": self.active.pid,
                                                 "seq": inf.snap.seq})
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.active.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ feeding
    def submit(self, snap: Snapshot, pv_mw: np.ndarray, pv_sigma: np.ndarray) -> None:
        """Hand a snapshot on; never blocks (newest wins, see the module docstring)."""
        self.stats.submitted += 1
        if self.pending is not None:
            self.stats.superseded += 1
        self.pending = (snap, pv_mw, pv_sigma)
        if self.inflight is None:
            self._send_pending()

    def _send_pending(self) -> None:
        child = self.active
        if self.pending is None or child is None or child.dead or self.inflight is not None:
            if self.pending is not None and (child is None or child.dead) and \
                    self.clock() - self.pending[0].published_time > self.deadline_s:
                self.pending = None
                self.stats.no_estimator += 1
            return
        snap, pv, sig = self.pending
        self.pending = None
        deadline_at = snap.published_time + self.deadline_s
        if self.clock() > snap.published_time + self.stale_after_s:
            self.stats.stale += 1  # far too old to be worth estimating (e.g. after a restart)
            return
        msg = bytearray(encode_snapshot(snap, pv, sig, 0.0))
        # the handoff clock starts when the encoded snapshot is handed to the kernel
        now = self.clock()
        stamp_send_time(msg, now)
        try:
            child.sock.send(msg)
        except (BlockingIOError, InterruptedError):
            self.stats.no_estimator += 1  # socket full: the estimator is not reading
            return
        except OSError as exc:
            self.stats.no_estimator += 1
            self._child_gone(child, f"send failed: {exc}")
            return
        self.stats.sent += 1
        inf = _InFlight(snap, now, deadline_at)
        assert self._loop is not None
        delay = deadline_at - now
        inf.timer = self._loop.call_later(delay, self._deadline_check, inf)
        self.inflight = inf

    def _count_miss(self, inf: _InFlight, how: str, ms: float) -> None:
        """Count (and maybe log) one deadline miss of ``inf``; ``how % ms`` says what
        happened (formatted only when logged)."""
        n = self.stats.deadline_misses = self.stats.deadline_misses + 1
        if _log_miss(n):
            log.warning("deadline missed: snapshot %d " + how + " (%d misses so far)",
                        inf.snap.seq, ms, n)
        self.on_event("deadline_missed", {"seq": inf.snap.seq,
                                          "deadline_ms": self.deadline_s * 1e3})

    def _deadline_check(self, inf: _InFlight) -> None:
        if self.inflight is inf and not inf.missed:
            inf.missed = True
            self._count_miss(inf, "not estimated within %.1f ms", self.deadline_s * 1e3)

    def _reply(self, reply: StateMsg | FailMsg) -> None:
        now = self.clock()
        inf = self.inflight
        if inf is None or reply.seq != inf.snap.seq:
            return  # an answer to a snapshot we gave up on
        self.inflight = None
        if inf.timer:
            inf.timer.cancel()
        met = now <= inf.deadline_at and not inf.missed
        if not met and not inf.missed:
            self._count_miss(inf, "estimated after %.2f ms",
                             (now - inf.snap.published_time) * 1e3)
        if isinstance(reply, StateMsg):
            self.stats.states += 1
            try:
                self.on_state(reply, now, met)
            finally:
                self._send_pending()
        else:
            self.stats.failures += 1
            try:
                self.on_fail(reply)
            finally:
                self._send_pending()
