"""The demo's account of its deadline misses (``deadline_misses_by_stage``), read back
from a real SQLite historian: each late state under its slowest stage, the snapshots
without a state as superseded (or not estimated, when the estimator's FAIL came late),
a FAIL in time as no miss, and the start-up's share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.cli_demo import _miss_causes
from gateway.historian import ChannelInfo, HistorianReader, HistorianWriter, RunInfo

T0 = 1_795_000_000.0
FAST = {"align_s": 5e-5, "clean_s": 4e-5, "handoff_s": 4e-5, "solve_s": 1.5e-4,
        "return_s": 5e-5}


def _write(url: str, spool: Path) -> None:
    chans = [ChannelInfo(0, "pmu1.vm", "pmu1", "pmu", "vm", "kV", bus=1)]
    with HistorianWriter(url, spool_dir=spool) as w:
        w.start_run(RunInfo(name="ieee33", config_digest="d", config_toml="", version="0",
                            channels=chans, meters=[], bus_ids=[1], base_kv=[12.66]),
                    started=T0 - 1)
        # 3000 snapshots at 1 kHz (3 s): late ones at chosen places, some never answered
        slow = {0: "solve_s", 1: "clean_s", 1500: "solve_s", 2100: "align_s",
                2500: "return_s", 2501: "handoff_s"}
        unanswered = {2, 3, 4, 1800}
        # answered with a FAIL (gross errors before the detector has a history): 5-8 in
        # time, 9 after its deadline
        failed = {5: False, 6: False, 7: False, 8: False, 9: True}
        for k in range(3000):
            t = T0 + k * 1e-3
            w.put_measurements(k, t, t + 1e-4, np.array([12.6]), np.zeros(1, np.uint32))
            if k in unanswered or failed.get(k):
                w.put_event(t + 1e-3, "deadline_missed", "estimator", {"seq": k})
            if k in failed:
                w.put_event(t + 2e-3, "estimate_failed", "estimator",
                            {"seq": k, "reason": "NotSearched: J(x) = 1e5"})
            if k in unanswered or k in failed:
                continue
            timings = dict(FAST)
            if k in slow:
                timings[slow[k]] = 2e-3
            w.put_state(k, t, np.array([1.0]), np.array([0.0]), chi2=1.0, iterations=2,
                        deadline_met=k not in slow, timings=timings)
        # a late frame's raw row (seq < 0) is no snapshot
        w.put_measurements(-1, T0, T0 + 0.5, np.array([12.6]), np.ones(1, np.uint32))
        assert w.flush(30)


def test_misses_by_stage_and_the_start_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    _write(url, tmp_path / "spool")
    with HistorianReader(url) as rd:
        got = _miss_causes(rd, rd.latest_run())
    assert got == {"superseded": 4, "not_estimated": 1, "align": 1, "clean": 1,
                   "handoff": 1, "solve": 2, "return": 1, "first_second": 6}
    total = sum(v for k, v in got.items() if k != "first_second")
    # the 6 late states, the 4 never answered and the late FAIL; the FAILs in time and
    # the late frame's row are no misses (as the gateway counts them)
    assert total == 11


def test_no_snapshots_no_misses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    with HistorianWriter(url, spool_dir=tmp_path / "spool") as w:
        w.start_run(RunInfo(name="x", config_digest="d", config_toml="", version="0",
                            channels=[], meters=[], bus_ids=[], base_kv=[]), started=T0)
        assert w.flush(30)
    with HistorianReader(url) as rd:
        assert set(_miss_causes(rd, rd.latest_run()).values()) == {0}
