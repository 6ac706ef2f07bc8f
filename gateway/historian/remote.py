"""The historian writer in its own process: what a real-time gateway stores with.

:class:`~gateway.historian.writer.HistorianWriter` commits from a thread of the gateway.
That thread's encoding (JSON of every estimate's vectors, the flagged rows, the row
tuples SQLite binds) holds the gateway's GIL for about 150-250 µs per snapshot: at 1 kHz
a quarter of the pipeline thread's time, and a snapshot that arrives meanwhile waits for
it (measured: the historian off halves the 1 kHz deadline misses). A process shares no
GIL. :class:`HistorianProcess` keeps the writer's interface for what the gateway calls
(``start``, ``start_run``, ``put_*``, ``stats``, ``flush``, ``close``, ``url``,
``run_id``); each call becomes one message to ``python -m gateway.historian.remote``
(a :mod:`gateway.workers` child), which runs an ordinary :class:`HistorianWriter`:
the same rows, the same encodings, the same spool, the same database.

Protocol (AF_UNIX ``SOCK_SEQPACKET``, one pickled tuple per message):

* child → parent: ``("ready", stats)`` once the writer started, or ``("error", kind,
  text)`` when it cannot (``kind`` ``misconfigured``: no retry can cure it);
  ``("stats", stats)`` every :data:`STATS_EVERY_S` while rows flow and as the answer to a
  ``stats`` request; ``("flushed", ok, stats)``; ``("closed", ok, stats)``;
* parent → child: ``(method, args, kwargs)`` of a ``put_*`` or ``start_run`` call (numpy
  vectors as raw bytes + dtype: cheaper to send than pickled arrays), ``("flush",
  timeout)``, ``("close", timeout)``; EOF closes the writer too.

What differs from the thread: a ``put_*`` the child's writer refuses (it could neither
queue nor spool) cannot raise in the gateway; the child logs it and counts it
(``HistorianStats.rejected``). ``stats()`` is at most :data:`STATS_EVERY_S` old. When
the child's socket buffer is full (the child starved of CPU for seconds), messages wait in
memory, at most :data:`MAX_BACKLOG` of them; beyond that ``put_*`` raises
:class:`~gateway.errors.HistorianError` (the row was not accepted).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from gateway.errors import HistorianError
from gateway.historian.base import Misconfigured
from gateway.historian.writer import HistorianStats, HistorianWriter, RunInfo
from gateway.workers import WorkerError, WorkerSpec, start_blocking

log = logging.getLogger("gridtwin.historian")

#: how often the child reports its counters while it works
STATS_EVERY_S = 0.2
#: messages kept in the gateway while the child's socket is full
MAX_BACKLOG = 100_000
#: how long the child may take to open the spool and connect
START_TIMEOUT_S = 60.0
_PROTO = pickle.HIGHEST_PROTOCOL


class _Vec:
    """A numpy vector on the wire: raw bytes, dtype and shape (no pickled array)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        self.data = a.tobytes()
        self.dtype = a.dtype.str
        self.shape = a.shape

    def __reduce__(self) -> tuple[Any, ...]:
        return (_vec, (self.data, self.dtype, self.shape))


def _vec(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, dtype).reshape(shape)


def _wire(x: Any) -> Any:
    return _Vec(x) if isinstance(x, np.ndarray) else x


