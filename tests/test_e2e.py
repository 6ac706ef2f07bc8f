"""End to end with the real processes on loopback: ``gridtwin run`` (gateway + estimator
process) fed by ``gridtwin emulate``, the estimator SIGKILLed mid-run.

Checks what must hold whatever the machine's speed: no frame lost by the gateway while the
estimator was down, the crash and the restart recorded as events in the twin database,
the restart counted in the metrics, estimates of snapshots that arrived after the kill
(the restarted process works, not just the one killed), every historian table written.
The kill waits for a number of estimates (a condition), not for a time. Timings (restart
time, latency) are reported by ``gridtwin demo`` and ``gridtwin bench``, not asserted
here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli_demo import http_json, run_demo
from gateway.historian import HistorianReader
from gateway.workers import child_pids

MODELS = Path(__file__).resolve().parents[1] / "models"
STATES_BEFORE_KILL = 50  # estimates the first estimator process delivers before the kill
WAIT_S = 120.0  # deadline of each wait of the killer thread (not a timing claim)


class Killer(threading.Thread):
    """Waits for the demo's gateway to be ready and to have delivered
    :data:`STATES_BEFORE_KILL` estimates, then SIGKILLs its active estimator process and
    notes the wall-clock time of the kill (the gateway's arrival times use the same
    clock)."""

    def __init__(self, wd: Path) -> None:
        super().__init__(name="e2e-killer", daemon=True)
        self.wd = wd
        self.done = threading.Event()  # set by the test when the demo has returned
        self.pid: int | None = None
        self.states_at_kill = 0
        self.t_kill = 0.0
        self.error: str | None = None

    def _until(self, what: str, fn: Any) -> Any:
        deadline = time.monotonic() + WAIT_S
        tick = threading.Event()
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                got = fn()
            except (OSError, ValueError, KeyError):
                got = None
            if got:
                return got
            tick.wait(0.02)  # polling interval
        raise TimeoutError(f"{what}: not reached while the demo ran")

    def _ready(self) -> dict | None:
        log = self.wd / "gateway.log"
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"ready"'):
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    def run(self) -> None:
        try:
            ready = self._until("the gateway ready", self._ready)
            port = int(ready["metrics"][1])
            summary = self._until(
                f"{STATES_BEFORE_KILL} estimates",
                lambda: (s if (s := http_json(port, "/summary"))["states"]
                         >= STATES_BEFORE_KILL else None))
            # the active estimator: the gateway's oldest worker child (/summary has no pids)
            pid = child_pids(int(ready["pid"]), "gateway.estimator_worker")[0]
            self.t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            self.pid, self.states_at_kill = pid, int(summary["states"])
        except Exception as exc:  # reported by the test, with the reason
            self.error = f"{type(exc).__name__}: {exc}"


@pytest.mark.slow
def test_estimator_killed_mid_run(tmp_path: Path) -> None:
    have_models = all((MODELS / f).is_file() for f in ("predictor.onnx",
                                                        "pv_forecaster.onnx"))
    wd = tmp_path / "run"
    killer = Killer(wd)
    killer.start()
    try:
        res = run_demo(wd, seconds=8.0, rate=50.0, bad_pct=10.0,
                       cache=str(tmp_path / "cache"),
                       # without the trained models the PV plants are unobservable: the
                       # supervision path is then exercised with the no-maths estimator
                       method=None if have_models else "flat", progress=False,
                       keep_metrics=True)
    finally:
        killer.done.set()
        killer.join(WAIT_S)
    assert killer.error is None and killer.pid is not None, killer.error
    # the demo's JSON contract (docs/measured.md, "What the commands print")
    contract = {"frames_sent", "frames_received", "frames_lost", "snapshots", "states",
                "deadline_misses", "se_vm_mape_pct", "se_va_rmse_rad", "bad_data_missed_pct",
                "bad_data_false_pct", "pv_mape_pct", "e2e_latency_ms", "historian_rows"}
    assert contract <= set(res), contract - set(res)
    # the angle apart at the 4 plant nodes and the 33 buses: the whole is their mean square
    pv, other = res["se_va_rmse_pv_nodes_rad"], res["se_va_rmse_other_buses_rad"]
    np.testing.assert_allclose(res["se_va_rmse_rad"] ** 2, (4 * pv**2 + 33 * other**2) / 37,
                               rtol=1e-9)
    lat = res["e2e_latency_ms"]
    assert set(lat) >= {"p50", "p99", "max"} and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert res["historian_rows"] == sum(res["historian_rows_by_table"].values())
    assert res["frames_sent"] > 0
    assert res["frames_received"] == res["frames_sent"]
    assert res["frames_lost"] == 0
    # the restart: counted once, in the summary and the metrics, and recorded as events
    assert res["estimator_restarts"] == 1
    text = res["_metrics_text"]
    assert "gridtwin_estimator_restarts_total 1.0" in text
    # late answers of the predictor process: in the summary and (scraped before it) on
    # /metrics, never more there
    late = re.search(r"^gridtwin_predictor_late_total (\S+)$", text, re.M)
    assert isinstance(res["predictor_late"], int) and late is not None
    assert 0 <= float(late.group(1)) <= res["predictor_late"]
    with HistorianReader(f"sqlite:///{wd / 'twin.db'}") as rd:
        run_id = rd.latest_run()
        events = [e for e in rd.events(run_id=run_id)
                  if e["kind"] in ("estimator_crashed", "estimator_restarted")]
        # estimates of snapshots whose first frame arrived after the kill: only the
        # restarted (or spare) estimator process can have made them
        ((after_kill,),) = rd.db.query(
            "SELECT COUNT(*) FROM states s JOIN measurements m "
            "ON m.run_id = s.run_id AND m.seq = s.seq "
            "WHERE s.run_id = ? AND m.arrival_time > ?", (run_id, killer.t_kill))
    assert [e["kind"] for e in events] == ["estimator_crashed", "estimator_restarted"]
    assert events[0]["detail"]["pid"] == killer.pid
    assert events[1]["detail"]["old_pid"] == killer.pid
    assert killer.states_at_kill >= STATES_BEFORE_KILL
    assert res["states"] > killer.states_at_kill
    assert after_kill > 0, "no estimate of a snapshot that arrived after the kill"
    # every snapshot stored raw and corrected
    rows = res["historian_rows_by_table"]
    # (plus one raw row per late frame: stored flagged LATE, seq < 0, never corrected)
    with sqlite3.connect(wd / "twin.db") as con:
        late_rows = con.execute("SELECT COUNT(*) FROM measurements WHERE seq < 0").fetchone()[0]
    assert rows["measurements"] - late_rows == res["snapshots"] == rows["corrected"]
    assert rows["states"] == res["states"]
    # each state's timings split its e2e latency into the stages it went through
    with sqlite3.connect(wd / "twin.db") as con:
        stored = [json.loads(t) for (t,) in con.execute("SELECT timings FROM states")]
    stages = ("align_s", "clean_s", "handoff_s", "return_s")
    for t in stored:
        assert all(t[k] >= 0 for k in stages), t
        rest = t["e2e_s"] - sum(t[k] for k in stages)  # the estimator process's own part
        assert t["solve_s"] <= rest + 1e-6, t
    assert rows["runs"] == 1 and rows["channels"] == 148 and rows["buses"] == 37
    # /state of the live gateway: the latest estimate, one value per bus
    st = res["_state"]
    assert st is not None and len(st["vm_pu"]) == len(st["bus"]) == 37
    if shutil.which("promtool"):
        chk = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)
        assert chk.returncode == 0, chk.stdout.decode() + chk.stderr.decode()
    if have_models:
        assert res["se_vm_mape_pct"] is not None and res["se_vm_mape_pct"] < 1.0
