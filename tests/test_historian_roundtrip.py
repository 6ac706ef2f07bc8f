"""Round trip of every historian table, on SQLite and on the real MariaDB.

The MySQL case needs ``GRIDTWIN_MYSQL_URL`` (e.g. ``mysql://root@127.0.0.1:3306/test``); it
works in a scratch database created and dropped around each test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dbhelpers
import numpy as np
import pytest

from gateway.historian import (
    ChannelInfo,
    HistorianReader,
    HistorianWriter,
    MeterInfo,
    RunInfo,
    open_backend,
)
from gateway.historian.schema import TABLES

CHANNELS = [
    ChannelInfo(0, "pmu1.vm", "pmu1", "pmu", "vm", "kV", bus=1),
    ChannelInfo(1, "pmu1.va", "pmu1", "pmu", "va", "rad", bus=1),
    ChannelInfo(2, "sc7.p", "sc7", "scada", "p", "MW", branch=6, end=7),
    ChannelInfo(3, "sc7.q", "sc7", "scada", "q", "MVAr", branch=6, end=7),
]
METERS = [MeterInfo("pmu1", "pmu", bus=1, quantities=("vm", "va")),
          MeterInfo("sc7", "scada", branch=6, end=7, quantities=("p", "q"))]
BUSES = [1, 2, 18]
T0 = 1_795_000_000.0


def mysql_scratch() -> Iterator[str]:
    for base, db in dbhelpers.mysql_scratch():
        yield urlsplit(base)._replace(path="/" + db).geturl()


@pytest.fixture(params=["sqlite", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'twin.db'}"
    else:
        yield from mysql_scratch()


def write_sample(url: str, spool: Path, n: int = 20) -> int:
    with HistorianWriter(url, spool_dir=spool) as w:
        rid = w.start_run(RunInfo(name="ieee33", config_digest="d1g", config_toml="[x]\ny=1",
                                  version="0.1.0", channels=CHANNELS, meters=METERS,
                                  bus_ids=BUSES, base_kv=[12.66] * 3, note="rt"),
                          started=T0 - 1)
        for k in range(n):
            t = T0 + k * 0.02
            vals = np.array([12.6 + k, 0.01 * k, 1.5, -0.2])
            flags = np.zeros(4, np.uint32)
            if k % 5 == 0:
                flags[2] = 1  # BAD on sc7.p
            w.put_measurements(k, t, t + 0.003, vals, flags)
            w.put_corrected(k, t, vals + 0.5, flags * 4)
            w.put_state(k, t, np.array([1.0, 0.99, 0.95 - k * 1e-3]), np.array([0, -0.01, -0.05]),
                        chi2=float("nan") if k == 0 else 3.5, iterations=1,
                        deadline_met=k != 3, timings={"se": 4e-4, "total": 9e-4})
            w.put_forecasts(k, t, {"pv8": 0.4 + k / 100, "pv16": 0.3}, {"pv8": 0.05, "pv16": 0.1},
                            step=1, target_time=t + 900)
        w.put_event(T0 + 0.06, "deadline_missed", "estimator", {"seq": 3, "late_ms": 2.5})
        w.put_event(T0 + 0.1, "stream_gap", "udp://0.0.0.0:7100", {"missing": [5, 6]})
        assert w.flush(30)
        st = w.stats()
        assert st.committed == st.accepted and st.rejected == 0
    return rid


def test_every_table_round_trips(url: str, tmp_path: Path) -> None:
    rid = write_sample(url, tmp_path / "spool")
    db = open_backend(url)
    counts = {t.name: db.query(f"SELECT COUNT(*) FROM {t.name}")[0][0] for t in TABLES}
    assert counts == {"runs": 1, "meters": 2, "channels": 4, "buses": 3, "measurements": 20,
                      "corrected": 20, "flagged": 8, "forecasts": 20, "states": 20,
                      "events": 2, "devices": 0}
    assert db.query("SELECT name, config_digest, config_toml, n_channels, n_buses FROM runs"
                    ) == [("ieee33", "d1g", "[x]\ny=1", 4, 3)]
    assert db.query("SELECT meter, kind, bus, branch, end_bus, quantities FROM meters "
                    "ORDER BY meter") == [("pmu1", "pmu", 1, None, None, "vm,va"),
                                          ("sc7", "scada", None, 6, 7, "p,q")]
    db.close()

    with HistorianReader(url) as r:
        assert r.latest_run() == rid
        assert [c["name"] for c in r.channels(rid)] == [c.name for c in CHANNELS]
        assert r.bus_ids(rid) == BUSES
        m = r.measurements(T0, T0 + 0.1)
        assert m.names == [c.name for c in CHANNELS]
        assert m.seq.tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(m.values[:, 0], 12.6 + np.arange(5))
        ts = [T0 + k * 0.02 for k in range(5)]
        assert m.source_time.tolist() == ts  # float64 epoch seconds, bit-exact
        assert m.arrival_time.tolist() == [t + 0.003 for t in ts]
        assert m.flags[0].tolist() == [0, 0, 1, 0]
        c = r.measurements(corrected=True)
        assert len(c) == 20 and np.isnan(c.arrival_time).all()
        np.testing.assert_allclose(c.values[:, 2], 2.0)
        assert c.flags[5, 2] == 4

        s = r.states()
        assert s.bus_ids == BUSES and len(s) == 20
        assert math.isnan(s.chi2[0]) and s.chi2[1] == 3.5  # NaN stored as NULL
        assert s.deadline_met.tolist().count(False) == 1
        _t, vm, va = r.bus_voltage(18, T0, T0 + 3600)
        assert vm.tolist() == [0.95 - k * 1e-3 for k in range(20)]  # JSON floats are exact
        assert va.tolist() == [-0.05] * 20
        np.testing.assert_array_equal(s.vm[:, 2], vm)

        bad = r.bad_data("sc7")
        assert [b["seq"] for b in bad] == [0, 5, 10, 15]
        assert {b["channel"] for b in bad} == {"sc7.p"} and bad[0]["value"] == 1.5
        assert r.bad_data("pmu1") == []
        assert len(r.bad_data("sc7", mask=4)) == 4  # the corrected stage

        ev = r.events(kind="deadline_missed")
        assert len(ev) == 1 and ev[0]["detail"] == {"seq": 3, "late_ms": 2.5}
        fc = r.forecasts(plant="pv8")
        assert len(fc) == 20 and fc[0]["target_time"] == pytest.approx(T0 + 900)
        assert fc[0]["step"] == 1 and fc[3]["p_mw"] == 0.4 + 3 / 100 and fc[3]["sigma_mw"] == 0.05
        assert len(r.forecasts()) == 40

        td = r.training_data()
        assert td.raw.shape == (20, 4) and td.vm.shape == (20, 3)
        np.testing.assert_allclose(td.corrected - td.raw, 0.5)


def test_replay_is_idempotent(url: str, tmp_path: Path) -> None:
    """A batch whose commit outcome was unknown is written again: no duplicates."""
    rid = write_sample(url, tmp_path / "spool", n=3)
    db = open_backend(url)
    from gateway.historian.schema import expand

    batch: dict[str, list[tuple[object, ...]]] = {}
    row = db.query("SELECT run_id, seq, source_time, arrival_time, n, nflagged, vals, flags "
                   "FROM measurements WHERE seq = 0")[0]
    expand("measurements", tuple(bytes(v) if isinstance(v, bytes | bytearray) else v
                                 for v in row), batch)
    db.write(batch)
    db.write(batch)
    assert db.query("SELECT COUNT(*) FROM measurements WHERE run_id = ?", (rid,))[0][0] == 3
    assert db.query("SELECT COUNT(*) FROM flagged WHERE run_id = ?", (rid,))[0][0] == 2
    db.close()


def test_export_and_cli(url: str, tmp_path: Path) -> None:
    import pandas as pd

    from gateway.cli import main

    write_sample(url, tmp_path / "spool")
    out = tmp_path / "states.parquet"
    assert main(["history", "states", "--db", url, "--from", str(T0),
                 "--to", str(T0 + 0.2), "-o", str(out)]) == 0
    df = pd.read_parquet(out)
    assert len(df) == 10 and "vm_18" in df.columns and "va_1" in df.columns
    csv = tmp_path / "m.csv"
    assert main(["history", "measurements", "--db", url, "--corrected", "-o", str(csv)]) == 0
    df = pd.read_csv(csv)
    assert len(df) == 20 and "sc7.p.flags" in df.columns
    iso = "2026-11-18T00:00:00"  # T0 is 2026-11-18 11:06 UTC
    assert main(["history", "buses", "--db", url, "--bus", "18", "--from", iso,
                 "-o", str(tmp_path / "b.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "b.csv")) == 20
    for kind in ("events", "forecasts", "flagged", "runs"):
        assert main(["history", kind, "--db", url, "-o", str(tmp_path / f"{kind}.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "events.csv")) == 2
    ev = pd.read_csv(tmp_path / "events.csv")
    assert json.loads(ev["detail"][0]) == {"seq": 3, "late_ms": 2.5}


def test_documented_queries(url: str, tmp_path: Path) -> None:
    from gateway.historian.schema import example_queries

    rid = write_sample(url, tmp_path / "spool")
    db = open_backend(url)
    q = example_queries(db.dialect)
    rows = db.query(q["bus_voltage"], (18, T0, T0 + 3600))
    assert [r[1] for r in rows] == [0.95 - k * 1e-3 for k in range(20)]
    assert [r[2] for r in rows] == [-0.05] * 20
    rows = db.query(q["bad_data_of_meter"], ("sc7",))
    expect = [(k, "sc7.p", 1.5, 1) for k in (0, 5, 10, 15)]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == expect
    rows = db.query(q["snapshot_state"], (rid, 3))
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, 1.0, 0.0), (2, 0.99, -0.01),
                                                    (18, 0.95 - 3e-3, -0.05)]
    assert rows[0][3] == 3.5 and rows[0][4] == 0
    assert db.query(q["latest_run"])[0][:2] == (rid, "ieee33")
    rows = db.query(q["plant_forecast"], (T0, T0 + 3600))
    assert [r[1] for r in rows] == [0.4 + k / 100 for k in range(20)]
    db.close()
