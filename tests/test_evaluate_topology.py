"""The topology rows of the evaluation, on a few reconfiguration cases."""

from __future__ import annotations

from gateway.evaluate_topology import TopologyEval, topology_rows


def test_topology_rows_identify_missing_and_falsified_statuses() -> None:
    ev = TopologyEval(max_cases=2, modes=("sent", "withheld", "phantom"), quiet_hours=1.0)
    rows = topology_rows(ev)
    by_mode = {r["mode"]: r for r in rows}
    assert set(by_mode) == {"sent", "withheld", "phantom", "none"}
    assert by_mode["sent"]["identified"] == 2 and by_mode["sent"]["max_snapshots"] == 0
    for mode in ("withheld", "phantom"):
        r = by_mode[mode]
        assert r["cases"] == 2 and r["missed"] == []
        assert 0 < r["max_snapshots"] <= ev.within
    quiet = by_mode["none"]
    assert quiet["snapshots"] == 60 and quiet["hypothesis_tests"] >= 1
    assert quiet["false_alarms"] == 0
