"""MySQL backend against the real MariaDB (``GRIDTWIN_MYSQL_URL``), through a TCP proxy the
test cuts (connections reset, then refused) and restores: no row lost, order kept."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from gateway.historian import SCHEMA_VERSION, ChannelInfo, HistorianWriter, RunInfo, open_backend
from gateway.historian.mysql import parse_mysql_url
from gateway.historian.schema import TABLES

sys.path.insert(0, str(Path(__file__).parent))
import dbhelpers
from dbhelpers import wait_for
from tcpproxy import TcpProxy

pytestmark = pytest.mark.mysql
M = 148  # IEEE33 channel count
N_BUS = 33


@pytest.fixture
def server() -> Iterator[tuple[str, str, int, str]]:
    """``(url template with {port}, host, port, database)`` of a scratch database."""
    for base, db in dbhelpers.mysql_scratch():
        a = parse_mysql_url(base)
        parts = urlsplit(base)
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
        template = parts._replace(
            netloc=f"{userinfo}127.0.0.1:{{port}}", path="/" + db,
            query="connect_timeout=2&read_timeout=5&write_timeout=5").geturl()
        yield template, a["host"], a["port"], db


def direct(template: str, port: int) -> str:
    return template.format(port=port)


class Feed:
    """Writes snapshot rows (raw + state) with consecutive sequence numbers."""

    def __init__(self, w: HistorianWriter) -> None:
        self.w = w
        self.seq = 0
        self.rng = np.random.default_rng(1)

    def put(self, n: int) -> None:
        for _ in range(n):
            t = 1.8e9 + self.seq * 0.02
            self.w.put_measurements(self.seq, t, t, self.rng.random(M), np.zeros(M, np.uint32))
            self.w.put_state(self.seq, t, np.ones(N_BUS), np.zeros(N_BUS))
            self.seq += 1


def check_all_in_order(url: str, n: int) -> None:
    db = open_backend(url)
    try:
        for table in ("measurements", "states"):
            seqs = [int(r[0]) for r in db.query(f"SELECT seq FROM {table} ORDER BY id")]
            assert seqs == list(range(n)), table  # zero lost, none twice, commit order kept
        assert db.query("SELECT COUNT(*) FROM states WHERE n = ?", (N_BUS,))[0][0] == n
    finally:
        db.close()


def run_info() -> RunInfo:
    return RunInfo(name="outage", channels=[ChannelInfo(i, f"c{i}") for i in range(M)],
                   bus_ids=list(range(1, N_BUS + 1)))


def test_schema_created_in_a_new_database(server: tuple[str, str, int, str]) -> None:
    template, _host, port, db = server
    be = open_backend(direct(template, port).replace("127.0.0.1", _host))
    be.connect()  # the database does not exist yet: created, then the schema
    assert be.schema_version() == SCHEMA_VERSION
    tables = {str(r[0]) for r in be.query("SHOW TABLES")}
    assert {t.name for t in TABLES} | {"schema_version"} == tables
    engines = {str(r[0]) for r in be.query(
        "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", (db,))}
    assert engines == {"InnoDB"}
    be.close()
    be.connect()  # idempotent on an existing schema
    assert be.query("SELECT COUNT(*) FROM schema_version")[0][0] == 1
    be.close()


def test_outage_loses_nothing_and_keeps_order(server: tuple[str, str, int, str],
                                              tmp_path: Path) -> None:
    template, host, port, _db = server
    with TcpProxy(host, port) as proxy:
        url = template.format(port=proxy.port)
        w = HistorianWriter(url, spool_dir=tmp_path / "spool", max_queue=64,
                            backoff_s=(0.02, 0.2)).start()
        w.start_run(run_info())
        feed = Feed(w)
        feed.put(100)
        assert w.flush(30)
        assert proxy.accepted >= 1

        proxy.cut()  # the writer's connection is reset, new ones are refused
        assert proxy.resets >= 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        feed.put(300)
        wait_for(lambda: w.stats().db_errors >= 2)  # it noticed, and retried in vain
        feed.put(300)  # rows written during the cut
        during = w.stats()
        assert during.spool_records > 0 and during.queue_depth == 0
        assert during.committed < during.accepted

        proxy.restore()
        feed.put(100)
        assert w.flush(60)
        st = w.stats()
        assert st.committed == st.accepted and st.rejected == 0 and st.spool_records == 0
        assert st.connects >= 2
        assert w.close()
    check_all_in_order(direct(template, port).replace("127.0.0.1", host), feed.seq)


def test_restart_replays_what_the_spool_kept(server: tuple[str, str, int, str],
                                             tmp_path: Path) -> None:
    template, host, port, _db = server
    with TcpProxy(host, port) as proxy:
        url = template.format(port=proxy.port)
        proxy.cut()  # the database is unreachable from the start
        w = HistorianWriter(url, spool_dir=tmp_path / "spool", backoff_s=(0.02, 0.2)).start()
        w.start_run(run_info())
        feed = Feed(w)
        feed.put(200)
        wait_for(lambda: w.stats().db_errors >= 1)
        assert not w.close(timeout=0.05)  # the gateway stops during the outage

        proxy.restore()
        w2 = HistorianWriter(url, spool_dir=tmp_path / "spool").start()
        assert w2.flush(60)
        assert w2.stats().replayed == 1 + M + N_BUS + 2 * 200
        assert w2.close()
    check_all_in_order(direct(template, port).replace("127.0.0.1", host), 200)


def test_hung_database_is_detected_by_a_timeout_and_puts_never_block(
        server: tuple[str, str, int, str], tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP; here the proxy stops forwarding and keeps
    every connection open) is detected by the read/write timeouts: the writer counts an
    error, reports itself disconnected and moves its rows to the spool. Meanwhile every
    put returns: the producer never waits for the stuck commit (the queue fills, the
    rest goes to disk). Once the server answers again everything arrives, in order."""
    template, host, port, _db = server
    with TcpProxy(host, port) as proxy:
        url = template.format(port=proxy.port).replace(
            "read_timeout=5&write_timeout=5", "read_timeout=1&write_timeout=1")
        w = HistorianWriter(url, spool_dir=tmp_path / "spool", max_queue=64,
                            backoff_s=(0.02, 0.2)).start()
        w.start_run(run_info())
        feed = Feed(w)
        feed.put(50)
        assert w.flush(30)
        before = w.stats()
        assert before.connected

        proxy.freeze()  # the server is "stopped": nothing comes back, nothing is reset
        feed.put(400)  # 800 rows: the writer gets stuck on one batch, the rest must go
        during = w.stats()  # somewhere without waiting for it
        assert during.accepted - before.accepted == 800
        assert during.queue_full > before.queue_full and during.spooled > before.spooled
        wait_for(lambda: w.stats().db_errors > before.db_errors)  # the timeout fired
        wait_for(lambda: w.stats().queue_depth == 0)  # the stuck batch went to disk too
        st = w.stats()
        assert not st.connected and st.spool_records > 0
        assert st.committed == before.committed  # nothing got through the stopped server
        assert st.last_error and "timed out" in st.last_error.lower()
        assert proxy.resets == 0  # no reset told the writer: only its timeout did

        proxy.thaw()
        feed.put(50)
        assert w.flush(60)
        st = w.stats()
        assert st.connected and st.committed == st.accepted and st.spool_records == 0
        assert w.close()
    check_all_in_order(direct(template, port).replace("127.0.0.1", host), feed.seq)


def test_hung_database_at_start_is_an_outage_not_a_hang(
        server: tuple[str, str, int, str], tmp_path: Path) -> None:
    """A server that accepts the connection but never greets (stopped): start() gives up
    after the timeout, notes the error and starts spooling; nothing is refused for good."""
    template, host, port, _db = server
    with TcpProxy(host, port) as proxy:
        url = template.format(port=proxy.port).replace(
            "connect_timeout=2&read_timeout=5&write_timeout=5",
            "connect_timeout=1&read_timeout=1&write_timeout=1")
        proxy.freeze()
        w = HistorianWriter(url, spool_dir=tmp_path / "spool", backoff_s=(0.02, 0.2)).start()
        st = w.stats()
        assert not st.connected and st.db_errors == 1 and st.connects == 0
        assert st.last_error and "timed out" in st.last_error.lower()
        w.start_run(run_info())
        feed = Feed(w)
        feed.put(20)
        proxy.thaw()
        assert w.flush(60)
        st = w.stats()
        assert st.connected and st.committed == st.accepted and st.connects >= 1
        assert w.close()
    check_all_in_order(direct(template, port).replace("127.0.0.1", host), feed.seq)
