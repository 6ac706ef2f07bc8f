"""The measurement predictor in a child process, and the quality stage's error type.

The BiLSTM's ONNX Runtime call is the slowest part of cleaning a snapshot; run in its own
process (``python -m models.serve``) it overlaps the gateway's ingest on the other core.
The child is a worker of :mod:`gateway.workers` (socket pair, READY handshake with a
timeout, kill); when it dies the quality stage predicts in-process (same model, same
numbers) and :class:`PredictorKeeper` starts a new one after a back-off delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.errors import GatewayError
from gateway.workers import Backoff, WorkerError, WorkerSpec, start_blocking
from models.runtime import READY, READY_MSG

log = logging.getLogger("gridtwin.quality")


class QualityError(GatewayError):
    """The quality stage cannot be set up (models missing, config and card disagree)."""


#: how long process() waits for a late answer of the predictor process before predicting
#: in-process (same model, same numbers; about 0.3 ms of the gateway's CPU): a snapshot's
#: latency never waits longer than that for the child, whose CPU it shares with the
#: estimator. The late answer is read and dropped when it comes.
LATE_WAIT_S = 3e-4
#: a child that has not answered a request for this long is given up (and restarted)
REMOTE_TIMEOUT_S = 0.25
#: how long the predictor process may take to load the model and say READY
REMOTE_START_TIMEOUT_S = 60.0
#: consecutive failed restarts after which the predictor process is given up for good
#: (the model does not load there: retrying would only spend a core on it)
MAX_FAILED_STARTS = 3


def predictor_spec(batch: int, window: int, models_dir: Path | str | None = None,
                   model: str = "predictor") -> WorkerSpec:
    """The worker spec of ``python -m models.serve``: READY is ``models.runtime``'s
    ``READY_MSG`` with this batch and window (a child bound to another shape is not
    ready)."""
    args = ["--model", model, "--batch", str(batch)]
    if models_dir is not None:
        args += ["--models-dir", str(models_dir)]

    def is_ready(msg: bytes) -> bool:
        return len(msg) == READY_MSG.size and READY_MSG.unpack(msg) == (READY, batch, window)

    return WorkerSpec("models.serve", args, is_ready=is_ready)


class PredictorProcess:
    """The measurement predictor in a child process (``python -m models.serve``).

    One request in flight at a time: :meth:`request` sends the windows, :meth:`poll`
    (non-blocking) or :meth:`wait` (bounded) reads the outputs into the caller's array.
    Raises :class:`QualityError` when the child cannot start or breaks the protocol.
    """

    def __init__(self, batch: int, window: int, models_dir: Path | str | None = None,
                 model: str = "predictor") -> None:
        try:
            self.worker = start_blocking(predictor_spec(batch, window, models_dir, model),
                                         timeout=REMOTE_START_TIMEOUT_S)
        except WorkerError as exc:
            raise QualityError(f"predictor process: {exc}") from exc
        self.proc = self.worker.proc
        self.sock = self.worker.sock
        self.batch = batch
        self.n_out = 4 * batch
        self.pending = False
        self.sent_at = 0.0  # time.monotonic() of the request in flight
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, windows: np.ndarray) -> None:
        """Send the float32 ``(batch, window, 1)`` windows (never blocks: one in flight)."""
        try:
            self.sock.send(windows.data.cast("B"))
        except OSError as exc:
            raise QualityError(f"predictor process: send failed: {exc}") from exc
        self.pending = True
        self.sent_at = time.monotonic()

    def poll(self, out: np.ndarray) -> bool:
        """Read the answer into ``out`` (float32, ``batch`` values) if it is there."""
        try:
            msg = self.sock.recv(self.n_out + 256)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise QualityError(f"predictor process: receive failed: {exc}") from exc
        if len(msg) != self.n_out:
            raise QualityError("predictor process closed its socket" if not msg else
                               f"predictor process answered {msg[:120]!r}")
        out[:] = np.frombuffer(msg, np.float32)
        self.pending = False
        return True

    def wait(self, out: np.ndarray, timeout: float) -> bool:
        """Block until the answer is in ``out`` (True), at most ``timeout`` seconds
        (False: it is still pending)."""
        end = time.monotonic() + timeout
        while not self.poll(out):
            left = end - time.monotonic()
            if left <= 0:
                return False
            select.select([self.sock], [], [], left)
        return True

    def silent_for(self, now: float) -> float:
        """Seconds the request in flight has waited at ``now`` (monotonic); 0 if none."""
        return now - self.sent_at if self.pending else 0.0

    def close(self) -> None:
        """Close the socket (EOF ends the child), kill it if it lingers."""
        self.worker.close()


def late_hook(counter: Any, stage: Any) -> Callable[[], None]:
    """A no-argument function that adds to ``counter`` (a Prometheus counter) what
    ``stage.late_answers`` grew by since the last call: the gateway calls it before every
    exposition (``Metrics.before_scrape``), so nothing is counted on the snapshot's path."""
    from gateway.metrics import follower

    follow = follower(counter)
    return lambda: follow(int(stage.late_answers))