class HistorianProcess:
    """A :class:`HistorianWriter` in a child process, driven from the gateway."""

    def __init__(self, url: str, *, spool_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.spool_dir = spool_dir
        self.clock = clock
        self.run_id: int | None = None
        self.pid: int | None = None
        self._worker: Any = None
        self._sock: socket.socket | None = None
        self._backlog: deque[bytes] = deque()
        self._stats = HistorianStats()
        #: answers (``flushed``, ``closed``) read by another caller than the one waiting
        #: for them (``stats()`` from the loop while ``close()`` waits in an executor)
        self._answers: dict[str, tuple[Any, ...]] = {}
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> HistorianProcess:
        """Start the child and wait until its writer runs (spool opened, connected once);
        what the writer's ``start`` would raise is raised here."""
        if self._worker is not None:
            return self
        args = ["--url", self.url]
        if self.spool_dir is not None:
            args += ["--spool-dir", str(self.spool_dir)]
        spec = WorkerSpec("gateway.historian.remote", args,
                          is_ready=lambda m: pickle.loads(m)[0] in ("ready", "error"))
        try:
            worker = start_blocking(spec, timeout=START_TIMEOUT_S)
        except WorkerError as exc:
            raise HistorianError(f"historian process: {exc}") from exc
        first = pickle.loads(worker.ready_message)
        if first[0] == "error":
            worker.close()
            raise (Misconfigured if first[1] == "misconfigured" else HistorianError)(first[2])
        self._worker, self._sock, self.pid = worker, worker.sock, worker.pid
        self._sock.setblocking(False)
        self._stats = first[1]
        return self

    def start_run(self, info: RunInfo, *, started: float | None = None,
                  run_id: int | None = None) -> int:
        """Record a new run (as :meth:`HistorianWriter.start_run`); the run id is fixed
        here, from this process's clock."""
        t = self.clock() if started is None else started
        rid = int(t * 1e6) if run_id is None else int(run_id)
        self._call("start_run", (info,), {"started": float(t), "run_id": rid})
        self.run_id = rid
        return rid

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row sent before the call is committed (False: not within
        ``timeout``)."""
        wait = 60.0 if timeout is None else timeout
        reply = self._ask(("flush", timeout), "flushed", wait + 5.0)
        return bool(reply and reply[1])

    def close(self, timeout: float = 10.0) -> bool:
        """Commit what was sent (the rest goes to the spool, as the writer's close) and
        stop the child. True when everything was committed."""
        if self._closed:
            return True
        self._closed = True
        if self._worker is None:
            return True
        reply = self._ask(("close", timeout), "closed", timeout + 30.0)
        self._worker.close(grace_s=5.0)
        return bool(reply and reply[1])

    def stats(self) -> HistorianStats:
        """The child writer's counters as it last reported them (at most
        :data:`STATS_EVERY_S` old while rows flow)."""
        self._drain()
        return HistorianStats(**asdict(self._stats))

    # -- producers ----------------------------------------------------------------------
    def put_measurements(self, *args: Any, **kw: Any) -> None:
        self._call("put_measurements", args, kw)

    def put_corrected(self, *args: Any, **kw: Any) -> None:
        self._call("put_corrected", args, kw)

    def put_snapshot(self, *args: Any, **kw: Any) -> None:
        self._call("put_snapshot", args, kw)

    def put_forecasts(self, seq: int, time: float, p_mw: Mapping[str, float],
                      sigma_mw: Mapping[str, float] | None = None, **kw: Any) -> None:
        self._call("put_forecasts", (seq, time, dict(p_mw),
                                     None if sigma_mw is None else dict(sigma_mw)), kw)

    def put_state(self, *args: Any, **kw: Any) -> None:
        self._call("put_state", args, kw)

    def put_event(self, time: float, kind: str, source: str = "",
                  detail: Mapping[str, Any] | None = None, **kw: Any) -> None:
        self._call("put_event", (time, kind, source, None if detail is None
                                 else dict(detail)), kw)

    def put_device(self, time: float, d: Mapping[str, Any], **kw: Any) -> None:
        self._call("put_device", (time, dict(d)), kw)

    # -- the socket -----------------------------------------------------------------------
    def _call(self, method: str, args: tuple[Any, ...], kw: Mapping[str, Any]) -> None:
        if self._sock is None or self._closed:
            raise HistorianError("historian process is not running (start() it; or it "
                                 "was closed)")
        if kw.get("run_id") is None and self.run_id is None and method != "start_run":
            raise HistorianError("no run: call start_run() before put_*()")
        try:
            msg = pickle.dumps((method, tuple(_wire(a) for a in args), kw), _PROTO)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise HistorianError(f"historian process: cannot send {method}: {exc}") from exc
        if self._backlog and not self._send_backlog():
            self._queue(msg)
            return
        try:
            self._sock.send(msg)
        except BlockingIOError:
            self._queue(msg)
        except OSError as exc:
            raise HistorianError(f"historian process gone: {exc}") from exc

    def _queue(self, msg: bytes) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            raise HistorianError(f"historian process not reading: {MAX_BACKLOG} "
                                 "messages waiting")
        self._backlog.append(msg)

    def _send_backlog(self) -> bool:
        """Send what waits; True when nothing waits any more."""
        assert self._sock is not None
        while self._backlog:
            try:
                self._sock.send(self._backlog[0])
            except BlockingIOError:
                return False
            except OSError as exc:
                raise HistorianError(f"historian process gone: {exc}") from exc
            self._backlog.popleft()
        return True

    def _drain(self) -> tuple[Any, ...] | None:
        """Read what the child sent (non-blocking); the last message read."""
        last = None
        sock = self._sock
        while sock is not None:
            try:
                msg = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not msg:
                break
            last = pickle.loads(msg)
            self._stats = last[-1]
            if last[0] != "stats":
                self._answers[last[0]] = last
        return last

    def _ask(self, request: tuple[Any, ...], answer: str, wait: float
             ) -> tuple[Any, ...] | None:
        """Send ``request`` after everything queued; the child's ``answer`` (None: none
        within ``wait`` seconds, or the child is gone)."""
        sock = self._sock
        if sock is None:
            return None
        end = time.monotonic() + wait
        self._answers.pop(answer, None)  # an earlier request's: not this one's
        self._backlog.append(pickle.dumps(request, _PROTO))
        with contextlib.suppress(HistorianError):
            while not self._send_backlog() and time.monotonic() < end:
                select.select([], [sock], [], 0.05)
        while time.monotonic() < end:
            if answer in self._answers:
                return self._answers.pop(answer)
            left = min(0.05, end - time.monotonic())
            if not select.select([sock], [], [], max(0.0, left))[0]:
                continue
            try:
                msg = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            if not msg:
                return None
            reply = pickle.loads(msg)
            self._stats = reply[-1]
            if reply[0] == answer:
                return tuple(reply)
        return None


# ----------------------------------------------------------------------------- the child

def _reply(sock: socket.socket, *msg: Any) -> None:
    sock.send(pickle.dumps(msg, _PROTO))


def serve(sock: socket.socket, writer: HistorianWriter) -> int:
    """Carry out the parent's calls on ``writer`` until ``close`` or EOF."""
    sock.settimeout(STATS_EVERY_S)
    last_report = time.monotonic()
    refused = 0
    while True:
        try:
            msg = sock.recv(1 << 22)
        except TimeoutError:
            msg = None
        if msg == b"":
            writer.close()
            return 0
        if msg is not None:
            call = pickle.loads(msg)
            if call[0] == "flush":
                _reply(sock, "flushed", writer.flush(call[1]), writer.stats())
                continue
            if call[0] == "close":
                ok = writer.close(call[1])
                _reply(sock, "closed", ok, writer.stats())
                return 0
            try:
                getattr(writer, call[0])(*call[1], **call[2])
            except HistorianError as exc:
                refused += 1
                if refused <= 5:
                    log.error("historian refused a %s call: %s", call[0], exc)
        now = time.monotonic()
        if now - last_report >= STATS_EVERY_S:
            last_report = now
            st = writer.stats()
            st.rejected += refused
            _reply(sock, "stats", st)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.historian.remote")
    p.add_argument("--fd", type=int, required=True, help="inherited SOCK_SEQPACKET fd")
    p.add_argument("--url", required=True, help="historian URL")
    p.add_argument("--spool-dir", default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us, not Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ... after its own last records
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=args.fd)
    writer = HistorianWriter(args.url, spool_dir=args.spool_dir)
    try:
        writer.start()
    except Misconfigured as exc:
        _reply(sock, "error", "misconfigured", str(exc))
        return 2
    except HistorianError as exc:
        _reply(sock, "error", "historian", str(exc))
        return 2
    _reply(sock, "ready", writer.stats())
    try:
        return serve(sock, writer)
    except (BrokenPipeError, ConnectionResetError):
        writer.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
