"""Synthetic feeders and measurement sets for tests, golden cases and benchmarks.

* :func:`radial_feeder` -- a random radial MV feeder of any size (about 6 ohm from the
  substation to the farthest bus, X/R about 1, about 4 MW of load, one bus in ten a
  zero-injection junction).
* :func:`ieee33_with_plants` -- the bundled IEEE33 with the paper's four PV plants on
  their own nodes behind 0.08 + j0.48 pu transformers (the bundled twin config's layout).
* :func:`paper_specs` -- the paper's measurement layout (section 5): PMUs with voltage and
  branch-current phasors, SCADA P/Q on every branch and some injections, PV forecasts.
* :func:`truth` -- the power-flow state for given loads and PV output (power-grid-model)
  and the noise-free measurement vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from estimator.measurement import MeasurementModel, Spec
from estimator.network import Branches, Network, load_case

__all__ = ["ieee33_with_plants", "paper_specs", "radial_feeder", "truth"]

PAPER_PMUS = (1, 3, 6, 11, 15, 21, 29)
PAPER_INJECTIONS = (4, 7, 10, 20, 21, 25, 27, 31)
PAPER_PLANTS = ((8, 34), (16, 35), (22, 36), (33, 37))
PAPER_PLANT_NODES = (34, 35, 36, 37)


def radial_feeder(n_bus: int, *, seed: int = 0, base_kv: float = 12.66,
                  base_mva: float = 10.0) -> Network:
    """A random radial feeder with ``n_bus`` buses (bus 1 is the slack)."""
    rng = np.random.default_rng(seed)
    parent = np.zeros(n_bus, np.int64)
    window = max(4, int(np.sqrt(n_bus)))
    depth = np.zeros(n_bus, np.int64)
    for k in range(1, n_bus):
        # attach to one of the last few buses: laterals like a real feeder
        parent[k] = rng.integers(max(0, k - window), k)
        depth[k] = depth[parent[k]] + 1
    zb = base_kv**2 / base_mva
    m = n_bus - 1
    # about 6 ohm of resistance from the substation to the farthest bus
    r_ohm = rng.uniform(0.5, 1.5, m) * 6.0 / max(int(depth.max()), 1)
    x_ohm = r_ohm * rng.uniform(0.6, 1.4, m)
    # about 4 MW / 2 MVAr in total
    p_kw = rng.uniform(0.2, 1.8, n_bus) * 4000.0 / n_bus
    q_kvar = p_kw * rng.uniform(0.3, 0.7, n_bus)
    junction = rng.random(n_bus) < 0.1
    p_kw[0] = q_kvar[0] = 0.0
    p_kw[junction] = 0.0
    q_kvar[junction] = 0.0
    ids = np.arange(1, n_bus + 1)
    z = np.zeros(n_bus)
    return Network(
        name=f"feeder{n_bus}",
        base_mva=base_mva,
        bus_ids=ids,
        base_kv=np.full(n_bus, base_kv),
        slack=0,
        vm_slack=1.0,
        va_slack=0.0,
        p_load=p_kw / 1e3 / base_mva,
        q_load=q_kvar / 1e3 / base_mva,
        p_gen=z.copy(),
        q_gen=z.copy(),
        gs=z.copy(),
        bs=z.copy(),
        branches=Branches(
            from_idx=parent[1:].copy(),
            to_idx=np.arange(1, n_bus),
            r=r_ohm / zb,
            x=x_ohm / zb,
            b=np.zeros(m),
            ratio=np.ones(m),
            shift=np.zeros(m),
            in_service=np.ones(m, bool),
            names=tuple(f"{parent[k] + 1}-{k + 1}" for k in range(1, n_bus)),
        ),
    )


def ieee33_with_plants(r_pu: float = 0.08, x_pu: float = 0.48) -> Network:
    """IEEE33 plus the four 1 MW PV plant nodes 34..37 behind their transformers."""
    net = load_case("ieee33")
    for bus, node in PAPER_PLANTS:
        net = net.with_bus(node, 12.66).with_branch(bus, node, r=r_pu, x=x_pu)
    net.validate()
    return net


def paper_specs(net: Network, *, pmus: Sequence[int] = PAPER_PMUS,
                injections: Sequence[int] = PAPER_INJECTIONS,
                plants: Sequence[int] = PAPER_PLANT_NODES,
                pmu_currents: bool = True, flows: bool = True,
                pv_sigma: float = 0.0041) -> list[Spec]:
    """The paper's layout on ``net`` (bus ids): accuracy figures are maximum errors
    (sigma = figure / 3): PMU 0.05 % / 0.005 rad, SCADA flows 1 %, injections 0.5 %;
    PV forecast sigma in pu (default 4.1 % of 1 MW on 10 MVA)."""
    br = net.branches
    specs: list[Spec] = []
    plant_nodes = {net.index_of(b) for b in plants if b in set(net.bus_ids.tolist())}
    for b in pmus:
        i = net.index_of(b)
        specs.append(Spec("vm", bus=i, rel=0.0005 / 3, sigma=1e-6))
        specs.append(Spec("va", bus=i, sigma=0.005 / 3))
        if pmu_currents:
            for k in np.flatnonzero(br.in_service & ((br.from_idx == i) | (br.to_idx == i))):
                other = br.to_idx[k] if br.from_idx[k] == i else br.from_idx[k]
                if int(other) in plant_nodes:
                    continue
                end = "from" if br.from_idx[k] == i else "to"
                specs.append(Spec("im", branch=int(k), end=end, rel=0.0005 / 3,
                                  sigma=5e-5 / 3))
                specs.append(Spec("ia", branch=int(k), end=end, sigma=0.005 / 3))
    if flows:
        for k in np.flatnonzero(br.in_service):
            if int(br.to_idx[k]) in plant_nodes or int(br.from_idx[k]) in plant_nodes:
                continue
            specs.append(Spec("p", branch=int(k), end="from", rel=0.01 / 3, sigma=2e-4 / 3))
            specs.append(Spec("q", branch=int(k), end="from", rel=0.01 / 3, sigma=2e-4 / 3))
    for b in injections:
        i = net.index_of(b)
        specs.append(Spec("pinj", bus=i, rel=0.005 / 3, sigma=1e-4 / 3))
        specs.append(Spec("qinj", bus=i, rel=0.005 / 3, sigma=1e-4 / 3))
    for node in sorted(plant_nodes):
        specs.append(Spec("ppv", bus=int(node), sigma=pv_sigma))
    return specs


def truth(model: MeasurementModel, *, load_scale: float | np.ndarray = 1.0,
          pv_pu: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(V, z)``: power-flow voltages for scaled case loads and PV output ``pv_pu`` at the
    model's PV nodes, and the noise-free measurement vector ``h(V)``."""
    from estimator import pgm

    net = model.net
    p = net.p_gen - net.p_load * load_scale
    q = net.q_gen - net.q_load * load_scale
    if model.pv_nodes.size:
        p = p.copy()
        p[model.pv_nodes] = pv_pu
    v = pgm.power_flow(net, p, q, batch=False, tolerance=1e-12, max_iterations=50)
    return v, model.h(v)


def with_loads(net: Network, p_load: np.ndarray, q_load: np.ndarray) -> Network:
    """A copy of ``net`` with other loads (pu)."""
    return replace(net, p_load=np.asarray(p_load, float), q_load=np.asarray(q_load, float))
