"""Child worker processes: one helper for every process the gateway runs beside itself.

A *worker* is ``python -m MODULE --fd N [args...]``: the gateway creates an AF_UNIX
``SOCK_SEQPACKET`` socket pair (reliable, ordered, message boundaries kept), the child
inherits one end as fd ``N``, says READY in its first message once it has loaded what it
needs, then answers requests until it reads EOF or the stop message. Keeping the numerics
in another process means a crash or a hang there never stops ingest and storage, and the
work overlaps the gateway's on another core.

What this module does, the same way for every worker:

* :class:`WorkerSpec` -- the command (module, arguments, interpreter), socket buffer sizes,
  how to recognise READY and how to stop it;
* :func:`spawn` (asyncio) -- socket pair, start, the READY future, a reader calling
  ``on_message`` for every other message, ``on_exit`` once when the child exits or its
  socket breaks; :func:`wait_ready` -- the READY handshake with a timeout (the child is
  killed when it fails); :meth:`Worker.stop` (stop message, then kill after a grace time),
  :meth:`Worker.kill`;
* :func:`start_blocking` -- the same launch and READY handshake for a caller without an
  event loop (a :class:`BlockingWorker`: the socket, the process, ``close``);
* :class:`Backoff` -- how long to wait before restarting a worker that keeps crashing
  (sans-IO: crash times in, delay out).

Adopting it (e.g. the quality stage's predictor child, ``python -m models.serve``, today
started by hand in ``gateway/quality/predictor.py``): build a
``WorkerSpec("models.serve", ["--model", m, "--batch", str(b)], is_ready=...)`` whose
``is_ready`` checks ``models.runtime.READY_MSG``; replace the ``socketpair``/``Popen``/
``select`` block with ``start_blocking(spec, timeout=REMOTE_START_TIMEOUT_S)`` (a
:class:`WorkerError` becomes the stage's ``QualityError``) and keep using the returned
``sock`` and ``proc``; to restart it after a crash, ask a :class:`Backoff` for the delay
(``crashed(now)``) and call :func:`start_blocking` again once it has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import GatewayError

SOCK_BUF = 4 * 1024 * 1024
MAX_MESSAGE = 4 * 1024 * 1024


class WorkerError(GatewayError):
    """A worker process could not be started or did not say READY in time."""


@dataclass
class WorkerSpec:
    """How to run one kind of worker. ``is_ready(msg)`` recognises its READY message;
    ``stop_message`` (None: none) is sent to ask it to exit before it is killed."""

    module: str
    args: list[str] = field(default_factory=list)
    is_ready: Callable[[bytes], bool] = lambda msg: True
    python: str = sys.executable
    sock_buf: int = SOCK_BUF
    stop_message: bytes | None = None
    stop_grace_s: float = 2.0

    def command(self, fd: int) -> list[str]:
        return [self.python, "-m", self.module, "--fd", str(fd), *self.args]


def _socket_pair(spec: WorkerSpec) -> tuple[socket.socket, socket.socket]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (parent, child):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, spec.sock_buf)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec.sock_buf)
    return parent, child


#: on_message(worker, message) / on_exit(worker, why)
MessageSink = Callable[["Worker", bytes], None]
ExitSink = Callable[["Worker", str], None]


class Worker:
    """One running child (asyncio): its process, the parent's socket end (non-blocking),
    the READY future (the READY message) and whether it is gone (``dead``)."""

    def __init__(self, spec: WorkerSpec, proc: asyncio.subprocess.Process,
                 sock: socket.socket, started: float, on_message: MessageSink,
                 on_exit: ExitSink) -> None:
        self.spec = spec
        self.proc = proc
        self.sock = sock
        self.pid = proc.pid
        self.started = started
        self.dead = False
        self.stopping = False  # asked to exit: its exit is no news for on_exit
        self.ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._on_message = on_message
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.exit_task = asyncio.create_task(self._wait_exit(), name=f"worker-{proc.pid}")

    def send(self, msg: bytes | bytearray) -> None:
        """Send one message (never blocks: raises BlockingIOError when the buffer is full,
        OSError when the child is gone)."""
        self.sock.send(msg)

    async def _wait_exit(self) -> None:
        rc = await self.proc.wait()
        self.gone(f"exit status {rc}")

    def _readable(self) -> None:
        while not self.dead:
            try:
                msg = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.gone(f"socket error {exc}")
                return
            if not msg:
                self.gone("closed its socket")
                return
            if not self.ready.done() and self.spec.is_ready(msg):
                self.ready.set_result(msg)
            else:
                self._on_message(self, msg)

    def detach(self) -> None:
        """Stop reading the socket and close it (the process is left alone)."""
        if self.dead:
            return
        self.dead = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def gone(self, why: str) -> None:
        """The child exited or broke its socket: detach, fail READY, tell ``on_exit``
        (once, unless it was asked to stop)."""
        if self.dead:
            return
        self.detach()
        if not self.ready.done():
            self.ready.set_exception(WorkerError(f"{self.spec.module} {self.pid} {why}"))
            self.ready.exception()  # mark retrieved
        if not self.stopping:
            self._on_exit(self, why)

    async def kill(self) -> None:
        """SIGKILL and reap."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5.0)

    async def stop(self) -> None:
        """Ask the child to exit (stop message), kill it after the grace time."""
        self.stopping = True
        if not self.dead and self.spec.stop_message is not None:
            with contextlib.suppress(OSError):
                self.sock.send(self.spec.stop_message)
        try:
            await asyncio.wait_for(self.proc.wait(), self.spec.stop_grace_s)
        except TimeoutError:
            await self.kill()
        self.detach()
        self.exit_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.exit_task


