"""The topology rows of the evaluation, on a few reconfiguration cases."""

from __future__ import annotations

from gateway.evaluate_topology import TopologyEval, topology_rows


def test_topology_rows_identify_missing_and_falsified_statuses() -> None:
    ev = TopologyEval(max_cases=2, modes=("sent", "withheld", "phantom"), quiet_hours=1.0,
                      recommend=False)
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


def test_rows_with_the_recommended_meter_identify_what_the_bundled_cannot() -> None:
    """The end-of-loop exchange sw_17_18/sw_18_33 moves bus 18's load to the other
    lateral: the analysis row names it indistinguishable with the bundled meters and
    recommends tx18; the rows made with tx18 (scenario and twin) identify it."""
    ev = TopologyEval(only="sw_17_18", modes=("withheld",), quiet_hours=1.0)
    rows = topology_rows(ev)
    assert [(r["meters"], r["mode"]) for r in rows] == [
        ("bundled", "withheld"), ("bundled", "none"), ("bundled", "analysis"),
        ("bundled+tx18", "withheld"), ("bundled+tx18", "none")]
    analysis = rows[2]
    assert "sw_17_18=open,sw_18_33=closed" in analysis["indistinguishable"]
    assert analysis["recommended"] == ["tx18"]
    with_tx18 = rows[3]
    assert with_tx18["cases"] == 1 and with_tx18["missed"] == []
    assert with_tx18["max_snapshots"] <= ev.within
    assert rows[4]["false_alarms"] == 0 and rows[4]["hypothesis_tests"] >= 1
