"""Topology observability: which switchings a meter set can tell apart, and which added
meter would separate the ones it cannot.

Topology identification (:mod:`estimator.topology`) ranks hypotheses by the weighted
least-squares objective ``J``. On noise-free measurements of the true topology ``T`` its
own hypothesis reaches ``J = 0``, and a wrong hypothesis ``H`` reaches ``lambda(T, H) >
0``: the part of the measurements that no state under ``H`` explains. ``lambda`` is the
non-centrality of ``J_H`` in the chi-square test (Abur & Gomez-Exposito 2004, ch. 8: the
"detectability" of a topology error); with noise, ``J_H - J_T`` is ``lambda`` plus a
term of standard deviation ``2 sqrt(lambda)``, so ``H`` beats ``T`` on a single snapshot
with probability ``Phi(-sqrt(lambda) / 2)``. A pair whose ``lambda`` is below a few tens
is *indistinguishable*: the difference of the two topologies in measurement space is
within the noise (the sigmas the estimator weighs with, load pseudo-measurements
included), and no decision rule over a few snapshots can separate them reliably.

Why a feeder meets this: a switching that moves one small load at the end of a lateral
to the other lateral looks, to every meter upstream, exactly like that load falling to
zero on one side and appearing on the other; only the wide load pseudo-measurements
object. A meter at that load (the P/Q of its distribution transformer) or on the tie
removes the ambiguity. :func:`recommend` finds such meters greedily (most cases made
distinguishable first). Adding a measurement never lowers ``lambda`` (the minimum of a
sum of non-negative terms over the same states), so only the hypotheses below the
threshold need re-checking for a candidate meter.

Sans-IO: networks, measurement models and specs in; numbers out. The twin config side
(which meters a config names, TOML for an added meter) is ``gateway.topology_check``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from estimator.errors import EstimatorError
from estimator.measurement import MeasurementModel, Spec
from estimator.network import Network
from estimator.pgm import power_flow
from estimator.topology import SwitchSet, Topology, TopologyBank, identify

__all__ = [
    "CaseSeparation",
    "Meter",
    "MeterGain",
    "TopologyObservability",
    "candidate_meters",
    "flow_meter",
    "recommend",
    "separations",
    "transformer_meter",
    "with_specs",
]

#: lambda below this: indistinguishable (a wrong hypothesis wins a single test with
#: probability Phi(-sqrt(36)/2) = 0.13 %, three in a row practically never)
MIN_LAMBDA = 36.0

MakeModel = Callable[[Network], MeasurementModel]


@dataclass(frozen=True)
class Meter:
    """A meter that could be added: its name and the measurements it brings (per unit,
    on the base network's indices)."""

    name: str
    specs: tuple[Spec, ...]
    where: str  # human description (``P/Q injection at bus 18``)


@dataclass(frozen=True)
class CaseSeparation:
    """How well the meters tell the switched topology ``truth`` apart from every other
    hypothesis the identification weighs against it (the lowest ``lambda`` over the
    load levels checked)."""

    truth: Topology
    closest: Topology  # the hypothesis nearest to ``truth`` in measurement space
    lam: float  # lambda(truth, closest)
    lam_reported: float  # lambda(truth, reported): the evidence against the old topology
    level: float  # the load level (x nominal) at which ``lam`` is lowest
    #: lambda against every hypothesis (lowest over the levels), ascending
    against: tuple[tuple[Topology, float], ...] = ()

    def separable(self, min_lambda: float = MIN_LAMBDA) -> bool:
        return self.lam >= min_lambda


@dataclass(frozen=True)
class MeterGain:
    meter: Meter
    resolved: tuple[Topology, ...]  # cases it makes distinguishable (given earlier picks)
    lam_after: tuple[float, ...]  # their lambda with it


@dataclass(frozen=True)
class TopologyObservability:
    """The outcome of :func:`recommend`."""

    reported: Topology
    cases: tuple[CaseSeparation, ...]  # with the given meters
    min_lambda: float
    picks: tuple[MeterGain, ...]  # meters to add, in order
    still: tuple[Topology, ...]  # cases no candidate meter separates

    @property
    def indistinguishable(self) -> tuple[CaseSeparation, ...]:
        return tuple(c for c in self.cases if not c.separable(self.min_lambda))


def with_specs(model: MeasurementModel, extra: Sequence[Spec]) -> MeasurementModel:
    """``model`` with ``extra`` measurements appended (no channel: values passed in pu)."""
    if not extra:
        return model
    return MeasurementModel(model.net, [*model.specs, *extra],
                            zero_injection=list(model.zero_injection),
                            channel=[*model.channel, *[-1] * len(extra)],
                            scale=[*model.scale, *[1.0] * len(extra)])


#: (topology, level) -> bus voltages, for one switch set and PV: a power flow per
#: operating point however many meter sets are tried on it
Flows = dict[tuple[Topology, float], np.ndarray]


def _noise_free(switches: SwitchSet, model: MeasurementModel, topology: Topology,
                level: float, pv_pu: dict[int, float], flows: Flows | None = None
                ) -> np.ndarray:
    """Exact measurements of ``topology`` at ``level`` x the nominal loads (every load
    scaled alike, so the load pseudo-measurements are exact too)."""
    key = (topology, float(level))
    v = flows.get(key) if flows is not None else None
    if v is None:
        net = switches.network(topology)
        p, q = -net.p_load * level, -net.q_load * level
        for bus, pv in pv_pu.items():
            p[bus] += pv
        v = power_flow(net, p, q, batch=False, tolerance=1e-10)
        if flows is not None:
            flows[key] = v
    return np.asarray(model.h(v))


def _memo(make_model: MakeModel) -> MakeModel:
    """``make_model`` once per switch state (building a model is most of a check's cost
    when many meter sets are tried on the same topologies)."""
    cache: dict[bytes, MeasurementModel] = {}

    def make(net: Network) -> MeasurementModel:
        key = np.asarray(net.branches.in_service, bool).tobytes()
        model = cache.get(key)
        if model is None:
            model = cache[key] = make_model(net)
        return model

    return make


def separations(switches: SwitchSet, make_model: MakeModel, cases: Iterable[Topology], *,
                reported: Topology | None = None,
                hypotheses: Sequence[Topology] | None = None,
                levels: Sequence[float] = (0.5, 1.0),
                pv_pu: dict[int, float] | None = None,
                flows: Flows | None = None) -> list[CaseSeparation]:
    """``lambda`` of every case against the hypotheses the identification weighs when the
    reported topology is ``reported`` (default: the normal one; hypotheses: its
    candidates and itself). ``make_model(net)`` builds the measurement model on a
    switched network, the same measurements in the same order for every topology.
    ``flows``: power flows kept across calls with the same switch set and PV."""
    rep = switches.normal if reported is None else reported
    hyps = [rep, *[h for h in (switches.candidates(rep) if hypotheses is None
                                else hypotheses) if h != rep]]
    pv = pv_pu or {}
    lams: dict[Topology, dict[Topology, tuple[float, float]]] = {}
    for level in levels:
        bank = TopologyBank(switches, make_model, reweight_ratio=0.0)
        bank.rebase(_noise_free(switches, bank.estimator(rep).model, rep, level, pv, flows))
        for truth in cases:
            try:
                z = _noise_free(switches, bank.estimator(truth).model, truth, level, pv, flows)
            except EstimatorError:  # no operating point there (a long path collapses)
                continue
            idf = identify(bank, z, rep, candidates=[h for h in hyps if h != rep])
            per = lams.setdefault(truth, {})
            for h in idf.ranked:
                if h.topology != truth and h.objective < per.get(h.topology, (math.inf,))[0]:
                    per[h.topology] = (float(h.objective), float(level))
    out: list[CaseSeparation] = []
    for truth, per in lams.items():
        against = sorted(((h, lam) for h, (lam, _) in per.items()), key=lambda x: x[1])
        closest, (lam, level) = (against[0][0], per[against[0][0]]) if against else \
            (truth, (math.inf, math.nan))
        out.append(CaseSeparation(truth, closest, lam, per.get(rep, (0.0,))[0], level,
                                  tuple(against)))
    return out


def transformer_meter(base: Network, bus: int, *, rel: float = 0.005 / 3,
                      floor_mw: float = 0.001 / 3) -> Meter:
    """``tx<bus id>``: P/Q injection at internal bus ``bus`` (the load's distribution
    transformer); sigma ``max(rel |value|, floor)``."""
    bid = int(base.bus_ids[bus])
    return Meter(f"tx{bid}", tuple(
        Spec(kind, bus=bus, sigma=floor_mw / base.base_mva, rel=rel, name=f"tx{bid}.{kind}")
        for kind in ("pinj", "qinj")), f"P/Q injection at bus {bid}")


def flow_meter(base: Network, branch: int, *, rel: float = 0.01 / 3,
               floor_mw: float = 0.002 / 3) -> Meter:
    """``flow<from>_<to>``: P/Q flow at the sending end of branch index ``branch``."""
    name = base.branches.names[branch]
    tag = "flow" + name.replace("-", "_")
    return Meter(tag, tuple(
        Spec(kind, branch=branch, end="from", sigma=floor_mw / base.base_mva, rel=rel,
             name=f"{tag}.{kind}") for kind in ("p", "q")),
        f"P/Q flow on branch {name} (sending end)")


def candidate_meters(base: Network, model: MeasurementModel) -> list[Meter]:
    """Meters one could add (accuracies of the bundled SCADA meters): the P/Q injection
    of every load bus whose injection is not measured (:func:`transformer_meter`), and
    the P/Q flow at the sending end of every in-service branch whose flow is not
    measured there (:func:`flow_meter`; not on a normally-open tie: a twin config
    meters only branches in service)."""
    measured_inj = {int(s.bus) for s in model.specs  # type: ignore[arg-type]
                    if s.kind == "pinj" and not (s.name or "").endswith(".pseudo")}
    measured_flow = {(int(s.branch), s.end) for s in model.specs  # type: ignore[arg-type]
                     if s.kind == "p"}
    loads = np.flatnonzero((base.p_load != 0) | (base.q_load != 0))
    return [*(transformer_meter(base, int(b)) for b in loads if int(b) not in measured_inj),
            *(flow_meter(base, br) for br in range(base.n_branch)
              if base.branches.in_service[br] and (br, "from") not in measured_flow)]


def recommend(switches: SwitchSet, make_model: MakeModel, cases: Sequence[Topology],
              meters: Sequence[Meter], *, min_lambda: float = MIN_LAMBDA,
              levels: Sequence[float] = (0.5, 1.0), pv_pu: dict[int, float] | None = None,
              max_meters: int = 5) -> TopologyObservability:
    """Separations of ``cases`` with the model's meters, then meters from ``meters``
    added one at a time (each the one that makes the most remaining cases
    distinguishable; ties: the larger smallest ``lambda``) until every case is
    distinguishable, no meter helps, or ``max_meters`` were picked."""
    make_model = _memo(make_model)
    flows: Flows = {}
    rep = switches.normal
    base = separations(switches, make_model, cases, levels=levels, pv_pu=pv_pu, flows=flows)
    open_cases = [c.truth for c in base if not c.separable(min_lambda)]
    # the hypotheses each open case must be re-checked against (lambda only grows)
    near = {c.truth: [rep, *(h for h, lam in c.against if lam < min_lambda and h != rep)]
            for c in base if not c.separable(min_lambda)}
    chosen: list[Spec] = []
    picks: list[MeterGain] = []
    while open_cases and len(picks) < max_meters:
        best: tuple[int, float, Meter, list[CaseSeparation]] | None = None
        for meter in meters:
            if any(s in chosen for s in meter.specs):
                continue
            extra = [*chosen, *meter.specs]

            @_memo
            def make(net: Network, extra: list[Spec] = extra) -> MeasurementModel:
                return with_specs(make_model(net), extra)

            seps = [separations(switches, make, [t], hypotheses=near[t], levels=levels,
                                pv_pu=pv_pu, flows=flows)[0] for t in open_cases]
            got = [s for s in seps if s.separable(min_lambda)]
            key = (len(got), min(s.lam for s in seps))
            if best is None or key > (best[0], best[1]):
                best = (key[0], key[1], meter, got)
        if best is None or best[0] == 0:
            break
        _, _, meter, got = best
        chosen.extend(meter.specs)
        picks.append(MeterGain(meter, tuple(s.truth for s in got),
                               tuple(s.lam for s in got)))
        done = {s.truth for s in got}
        open_cases = [t for t in open_cases if t not in done]
    return TopologyObservability(rep, tuple(base), min_lambda, tuple(picks),
                                 tuple(open_cases))
