"""Topology library: switch sets, the per-topology estimator cache, and topology error
identification over every single flip and tie/sectionaliser exchange of IEEE33."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from estimator.network import Network
from estimator.pgm import power_flow
from estimator.topology import (
    SwitchSet,
    TopologyBank,
    TopologyError,
    identify,
    load_pseudo_values,
    with_load_pseudo,
)
from gateway.config import load_config
from gateway.se_model import measurement_model

TIES = ("sw_8_21", "sw_9_15", "sw_12_22", "sw_18_33", "sw_25_29")


@pytest.fixture(scope="module")
def rig():
    cfg = load_config("ieee33")
    sw = SwitchSet.of(cfg.network)

    def make(net: Network):
        return with_load_pseudo(measurement_model(replace(cfg, network=net)), cfg.network)

    return cfg, sw, make, TopologyBank(sw, make)


def snapshot(cfg, sw, make, topology, rng: np.random.Generator) -> np.ndarray:
    """Noisy measurements of a power flow on ``topology``: loads drawn +-40 % around
    their nominal values (the pseudo-measurements stay at nominal), PV at 0.5 MW."""
    net = sw.network(topology)
    k = rng.uniform(0.6, 1.4, net.n_bus)
    p, q = -net.p_load * k, -net.q_load * k
    for plant in cfg.plants:
        p[net.index_of(plant.node)] += 0.05
    v = power_flow(net, p, q, batch=False)
    model = make(net)
    h = model.h(v)
    z = h + rng.standard_normal(h.size) * model.sigma(h)
    n_pseudo = load_pseudo_values(cfg.network).size
    z[-n_pseudo:] = load_pseudo_values(cfg.network)
    return z


def test_switch_set_of_ieee33(rig):
    _, sw, _, _ = rig
    assert tuple(sw.names[k] for k in sw.ties) == TIES
    assert sw.radial(sw.normal)
    closed = sw.with_states(sw.normal, {"sw_8_21": True})
    assert not sw.radial(closed) and sw.connected(closed)
    assert sw.label(closed) == "sw_8_21=closed"
    assert sw.index("8-21") == sw.index("sw_8_21")
    with pytest.raises(TopologyError, match="sw_99_1"):
        sw.index("sw_99_1")
    # a single opening of a radial feeder islands buses: no candidate
    cands = sw.candidates(sw.normal)
    singles = [t for t in cands if len(sw.diff(sw.normal, t)) == 1]
    assert sorted(sw.label(t) for t in singles) == sorted(f"{n}=closed" for n in TIES)
    pairs = [t for t in cands if len(sw.diff(sw.normal, t)) == 2]
    assert pairs and all(sw.radial(t) for t in pairs)


def test_every_flip_and_exchange_identified(rig):
    cfg, sw, make, bank = rig
    rng = np.random.default_rng(21)
    wrong = []
    for truth in sw.candidates(sw.normal):
        idf = identify(bank, snapshot(cfg, sw, make, truth, rng), sw.normal)
        if not (idf.best == truth and idf.differs(1.2)):
            wrong.append((sw.label(truth), sw.label(idf.best), idf.evidence))
        assert idf.changes == sw.diff(sw.normal, idf.best)
    assert wrong == [], wrong


def test_reported_topology_kept_on_healthy_snapshots(rig):
    cfg, sw, make, bank = rig
    rng = np.random.default_rng(5)
    for truth in (sw.normal, sw.with_states(sw.normal, {"sw_8_21": True, "sw_7_8": False})):
        for _ in range(3):
            idf = identify(bank, snapshot(cfg, sw, make, truth, rng), truth)
            assert idf.best == truth
            assert not idf.differs(2.0)


def test_known_topology_comes_back_without_refactorisation(rig):
    cfg, sw, make, _ = rig
    bank = TopologyBank(sw, make)
    rng = np.random.default_rng(3)
    other = sw.with_states(sw.normal, {"sw_25_29": True, "sw_28_29": False})
    est_a = bank.estimator(sw.normal)
    z = snapshot(cfg, sw, make, sw.normal, rng)
    est_a.solve(z)
    mask = np.isfinite(z)
    fac = est_a.factor(mask)
    bank.estimator(other).solve(snapshot(cfg, sw, make, other, rng))
    assert bank.builds == 2
    again = bank.estimator(sw.normal)
    assert again is est_a and bank.builds == 2
    again.solve(snapshot(cfg, sw, make, sw.normal, rng))
    assert again.factor(mask) is fac


def test_candidates_are_searched_once_per_reported_topology(rig, monkeypatch) -> None:
    """The candidate list is cached per reported topology (the connectivity search is most
    of a hypothesis test's cost): a second ask searches nothing, returns the same
    topologies, and a caller's edit of the list does not reach the cache."""
    cfg, _, _, _ = rig
    sw = SwitchSet.of(cfg.network)
    first = sw.candidates(sw.normal)
    searched: list[int] = []
    real = SwitchSet.connected
    monkeypatch.setattr(SwitchSet, "connected",
                        lambda self, t: searched.append(1) or real(self, t))
    first.clear()
    again = sw.candidates(sw.normal)
    assert searched == [] and len(again) == 64
    assert again == SwitchSet.of(cfg.network).candidates(sw.normal)
    singles = sw.candidates(sw.normal, exchanges=False)
    assert searched and len(singles) < len(again)  # another key: searched anew
