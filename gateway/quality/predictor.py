"""The measurement predictor in a child process, and the quality stage's error type.

The BiLSTM's ONNX Runtime call is the slowest part of cleaning a snapshot; run in its own
process (``python -m models.serve``) it overlaps the gateway's ingest on the other core.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gateway.errors import GatewayError
from models.runtime import READY, READY_MSG


class QualityError(GatewayError):
    """The quality stage cannot be set up (models missing, config and card disagree)."""


#: how long process() waits for the predictor process's answer before predicting itself
REMOTE_TIMEOUT_S = 0.25
#: how long the predictor process may take to load the model and say READY
REMOTE_START_TIMEOUT_S = 60.0


class PredictorProcess:
    """The measurement predictor in a child process (``python -m models.serve``).

    One request in flight at a time: :meth:`request` sends the windows, :meth:`poll`
    (non-blocking) or :meth:`wait` (bounded) reads the outputs into the caller's array.
    Raises :class:`QualityError` when the child cannot start or breaks the protocol.
    """

    def __init__(self, batch: int, window: int, models_dir: Path | str | None = None,
                 model: str = "predictor") -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "models.serve", "--fd", str(child.fileno()),
               "--model", model, "--batch", str(batch)]
        if models_dir is not None:
            cmd += ["--models-dir", str(models_dir)]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),),
                                         stdin=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            raise QualityError(f"cannot start the predictor process: {exc}") from exc
        finally:
            child.close()
        self.sock = parent
        self.batch = batch
        self.n_out = 4 * batch
        self.pending = False
        try:
            ready, _, _ = select.select([parent], [], [], REMOTE_START_TIMEOUT_S)
            msg = parent.recv(64) if ready else b""
        except OSError:
            msg = b""
        if len(msg) != READY_MSG.size or READY_MSG.unpack(msg) != (READY, batch, window):
            self.close()
            raise QualityError(f"predictor process did not become ready (got {msg[:80]!r})")
        parent.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, windows: np.ndarray) -> None:
        """Send the float32 ``(batch, window, 1)`` windows (never blocks: one in flight)."""
        try:
            self.sock.send(windows.data.cast("B"))
        except OSError as exc:
            raise QualityError(f"predictor process: send failed: {exc}") from exc
        self.pending = True

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

    def wait(self, out: np.ndarray, timeout: float) -> None:
        """Block until the answer is in ``out``; QualityError after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not self.poll(out):
            left = end - time.monotonic()
            if left <= 0:
                raise QualityError(f"predictor process silent for {timeout * 1e3:.0f} ms")
            select.select([self.sock], [], [], left)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=2.0)  # EOF on its socket ends it
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
