"""Topology tracker (sans-IO, fake clock), switch status points in the config, and a
reconfiguration scenario's truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimator.topology import Hypothesis, Identification, SwitchSet
from gateway.config import load_config, parse_config, resolve
from gateway.errors import ConfigError
from gateway.topology import TopologyCollector, TopologyTracker, statuses_from_values
from hil.reconfigure import Switching, reconfigure, status_values
from hil.scenario import ScenarioSpec, make_trace

BUNDLED, _ = resolve("ieee33")


@pytest.fixture(scope="module")
def sw() -> SwitchSet:
    return SwitchSet.of(load_config("ieee33").network)


def result(sw: SwitchSet, reported, best, j_rep: float, j_best: float,
           j_next: float = 1e6) -> Identification:
    ranked = [Hypothesis(best, j_best), Hypothesis(reported, j_rep)]
    if best == reported:
        ranked = [Hypothesis(best, j_best), Hypothesis(sw.normal, j_next)]
    return Identification(reported=reported, ranked=tuple(ranked), j_reported=j_rep,
                          evidence=j_rep / j_best, confidence=1 - j_best / ranked[1].objective,
                          changes=sw.diff(reported, best))


def test_status_change_moves_at_once_and_only_on_change(sw) -> None:
    tr = TopologyTracker(sw)
    assert tr.on_status(0.0, {"sw_8_21": False}) == []
    ev = tr.on_status(1.0, {"sw_8_21": True, "sw_7_8": False})
    assert [e.kind for e in ev] == ["topology_changed"]
    assert ev[0].switches == (("sw_7_8", False), ("sw_8_21", True))
    assert tr.current == sw.with_states(sw.normal, {"sw_8_21": True, "sw_7_8": False})
    assert tr.on_status(2.0, {"sw_8_21": True, "sw_7_8": False}) == []
    assert tr.metrics()["gridtwin_topology_changes_total"] == 1


def test_j_rise_then_k_confirming_tests_identify(sw) -> None:
    now = 1000.0
    tr = TopologyTracker(sw, confirm=3, ratio=1.5, j_rise=2.0, probe_every_s=math.inf)
    truth = sw.with_states(sw.normal, {"sw_25_29": True, "sw_28_29": False})
    # the first snapshot is probed once; then healthy J builds the baseline, no test
    tr.on_estimate(now, 50.0)
    assert tr.needs_test()
    assert tr.on_identification(now, result(sw, sw.normal, sw.normal, 50.0, 50.0)) == []
    for k in range(1, 10):
        tr.on_estimate(now + k, 50.0 + k)
        assert not tr.needs_test()
    # the switch moves without a status: J jumps, tests run until confirmed
    events = []
    for k in range(10, 13):
        tr.on_estimate(now + k, 5e4)
        assert tr.needs_test()
        events = tr.on_identification(now + k, result(sw, sw.normal, truth, 5e4, 60.0))
        if k < 12:
            assert events == [] and tr.current == sw.normal
    assert [e.kind for e in events] == ["topology_identified"]
    assert dict(events[0].switches) == {"sw_25_29": True, "sw_28_29": False}
    assert events[0].confidence > 0.9 and events[0].evidence > 100
    assert tr.current == truth and tr.label == sw.label(truth)
    assert tr.metrics()["gridtwin_topology_identified_total"] == 1
    # the falsified status keeps being reported unchanged: the tracker stays
    assert tr.on_status(now + 13, {"sw_25_29": False}) == []
    assert tr.current == truth


def test_a_streak_broken_or_weak_declares_nothing(sw) -> None:
    tr = TopologyTracker(sw, confirm=3, ratio=1.5, probe_every_s=math.inf)
    other = sw.with_states(sw.normal, {"sw_8_21": True, "sw_7_8": False})
    for k in range(3):
        tr.on_estimate(float(k), 50.0)
        tr.on_identification(float(k), result(sw, sw.normal, other, 52.0, 50.0))
    assert tr.current == sw.normal  # 3 wins, but 52/50 is no evidence
    tr.on_identification(4.0, result(sw, sw.normal, sw.normal, 50.0, 50.0))
    tr.on_identification(5.0, result(sw, sw.normal, other, 1e4, 50.0))
    tr.on_identification(6.0, result(sw, sw.normal, other, 1e4, 50.0))
    assert tr.current == sw.normal


def test_periodic_probe_deadline(sw) -> None:
    tr = TopologyTracker(sw, probe_every_s=60.0)
    tr.on_estimate(0.0, 50.0)
    tr.on_identification(0.0, result(sw, sw.normal, sw.normal, 50.0, 50.0))
    assert tr.next_deadline() == 60.0
    tr.tick(59.0)
    assert not tr.needs_test()
    tr.tick(60.0)
    assert tr.needs_test()


def test_status_values_and_collector(sw) -> None:
    assert statuses_from_values({"sw_8_21": 1.0, "sw_7_8": float("nan")}) == {"sw_8_21": True}
    with pytest.raises(Exception, match="sw_8_21"):
        statuses_from_values({"sw_8_21": 7.0})
    tr = TopologyTracker(sw)
    tr.on_status(0.0, {"sw_9_15": True, "sw_14_15": False})
    fams = {f.name: f.samples[0].value for f in TopologyCollector(tr).collect()}
    assert fams == {"gridtwin_topology_changes": 1, "gridtwin_topology_identified": 0}


def test_switch_status_points_in_the_config() -> None:
    text = BUNDLED
    good = text.replace('"scada_status:int32"]', '"scada_status:int32", "sw_8_21:int32"]')
    cfg = parse_config(good)
    names = [p.name for s in cfg.streams for p in s.points]
    assert "sw_8_21" in names
    end = '"scada_status:int32"]'
    with pytest.raises(ConfigError, match=r"streams\[1\] \(scada\).points: switch status "
                       r"sw_8_99: no branch 8-99"):
        parse_config(text.replace(end, '"scada_status:int32", "sw_8_99:int32"]'))
    with pytest.raises(ConfigError, match="sw_8_21:int32"):
        parse_config(text.replace(end, '"scada_status:int32", "sw_8_21"]'))


def test_reconfiguration_scenario_truth_follows_the_switching() -> None:
    cfg = load_config("ieee33")
    net = cfg.network
    base = make_trace(ScenarioSpec(hours=12 / 3600, start="1990-06-01T12:00", missing_pct=0))
    plan = [Switching.of(5, sw_8_21=True, sw_7_8=False)]
    tr = reconfigure(base, cfg, plan, seed=1)
    sec, tie = net.find_branch(7, 8), net.find_branch(8, 21)
    np.testing.assert_array_equal(tr.v[:5], base.v[:5])
    assert np.all(np.abs(base.i_branch_from[5:, sec]) > 1e-3)
    np.testing.assert_allclose(tr.i_branch_from[5:, sec], 0.0, atol=1e-12)
    assert np.all(np.abs(tr.i_branch_from[5:, tie]) > 1e-3)
    # the power-flow equations hold on the switched network, same injections
    switched = SwitchSet.of(net)
    snet = switched.network(switched.with_states(switched.normal, {"sw_8_21": True,
                                                                   "sw_7_8": False}))
    v = tr.v[5:]
    s = v * np.conj(np.asarray((snet.ybus() @ v.T).T))
    keep = np.arange(net.n_bus) != net.slack
    np.testing.assert_allclose(s[:, keep], base.s_inj[5:, keep], atol=1e-6)
    j = base.channel("flow.7-8.p")
    np.testing.assert_allclose(tr.truth[5:, j], 0.0, atol=1e-9)
    assert np.all(np.abs(tr.measured[5:, j]) < 0.01)
    names, st = status_values(cfg, plan, base.n_steps, "sent")
    assert names == ["sw_7_8", "sw_8_21"]
    assert st[4].tolist() == [1.0, 0.0] and st[5].tolist() == [0.0, 1.0]
    assert status_values(cfg, plan, base.n_steps, "stuck")[1][5:].tolist() == [[1.0, 0.0]] * 7
    assert np.isnan(status_values(cfg, plan, base.n_steps, "withheld")[1][5:]).all()
