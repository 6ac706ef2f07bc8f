"""Historian honesty on real SQLite files (and the real MariaDB where it is configured):
permanent errors stop the start-up with one clear line and exit status 2, secrets never
reach the runs table nor the reported error, and the writer's state is on /metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from dbhelpers import wait_for

from gateway.historian import (
    ChannelInfo,
    HistorianWriter,
    Misconfigured,
    RunInfo,
    open_backend,
)
from gateway.historian.redact import redact
from gateway.historian.sqlite import SqliteBackend
from gateway.historian.telemetry import metrics_hook
from gateway.metrics import Metrics

M = 4
SECRET = "s3cr3t-pw"


def _metric(m: Metrics, name: str) -> float:
    for line in m.exposition().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "ieee33", "--no-estimator",
         "--no-quality", "--metrics-bind", "", "--seconds", "30", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_unwritable_sqlite_path_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    url = f"sqlite:///{tmp_path / 'afile' / 'twin.db'}"
    w = HistorianWriter(url, spool_dir=tmp_path / "spool")
    with pytest.raises(Misconfigured, match="afile"):
        w.start()
    # nothing left behind: the spool lock is free for the next (fixed) attempt
    ok = HistorianWriter(f"sqlite:///{tmp_path / 'twin.db'}", spool_dir=tmp_path / "spool")
    ok.start()
    assert ok.stats().connected
    assert ok.close()


def test_a_database_file_that_is_not_one_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "twin.db"
    bogus.write_bytes(b"this is not an SQLite database, it is text " * 100)
    with pytest.raises(Misconfigured, match=r"twin\.db"):
        HistorianWriter(f"sqlite:///{bogus}", spool_dir=tmp_path / "spool").start()


def test_spool_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "spool").write_text("a file where the spool directory should be")
    w = HistorianWriter(f"sqlite:///{tmp_path / 'twin.db'}", spool_dir=tmp_path / "spool")
    with pytest.raises(Misconfigured, match="spool"):
        w.start()


def test_cli_exits_2_with_one_line_on_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    r = _cli("--historian", f"sqlite:///{tmp_path / 'afile' / 'twin.db'}",
             "--spool-dir", str(tmp_path / "spool"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("gridtwin run: cannot start:") and "afile" in last
    assert "Traceback" not in r.stderr
    r = _cli("--historian", f"sqlite:///{tmp_path / 'twin.db'}", "--spool-dir",
             str(tmp_path / "afile"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "spool" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def _mysql_base() -> str:
    base = os.environ.get("GRIDTWIN_MYSQL_URL")
    if not base:
        import dbhelpers

        pytest.skip(dbhelpers.MYSQL_SKIP)
    return base


def _with_password(base: str, password: str) -> str:
    parts = urlsplit(base)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or "root"
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


@pytest.mark.mysql
def test_access_denied_is_refused_not_spooled(tmp_path: Path) -> None:
    base = _mysql_base()
    url = _with_password(base, "wrong-" + SECRET)
    w = HistorianWriter(url, spool_dir=tmp_path / "spool")
    with pytest.raises(Misconfigured, match="Access denied") as info:
        w.start()
    assert SECRET not in str(info.value)
    r = _cli("--historian", url, "--spool-dir", str(tmp_path / "spool2"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Access denied" in last and "Traceback" not in r.stderr
    assert SECRET not in r.stderr


def test_runs_table_stores_the_config_without_secrets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    config = (
        '[historian]\nurl = "mysql://twin:' + SECRET + '@db.lab:3306/twin"\n'
        '[bus]\nurl = "nats://' + SECRET + '@127.0.0.1:4222"\n'
        '[sensors]\nurl = "mqtt://lab:' + SECRET + '@broker:1883"\n'
        'password = "' + SECRET + '"\napi_token = \'' + SECRET + '\'\n'
        'auth = { user = "lab", secret = "' + SECRET + '" }\n'
        'rate_hz = 50\n')
    with HistorianWriter(url, spool_dir=tmp_path / "spool") as w:
        w.start_run(RunInfo(name="lab", config_toml=config,
                            channels=[ChannelInfo(i, f"c{i}") for i in range(M)]))
        assert w.flush(30)
    db = open_backend(url)
    try:
        ((stored,),) = db.query("SELECT config_toml FROM runs")
    finally:
        db.close()
    assert SECRET not in stored
    # the rest stays readable: what the run talked to, which keys were set
    for kept in ("mysql://twin:***@db.lab:3306/twin", "nats://***@127.0.0.1:4222",
                 "mqtt://lab:***@broker:1883", 'password = "***"', "rate_hz = 50",
                 'user = "lab"'):
        assert kept in stored, kept
    assert stored == redact(config)


def test_reported_error_has_no_password(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mysql://twin:{SECRET}@127.0.0.1:{port}/twin?connect_timeout=2"
    w = HistorianWriter(url, spool_dir=tmp_path / "spool", backoff_s=(0.01, 0.05)).start()
    try:
        w.start_run(RunInfo(channels=[ChannelInfo(i, f"c{i}") for i in range(M)]))
        wait_for(lambda: w.stats().db_errors >= 2)
        st = w.stats()
        assert st.last_error and "***" in st.last_error and SECRET not in st.last_error
        assert not st.connected
    finally:
        w.close(timeout=0.05)


def test_metrics_follow_an_outage_and_the_replay(tmp_path: Path) -> None:
    """An outage on a real SQLite file: another connection holds it locked, every commit
    of the writer fails (busy) until it lets go. /metrics shows it: up 0, errors and the
    spool growing, then the replay and up 1 again."""
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    m = Metrics()
    w = HistorianWriter(url, spool_dir=tmp_path / "spool", backoff_s=(0.01, 0.05),
                        backend=SqliteBackend(url, busy_timeout_s=0.05))
    w.start()
    m.before_scrape.append(metrics_hook(m, w))
    w.start_run(RunInfo(channels=[ChannelInfo(i, f"c{i}") for i in range(M)]))
    assert w.flush(30)
    assert _metric(m, "gridtwin_historian_up") == 1.0
    assert _metric(m, "gridtwin_historian_committed_total") == 1 + M
    assert _metric(m, "gridtwin_historian_last_commit_timestamp_seconds") > 0

    import sqlite3

    locker = sqlite3.connect(tmp_path / "twin.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # every write of the historian now fails (busy)
    try:
        for k in range(50):
            w.put_measurements(k, float(k), float(k), np.full(M, 1.0), np.zeros(M, np.uint32))
        wait_for(lambda: w.stats().db_errors >= 2 and w.stats().spool_records >= 50)
        assert _metric(m, "gridtwin_historian_up") == 0.0
        assert _metric(m, "gridtwin_historian_errors_total") >= 2
        assert _metric(m, "gridtwin_historian_spool_records") >= 50
        assert _metric(m, "gridtwin_historian_spool_bytes") > 0
        assert _metric(m, "gridtwin_historian_spooled_total") >= 50
        assert _metric(m, "gridtwin_historian_replayed_total") == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert w.flush(30)
    assert _metric(m, "gridtwin_historian_up") == 1.0
    assert _metric(m, "gridtwin_historian_spool_records") == 0
    assert _metric(m, "gridtwin_historian_replayed_total") >= 50
    assert _metric(m, "gridtwin_historian_committed_total") == 1 + M + 50
    assert w.close()