async def spawn(spec: WorkerSpec, *, on_message: MessageSink, on_exit: ExitSink,
                started: float = 0.0) -> Worker:
    """Start ``spec``'s child; returns at once (await :func:`wait_ready` for READY).
    ``started`` is the caller's clock at the start (kept on the worker)."""
    parent, child_end = _socket_pair(spec)
    args = spec.command(child_end.fileno())
    try:
        proc = await asyncio.create_subprocess_exec(
            *args, pass_fds=(child_end.fileno(),), stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        parent.close()
        raise WorkerError(f"cannot start {' '.join(args)}: {exc}") from exc
    finally:
        child_end.close()
    parent.setblocking(False)
    return Worker(spec, proc, parent, started, on_message, on_exit)


async def wait_ready(worker: Worker, timeout: float) -> bytes:
    """The READY message; WorkerError (and the child killed) if it exits or stays silent
    for ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.shield(worker.ready), timeout)
    except (TimeoutError, WorkerError) as exc:
        await worker.kill()
        worker.detach()
        why = str(exc) or f"no READY within {timeout:g} s"
        raise WorkerError(f"{worker.spec.module} did not become ready: {why}") from exc


@dataclass
class BlockingWorker:
    """A child started without an event loop: its process and the parent's socket end
    (left blocking; the owner decides)."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket
    ready_message: bytes

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self, grace_s: float = 2.0) -> None:
        """Close the socket (EOF ends a well-behaved worker), kill after ``grace_s``."""
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_blocking(spec: WorkerSpec, *, timeout: float) -> BlockingWorker:
    """Start ``spec``'s child and wait (blocking, at most ``timeout`` s) for its READY."""
    parent, child_end = _socket_pair(spec)
    args = spec.command(child_end.fileno())
    try:
        proc = subprocess.Popen(args, pass_fds=(child_end.fileno(),),
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        parent.close()
        raise WorkerError(f"cannot start {' '.join(args)}: {exc}") from exc
    finally:
        child_end.close()
    worker = BlockingWorker(proc, parent, b"")
    try:
        ready, _, _ = select.select([parent], [], [], timeout)
        msg = parent.recv(MAX_MESSAGE) if ready else b""
    except OSError:
        msg = b""
    if not msg or not spec.is_ready(msg):
        worker.close(grace_s=0.5)
        raise WorkerError(f"{spec.module} did not become ready within {timeout:g} s "
                          f"(got {msg[:80]!r})")
    worker.ready_message = msg
    return worker


class Backoff:
    """Restart delays for a worker that keeps crashing: none for the first ``free``
    crashes within ``window_s``, then ``start_s`` doubling up to ``max_s``."""

    def __init__(self, *, window_s: float = 10.0, free: int = 2, start_s: float = 0.1,
                 max_s: float = 5.0) -> None:
        self.window_s = window_s
        self.free = free
        self.start_s = start_s
        self.max_s = max_s
        self._crashes: deque[float] = deque(maxlen=16)

    def crashed(self, now: float) -> float:
        """Record a crash at ``now``; the delay before the next start."""
        self._crashes.append(now)
        return self.delay(now)

    def delay(self, now: float) -> float:
        recent = sum(1 for t in self._crashes if now - t <= self.window_s)
        if recent <= self.free:
            return 0.0
        return float(min(self.max_s, self.start_s * 2 ** (recent - self.free - 1)))


def child_pids(parent: int, module: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Pids of ``parent``'s children running ``python -m module``, oldest first (Linux
    ``/proc``; empty elsewhere). For tools that must find a worker from outside."""
    found: list[tuple[int, int]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(proc_root):
            if not entry.name.isdigit():
                continue
            try:
                stat = (proc_root / entry.name / "stat").read_text()
                cmd = (proc_root / entry.name / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            # fields[1] is the parent pid, fields[19] the start time (clock ticks)
            if int(fields[1]) == parent and b"-m" in cmd and module.encode() in cmd:
                found.append((int(fields[19]), int(entry.name)))
    return [pid for _, pid in sorted(found)]