class RestartableStage(Protocol):
    """What :class:`PredictorKeeper` needs of the quality stage."""

    remote: PredictorProcess | None

    def start_remote(self) -> PredictorProcess: ...

    def adopt_remote(self, remote: PredictorProcess) -> bool: ...

    def collect(self) -> None: ...


#: event(kind, source, detail), as the gateway's event log takes it
EventSink = Callable[[str, str, dict[str, Any]], None]


class PredictorKeeper:
    """Keeps a quality stage's predictor process alive on an asyncio loop.

    Registers the child's socket for the stage's :meth:`collect`; when the stage drops the
    child (:meth:`lost`, the stage's ``on_remote_lost``) it unregisters it and, after the
    :class:`~gateway.workers.Backoff` delay, starts a new child in a thread (loading the
    model takes about a second: the loop goes on ingesting, the stage predicting
    in-process meanwhile) and hands it to the stage (event ``predictor_process_restarted``).
    After :data:`MAX_FAILED_STARTS` starts in a row that fail, it gives up. ``adopt``
    (pid) is called for every child it adopts (the runner gives it its real-time role).
    """

    def __init__(self, stage: RestartableStage, loop: asyncio.AbstractEventLoop,
                 event: EventSink, clock: Callable[[], float] = time.monotonic, *,
                 adopt: Callable[[int], None] | None = None) -> None:
        self.stage = stage
        self.adopt = adopt
        self.loop = loop
        self.event = event
        self.clock = clock
        self.backoff = Backoff()
        self.restarts = 0
        self.failed_starts = 0
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._starting: asyncio.Future[PredictorProcess] | None = None
        self._watched: int | None = None
        if stage.remote is not None:
            self._watch(stage.remote)

    def _watch(self, remote: PredictorProcess) -> None:
        self._watched = remote.fileno()
        self.loop.add_reader(self._watched, self.stage.collect)

    def _unwatch(self) -> None:
        if self._watched is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._watched)
            self._watched = None

    def lost(self, reason: str) -> None:
        """The stage gave up its child (called while the child's socket is still open):
        an event, not an outage, since the stage predicts in-process meanwhile."""
        self._unwatch()
        log.error("predictor process lost (%s): predicting in the gateway until it is "
                  "restarted", reason)
        self.event("predictor_process_lost", "quality", {"reason": reason})
        self._schedule()

    def start_failed(self, reason: str) -> None:
        """The first start failed (the stage has no child): retry as after a failed
        restart."""
        self.failed_starts += 1
        self.lost(reason)

    def _schedule(self) -> None:
        if self.closed or self._timer is not None or self._starting is not None:
            return
        if self.failed_starts >= MAX_FAILED_STARTS:
            log.error("predictor process failed to start %d times: predicting in the "
                      "gateway from now on", self.failed_starts)
            return
        delay = self.backoff.crashed(self.clock())
        self._timer = self.loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self.closed:
            return
        self._starting = self.loop.run_in_executor(None, self.stage.start_remote)
        self._starting.add_done_callback(self._started)

    def _started(self, fut: asyncio.Future[PredictorProcess]) -> None:
        self._starting = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.failed_starts += 1
            log.error("predictor process restart failed: %s", exc)
            self._schedule()
            return
        remote = fut.result()
        if self.closed or not self.stage.adopt_remote(remote):
            remote.close()
            return
        self.failed_starts = 0
        self.restarts += 1
        if self.adopt is not None:
            self.adopt(remote.proc.pid)
        self._watch(remote)
        log.warning("predictor process restarted as pid %d", remote.proc.pid)
        self.event("predictor_process_restarted", "quality",
                   {"pid": remote.proc.pid, "restarts": self.restarts})

    def close(self) -> None:
        """Stop restarting and unregister the socket (the stage closes the child; a
        start still under way closes its child when it completes)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatch()
