"""The historian writer's no-loss machinery on SQLite: queue full, outage, close, restart.

The database is a real SQLite file; a thin subclass only makes it slow (writes wait on a
gate), unavailable (writes raise :class:`Unavailable`) or refuse one row, on the test's
command. Waits are on conditions, never on sleeps; no timing is asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from dbhelpers import wait_for

from gateway.errors import HistorianError
from gateway.historian import ChannelInfo, HistorianWriter, RunInfo, Unavailable, open_backend
from gateway.historian.base import Rejected
from gateway.historian.schema import Row
from gateway.historian.spool import Spool, decode_payload
from gateway.historian.sqlite import SqliteBackend

M = 8


class ControlledSqlite(SqliteBackend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.down = threading.Event()
        self.reject_seq: int | None = None

    def _write(self, batch: Mapping[str, Sequence[Row]]) -> None:
        self.entered.set()
        self.gate.wait()
        if self.down.is_set():
            raise Unavailable("test: database down")
        if self.reject_seq is not None and any(
                r[1] == self.reject_seq for r in batch.get("measurements", ())):
            raise Rejected(f"test: seq {self.reject_seq} refused")
        super()._write(batch)


def put(w: HistorianWriter, seqs: range) -> None:
    for k in seqs:
        w.put_measurements(k, 1000.0 + k, 1000.0 + k, np.full(M, float(k)),
                           np.zeros(M, np.uint32))


def stored_seqs(url: str) -> list[int]:
    db = open_backend(url)
    try:
        return [int(r[0]) for r in db.query("SELECT seq FROM measurements ORDER BY id")]
    finally:
        db.close()


def make(tmp_path: Path, **kw: object) -> tuple[str, ControlledSqlite, HistorianWriter]:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    be = ControlledSqlite(url)
    w = HistorianWriter(url, backend=be, spool_dir=tmp_path / "spool", linger_s=0,
                        backoff_s=(0.005, 0.02), **kw)  # type: ignore[arg-type]
    w.start()
    w.start_run(RunInfo(channels=[ChannelInfo(i, f"c{i}") for i in range(M)]))
    assert w.flush(20)
    return url, be, w


def test_slow_database_spools_instead_of_queueing_unbounded(tmp_path: Path) -> None:
    url, be, w = make(tmp_path, max_queue=8)
    before = w.stats()  # the run rows (9) overflowed the queue already
    be.gate.clear()
    be.entered.clear()
    put(w, range(0, 1))
    assert be.entered.wait(20)  # the writer holds row 0 and waits for the database
    put(w, range(1, 300))  # never blocks: 8 rows queue, the rest go to disk
    st = w.stats()
    assert st.queue_depth == 8 and st.spool_records == 291
    assert st.spooled - before.spooled == 291 and st.queue_full - before.queue_full == 291
    be.gate.set()
    assert w.flush(30)
    st = w.stats()
    assert st.replayed - before.replayed == 291 and st.spool_records == 0
    assert st.committed == st.accepted
    assert stored_seqs(url) == list(range(300))
    w.close()
    assert (tmp_path / "spool" / "spool.log").stat().st_size == 0


def test_outage_moves_memory_to_disk_and_replays_in_order(tmp_path: Path) -> None:
    url, be, w = make(tmp_path, max_queue=1000)
    be.down.set()
    put(w, range(0, 50))
    wait_for(lambda: w.stats().db_errors >= 2)
    put(w, range(50, 100))
    st = w.stats()
    assert st.queue_depth == 0 and st.spool_records == 100  # nothing waits in memory
    be.down.clear()
    put(w, range(100, 120))
    assert w.flush(30)
    assert stored_seqs(url) == list(range(120))
    assert w.stats().connects >= 1
    w.close()


def test_close_during_outage_keeps_memory_rows_ahead_of_the_spool(tmp_path: Path) -> None:
    url, be, w = make(tmp_path, max_queue=4, batch_rows=3)
    be.gate.clear()
    be.entered.clear()
    put(w, range(0, 3))
    assert be.entered.wait(20)  # batch 0..2 in flight
    put(w, range(3, 20))  # 3..6 queue, 7..19 spool
    be.down.set()
    be.gate.set()  # the in-flight batch fails: it and the queue are older than the spool
    wait_for(lambda: w.stats().db_errors >= 1)
    assert not w.close(timeout=0.05)
    with pytest.raises(HistorianError):
        put(w, range(20, 21))
    assert Spool(tmp_path / "spool").records == 20  # everything accepted is on disk

    # restart: the next writer on the same spool replays first, in order
    be2 = ControlledSqlite(url)
    w2 = HistorianWriter(url, backend=be2, spool_dir=tmp_path / "spool", linger_s=0).start()
    assert w2.stats().accepted == 20
    w2.start_run(RunInfo(channels=[ChannelInfo(i, f"c{i}") for i in range(M)]), run_id=7)
    put(w2, range(100, 105))
    assert w2.flush(30)
    w2.close()
    seqs = stored_seqs(url)
    assert seqs == list(range(20)) + list(range(100, 105))


def test_rejected_rows_are_isolated_and_kept(tmp_path: Path) -> None:
    url, be, w = make(tmp_path, batch_rows=50)
    be.reject_seq = 13
    put(w, range(30))
    assert w.flush(30)
    st = w.stats()
    assert st.rejected == 1 and st.committed + st.rejected == st.accepted
    assert stored_seqs(url) == [k for k in range(30) if k != 13]
    w.close()
    raw = (tmp_path / "spool" / "rejected.log").read_bytes()  # spool record format
    kind, row = decode_payload(raw[8:])
    assert (kind, row[1]) == ("measurements", 13)


def test_misuse_is_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    w = HistorianWriter(url, spool_dir=tmp_path / "spool")
    with pytest.raises(HistorianError, match="not running"):
        w.start_run(RunInfo())
    w.start()
    with pytest.raises(HistorianError, match="start_run"):
        put(w, range(1))
    with pytest.raises(HistorianError, match="in use"):
        HistorianWriter(url, spool_dir=tmp_path / "spool").start()
    assert w.close()
    HistorianWriter(url, spool_dir=tmp_path / "spool").start().close()  # lock released


def test_deferred_snapshot_and_state_rows_survive_an_outage_in_order(tmp_path: Path) -> None:
    """put_snapshot / put_state queue unencoded rows (the writer thread encodes them);
    they keep the FIFO and no-loss guarantees: outage -> spool -> replay, in order."""
    from gateway.historian import HistorianReader

    url, be, w = make(tmp_path, max_queue=6, batch_rows=4)
    be.down.set()
    for k in range(10):
        raw_f = np.zeros(M, np.uint32)
        raw_f[k % M] = 1  # BAD
        w.put_snapshot(k, 1000.0 + k, 1000.5 + k, np.full(M, float(k)), raw_f,
                       np.full(M, k + 0.5), raw_f | 4)
        w.put_state(k, 1000.0 + k, np.full(3, 1.0 + k / 100), np.zeros(3), chi2=float(k),
                    timings={"e2e_s": 0.001})
    wait_for(lambda: w.stats().db_errors >= 1)
    be.down.clear()
    assert w.flush(30)
    st = w.stats()
    assert st.committed == st.accepted and st.spool_records == 0
    assert stored_seqs(url) == list(range(10))
    w.close()
    with HistorianReader(url) as rd:
        cor = rd.measurements(corrected=True)
        np.testing.assert_array_equal(cor.values[:, 0], np.arange(10) + 0.5)
        assert ((cor.flags & 5) == 5).sum() == 10
        states = rd.states()
        np.testing.assert_allclose(states.vm[:, 0], 1.0 + np.arange(10) / 100)
