"""systemd notifications (``Type=notify`` with a watchdog) over a real AF_UNIX datagram
socket, and ``gridtwin run`` under a notify socket: READY=1 once listening, WATCHDOG=1
while running, STOPPING=1 on SIGTERM, and no ``_created`` series on /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import sdnotify
from gateway.sdnotify import SdNotifier, SdNotifyError, socket_address, watchdog_interval_s

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30.0)  # a deadline for every recv: never wait forever
    yield sock, str(path)
    sock.close()


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


def test_socket_address_abstract_namespace() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@gridtwin-test") == "\0gridtwin-test"


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}, 42) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, 42) == 0.5
    # inherited from a parent: meant for another process
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval_s({}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "ten"}, 42) is None


def test_no_notify_socket_no_notifier() -> None:
    assert SdNotifier.from_environ({}) is None
    assert SdNotifier.from_environ({"NOTIFY_SOCKET": ""}) is None


def test_ready_watchdog_stopping_datagrams(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = SdNotifier.from_environ({"NOTIFY_SOCKET": path})
    assert n is not None
    try:
        n.ready("running ieee33")
        assert _fields(sock.recv(4096)) == {"READY": "1", "MAINPID": str(os.getpid()),
                                            "STATUS": "running ieee33"}
        n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        n.close()


def test_abstract_socket() -> None:
    name = f"gridtwin-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30.0)
    n = SdNotifier(f"@{name}")
    try:
        n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        n.close()
        sock.close()


def test_a_missing_socket_raises_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "nobody-listens"
    n = SdNotifier(str(path))
    try:
        with pytest.raises(SdNotifyError, match="nobody-listens"):
            n.watchdog()
    finally:
        n.close()


async def test_the_gateway_helpers_log_a_lost_socket_once_and_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """start/stop never raise: a twin does not stop because systemd's socket vanished."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier, task = sdnotify.start("running test")
    assert notifier is not None and task is not None
    try:
        assert [r for r in caplog.records if "sd_notify" in r.getMessage()]
    finally:
        sdnotify.stop(notifier, task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len([r for r in caplog.records if "sd_notify" in r.getMessage()]) == 1


def _ready_line(proc: subprocess.Popen[str], deadline: float) -> dict[str, object]:
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith('{"ready"'):
            return dict(json.loads(line))
    raise AssertionError(f"gridtwin run never printed its ready line (rc {proc.poll()})")


def test_gridtwin_run_under_a_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gateway.cli", "run", "ieee33", "--no-estimator",
           "--no-quality", "--historian", "none", "--metrics-bind", "127.0.0.1:0",
           "--stream-url", "pmu=udp://127.0.0.1:0", "--stream-url", "scada=udp://127.0.0.1:0",
           "--stream-url", "weather=udp://127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    try:
        ready = _ready_line(proc, time.monotonic() + 120)
        first = _fields(sock.recv(4096))
        assert first["READY"] == "1" and first["MAINPID"] == str(proc.pid)
        assert first["STATUS"] == "running ieee33"
        # the watchdog pings from the event loop, at half of WATCHDOG_USEC
        assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        metrics = ready["metrics"]
        assert isinstance(metrics, list)
        host, port = str(metrics[0]), int(metrics[1])
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        assert "gridtwin_frames_total" in text
        assert "_created" not in text
        proc.send_signal(signal.SIGTERM)
        msgs: list[bytes] = []
        while not msgs or msgs[-1] != b"STOPPING=1":
            msgs.append(sock.recv(4096))
        assert set(msgs[:-1]) <= {b"WATCHDOG=1"}
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
