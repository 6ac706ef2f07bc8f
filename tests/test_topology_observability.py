"""Topology observability on the bundled IEEE33 config: which reconfigurations its
meters cannot tell from the normal topology, and the meter that separates them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from estimator.network import Network
from estimator.topology import SwitchSet, with_load_pseudo
from estimator.topology_observability import (
    MIN_LAMBDA,
    candidate_meters,
    recommend,
    separations,
)
from gateway.config import load_config
from gateway.se_model import measurement_model

#: the exchanges at the far ends of the 18-33 loop: one or two end loads move laterals
END_OF_LOOP = {"sw_16_17=open,sw_18_33=closed", "sw_17_18=open,sw_18_33=closed",
               "sw_32_33=open,sw_18_33=closed"}


@pytest.fixture(scope="module")
def rig() -> Any:
    cfg = load_config("ieee33")
    sw = SwitchSet.of(cfg.network)

    def maker(rel: float) -> Any:
        def make(net: Network) -> Any:
            return with_load_pseudo(measurement_model(replace(cfg, network=net)),
                                    cfg.network, rel=rel)
        return make

    cases = [t for t in sw.candidates(sw.normal) if sw.radial(t)]
    return cfg, sw, maker, cases


def test_bundled_meters_cannot_tell_the_end_of_loop_exchanges(rig: Any) -> None:
    _, sw, maker, cases = rig
    seps = {sw.label(s.truth): s for s in separations(sw, maker(0.5), cases)}
    assert len(seps) == len(cases) == 59
    weak = {lab for lab, s in seps.items() if not s.separable()}
    assert weak == END_OF_LOOP
    for lab in END_OF_LOOP:
        s = seps[lab]
        # the hypothesis it is confused with is the normal topology itself
        assert s.closest == sw.normal and s.lam == pytest.approx(s.lam_reported)
        assert s.against[0] == (s.closest, s.lam)
    # a tie in the middle of the feeder moves megawatts past meters: far apart
    assert seps["sw_7_8=open,sw_8_21=closed"].lam > 100 * MIN_LAMBDA
    # the load pseudo-measurements are most of the evidence: halving their sigma
    # multiplies lambda by up to 4 (a sum of squares weighed by 1 / sigma^2; the
    # meters' part of it does not grow)
    tight = {sw.label(s.truth): s for s in separations(
        sw, maker(0.25), [seps[lab].truth for lab in END_OF_LOOP])}
    for lab in END_OF_LOOP:
        assert 2.5 * seps[lab].lam < tight[lab].lam <= 4.001 * seps[lab].lam


def test_a_meter_at_bus_18_separates_them(rig: Any) -> None:
    cfg, sw, maker, cases = rig
    make = maker(0.5)
    meters = candidate_meters(cfg.network, make(cfg.network))
    names = {m.name for m in meters}
    # measured already: the injections at 4, 7, 10, ... and every feeder branch's flow
    assert "tx4" not in names and "flow17_18" not in names
    assert {"tx18", "tx33", "flow8_34"} <= names and "flow18_33" not in names
    rec = recommend(sw, make, cases, meters)
    assert {sw.label(c.truth) for c in rec.indistinguishable} == END_OF_LOOP
    assert [p.meter.name for p in rec.picks] == ["tx18"] and rec.still == ()
    (pick,) = rec.picks
    assert {sw.label(t) for t in pick.resolved} == END_OF_LOOP
    assert min(pick.lam_after) >= MIN_LAMBDA
    # no candidate at all: nothing picked, every weak case still open
    none = recommend(sw, make, cases, [])
    assert none.picks == () and {sw.label(t) for t in none.still} == END_OF_LOOP
