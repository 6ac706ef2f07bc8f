"""The historian writer in its own process (``gateway.historian.remote``) stores exactly
what the in-process writer stores, and reports its counters back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_historian_roundtrip import BUSES, CHANNELS, METERS, T0

from gateway.errors import HistorianError
from gateway.historian import HistorianWriter
from gateway.historian.base import Misconfigured
from gateway.historian.remote import HistorianProcess
from gateway.historian.schema import TABLES
from gateway.historian.writer import RunInfo

INFO = RunInfo(name="ieee33", config_digest="d1g", config_toml="[x]\ny=1", version="0.1.0",
               channels=CHANNELS, meters=METERS, bus_ids=BUSES, base_kv=[12.66] * 3)


def _feed(w: Any, n: int = 30) -> None:
    """Every kind of put the gateway makes, with flagged values, NaNs and a topology."""
    rng = np.random.default_rng(7)
    w.start_run(INFO, started=T0 - 1, run_id=123)
    for k in range(n):
        t = T0 + k * 0.001
        raw = rng.normal(size=4)
        raw[k % 4] = np.nan
        flags = np.array([0, 8 if k % 3 == 0 else 0, 1, 0], np.uint32)
        w.put_snapshot(k, t, t + 1e-4, raw, flags, raw * 2, flags | 4)
        if k % 2:
            w.put_state(k, t, rng.normal(1.0, 0.01, 3), rng.normal(0, 0.1, 3),
                        chi2=None if k == 5 else 1.5 * k, iterations=3, converged=k != 7,
                        deadline_met=k % 5 != 0, timings={"e2e_s": 1e-3, "solve_s": np.nan},
                        topology="sw_7_8=open" if k > 20 else "normal")
        if k % 10 == 0:
            w.put_forecasts(k, t, {"pv8": 0.5, "pv25": float("nan")}, {"pv8": 0.1,
                                                                          "pv25": 0.2})
            w.put_measurements(k + 1000, t, t, raw, flags)
            w.put_event(t, "bad_data", "quality", {"seq": k, "channels": [1, 2]})


def _dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows without the columns a clock fills (ids, event numbers)."""
    con = sqlite3.connect(db)
    out = {}
    for t in TABLES:
        cols = [c for c in t.names if c not in ("event_no",)]
        out[t.name] = sorted(con.execute(f"SELECT {', '.join(cols)} FROM {t.name}"),
                             key=repr)
    con.close()
    return out


def test_the_process_stores_what_the_thread_stores(tmp_path: Path) -> None:
    with HistorianWriter(f"sqlite:///{tmp_path / 'a.db'}", spool_dir=tmp_path / "sa") as w:
        _feed(w)
    p = HistorianProcess(f"sqlite:///{tmp_path / 'b.db'}", spool_dir=tmp_path / "sb")
    p.start()
    try:
        _feed(p)
        assert p.flush(30)
        st = p.stats()
        assert st.connected and st.committed == st.accepted > 0 and st.queue_depth == 0
    finally:
        assert p.close()
    a, b = _dump(tmp_path / "a.db"), _dump(tmp_path / "b.db")
    assert all(a[t] for t in ("measurements", "corrected", "flagged", "states",
                              "forecasts", "events", "channels"))
    assert a == b
    assert p.pid is not None
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(p.pid, 0)  # the child is gone after close()
    with pytest.raises(HistorianError):
        p.put_event(T0, "late", "test")


def test_a_misconfigured_historian_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    p = HistorianProcess(f"sqlite:///{tmp_path / 'c.db'}", spool_dir=tmp_path / "file")
    with pytest.raises(Misconfigured, match="spool"):
        p.start()


def test_puts_before_a_run_are_refused(tmp_path: Path) -> None:
    p = HistorianProcess(f"sqlite:///{tmp_path / 'd.db'}", spool_dir=tmp_path / "sd")
    p.start()
    try:
        with pytest.raises(HistorianError, match="start_run"):
            p.put_event(T0, "x", "y")
    finally:
        p.close()
