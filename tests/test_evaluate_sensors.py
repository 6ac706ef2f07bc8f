"""``gateway.evaluate_sensors``: the IEEE33 estimate without lateral flows, with load
pseudo-measurements only and with the micro sensors (through the real ingest path)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.evaluate_sensors import MAIN_FEEDER, case_texts, evaluate_sensors
from hil.scenario import ScenarioSpec, make_trace


@pytest.fixture(scope="module")
def trace():  # type: ignore[no-untyped-def]
    return make_trace(ScenarioSpec(config="ieee33", start="1990-06-01T10:00", hours=0.1,
                                   step_s=1.0, bad_pct=0, seed=2))


def test_cases_differ_only_in_lateral_metering() -> None:
    t = case_texts()
    cut = parse_config(t["no_lateral_flows"])
    flows = {cut.network.branches.names[c.branch] for c in cut.channels
             if c.meter.startswith("flow.") or c.meter == "flow"}
    assert flows == set(MAIN_FEEDER)
    sens = parse_config(t["micro_sensors"])
    assert not any(c.meter.startswith("pseudo") for c in sens.channels)
    assert {c.meter for c in sens.channels} >= {"ls19", "ls23", "ls26", "tx24", "tx33"}


def test_micro_sensors_beat_pseudo_measurements(trace) -> None:  # type: ignore[no-untyped-def]
    r = evaluate_sensors(trace, stride=10, seed=1)
    full, cut, sens = r["full_scada"], r["no_lateral_flows"], r["micro_sensors"]
    for case in (full, cut, sens):
        assert case["estimated"] == case["snapshots"] == 36 and case["failed"] == 0
    assert sens["vm_mape_pct"] < cut["vm_mape_pct"]
    assert sens["va_rmse_rad"] < cut["va_rmse_rad"]
    ing = sens["sensor_ingest"]
    assert ing["messages"] > 50 and ing["malformed"] == 0 and ing["unmapped"] == 0
