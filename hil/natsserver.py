"""Real ``nats-server`` processes for tests, benchmarks and ``gridtwin fleet demo``.

:class:`NatsServer` starts Debian's ``nats-server`` with JetStream on loopback, with its
store in a directory of ours, and waits until the server says it listens (read from its
log, so a port chosen by the server is known without guessing). :func:`cluster` starts
three such servers routed to each other (a JetStream cluster: R3 streams survive the
loss of one node).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from hil.errors import HilError

__all__ = ["NatsServer", "cluster", "free_port", "nats_server_binary"]

_LISTEN = re.compile(rb"Listening for client connections on [^:]+:(\d+)")
_READY = re.compile(rb"Server is ready")


def nats_server_binary() -> str | None:
    """Path of ``nats-server`` (PATH, then /usr/sbin where Debian puts it), or None."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1 (``port=-1``: the server picks one)."""

    def __init__(self, store: Path | None = None, *, port: int = -1, name: str = "gt-0",
                 cluster_port: int | None = None, routes: tuple[int, ...] = (),
                 cluster_name: str = "gridtwin") -> None:
        exe = nats_server_binary()
        if exe is None:
            raise HilError("nats-server is not installed: on Debian or Ubuntu run "
                           "'apt-get install nats-server'")
        self._tmp = None if store is not None else tempfile.TemporaryDirectory(
            prefix="gridtwin-nats-")
        self.store = Path(store if store is not None else self._tmp.name)  # type: ignore[union-attr]
        self.name = name
        self.cmd = [exe, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.store),
                    "-n", name]
        if cluster_port is not None:
            self.cmd += ["--cluster_name", cluster_name,
                         "--cluster", f"nats://127.0.0.1:{cluster_port}"]
            if routes:
                self.cmd += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port
        self.log = b""
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stderr is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log += line
            m = _LISTEN.search(line)
            if m:
                self.port = int(m.group(1))
            if _READY.search(line) and self.port > 0:
                # the server logs to stderr for as long as it runs: a pipe nobody reads
                # fills (64 KiB) and the server blocks on its next log line, with every
                # client waiting on it
                self._reader = threading.Thread(target=self._read_log, daemon=True,
                                                name=f"nats-server-{self.name}-log")
                self._reader.start()
                return self
        self.stop()
        raise HilError(f"nats-server did not start: {self.log.decode(errors='replace')[-800:]}")

    def _read_log(self) -> None:
        """Keep reading the server's log (the last 64 KiB stay in ``log``)."""
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in self.proc.stderr:
                self.log = (self.log + line)[-65536:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5.0)  # the pipe ends with the process
            self._reader = None
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def cluster(root: Path, n: int = 3) -> list[NatsServer]:
    """``n`` routed servers (a JetStream cluster), started; stop them with ``close()``."""
    cports = [free_port() for _ in range(n)]
    servers = [NatsServer(root / f"n{i}", port=free_port(), name=f"gt-{i}",
                          cluster_port=cports[i],
                          routes=tuple(p for j, p in enumerate(cports) if j != i))
               for i in range(n)]
    started: list[NatsServer] = []
    try:
        for s in servers:
            started.append(s.start())
    except HilError:
        for s in started:
            s.close()
        raise
    return servers
