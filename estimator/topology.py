"""Topologies as switch states, estimators cached per topology, topology error identification.

A feeder is reconfigured by its switches: normally-open tie switches close, sectionalising
switches (ordinary branches with a switch) open. A *topology* here is the vector of
closed/open states over a :class:`SwitchSet`'s switchable branches; every other branch
keeps its state from the base network.

**Cache.** :class:`TopologyBank` keeps one
:class:`~estimator.linear.LinearStateEstimator` per topology it has seen (its measurement
model built on the switched network). The estimator caches its own factorizations per
measurement set, so a topology that comes back costs a dictionary look-up, never a new
factorization.

**Identification** (:func:`identify`) is hypothesis testing over candidate topologies
with the weighted least-squares objective, the "residual / chi-square test over
topology hypotheses" of topology error identification (Clements & Davis 1988, "Detection
and identification of topology errors in electric power systems"; Abur & Gomez-Exposito
2004, ch. 8; for distribution feeders, Korres & Manousakis's and Singh, Pal & Vinter's
hypothesis tests over radial configurations). For a snapshot ``z`` the state is estimated
under each hypothesis ``T`` and its objective ``J_T = sum (r_i / sigma_i)^2`` recorded.
Under the true topology ``J`` is chi-square distributed with the redundancy as degrees of
freedom; a wrong topology adds the squared, weighted flow that it moves onto the wrong
branches, which is large as soon as any measurement sees it. The hypotheses are the
topologies near the reported one: every single switch flip that leaves the feeder
connected, and every *exchange* (close a tie, open a sectionaliser on the loop it forms:
the classic feeder reconfiguration, which keeps the feeder radial).

The decision uses **ratios of J between hypotheses**, not the absolute chi-square
threshold: a common error in the assumed noise level scales every ``J`` alike and leaves
the ratios unchanged. ``evidence = J_reported / J_best`` says how much better the best
hypothesis explains the snapshot than the reported topology; ``confidence = 1 - J_best /
J_runner_up`` how clearly it beats the next hypothesis (0: a tie; near 1: unambiguous).
Callers act when the evidence passes a ratio over a few snapshots in a row (see the
tracker in the gateway).

**Load pseudo-measurements.** A tie between two buses whose loads are not measured is
structurally invisible: its current enters one bus and leaves the other exactly like a
change of the two loads, so every hypothesis reaches the same J. Distribution estimators
add pseudo-measurements of the loads for this reason (Abur & Gomez-Exposito 2004, ch. 4;
Baran & Kelley 1994): :func:`with_load_pseudo` appends one ``pinj``/``qinj`` pair per
load bus with a wide sigma (default 50 % of the nominal load), enough to tell a load from
a megawatt crossing a tie, too loose to bias the estimate of a healthy snapshot. They
belong to the identification's hypotheses; the live estimator keeps its own model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from estimator.errors import EstimatorError, NetworkError
from estimator.linear import LinearStateEstimator
from estimator.measurement import MeasurementModel, Spec
from estimator.network import Network

__all__ = [
    "Hypothesis",
    "Identification",
    "SwitchSet",
    "Topology",
    "TopologyBank",
    "TopologyError",
    "identify",
    "load_pseudo_values",
    "switch_name",
    "with_load_pseudo",
]

#: closed (True) / open (False) per switch, in :attr:`SwitchSet.names` order
Topology = tuple[bool, ...]

#: reported topologies whose candidate lists a :class:`SwitchSet` keeps (oldest dropped)
CANDIDATE_CACHE = 64


class TopologyError(EstimatorError):
    """A switch name or a topology vector does not fit the switch set."""


def switch_name(branch_name: str) -> str:
    """Wire/config name of the switch on branch ``"8-21"``: ``"sw_8_21"``."""
    return "sw_" + branch_name.replace("-", "_")


@dataclass(frozen=True)
class SwitchSet:
    """The switchable branches of ``base`` and the topologies over them.

    ``branches`` are branch indices (default: every branch: any line can carry a
    sectionalising switch); ``names`` their switch names (``sw_<from>_<to>``). The base
    network's states are the *normal* topology; ties are the switches open in it.
    """

    base: Network
    branches: tuple[int, ...]
    names: tuple[str, ...]
    #: :meth:`candidates` per (reported, exchanges): each is a connectivity search over
    #: every flip and exchange (37 ms on IEEE33, three quarters of a hypothesis test),
    #: and a tracker asks again and again around the same few topologies
    _candidates: dict[tuple[Topology, bool], tuple[Topology, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def of(cls, base: Network, branches: Iterable[int] | None = None) -> SwitchSet:
        idx = tuple(range(base.n_branch)) if branches is None else tuple(int(b) for b in branches)
        for b in idx:
            if not 0 <= b < base.n_branch:
                raise TopologyError(f"{base.name}: switch on unknown branch index {b}")
        if len(set(idx)) != len(idx):
            raise TopologyError(f"{base.name}: a branch is listed twice as a switch")
        names = tuple(switch_name(base.branches.names[b]) for b in idx)
        return cls(base, idx, names)

    @property
    def normal(self) -> Topology:
        return self.state_of(self.base)

    @property
    def ties(self) -> tuple[int, ...]:
        """Positions (in this set) of the normally-open switches."""
        return tuple(k for k, c in enumerate(self.normal) if not c)

    def index(self, name: str) -> int:
        """Position of switch ``name`` (``sw_8_21``, or the branch name ``8-21``)."""
        key = name if name.startswith("sw_") else switch_name(name)
        try:
            return self.names.index(key)
        except ValueError:
            raise TopologyError(f"{self.base.name}: no switch named {name!r}") from None

    def state_of(self, net: Network) -> Topology:
        return tuple(bool(net.branches.in_service[b]) for b in self.branches)

    def network(self, topology: Topology) -> Network:
        """The base network with ``topology`` applied."""
        self._check(topology)
        net = self.base
        for k, b in enumerate(self.branches):
            if bool(net.branches.in_service[b]) != topology[k]:
                net = net.with_switch(b, topology[k])
        return net

    def with_states(self, topology: Topology, states: dict[str, bool]) -> Topology:
        """``topology`` with the named switches set (names as in :meth:`index`)."""
        out = list(self._check(topology))
        for name, closed in states.items():
            out[self.index(name)] = bool(closed)
        return tuple(out)

    def diff(self, a: Topology, b: Topology) -> tuple[tuple[str, bool], ...]:
        """Switches whose state differs, with their state in ``b``."""
        return tuple((self.names[k], b[k]) for k in range(len(a)) if a[k] != b[k])

    def label(self, topology: Topology) -> str:
        """Short human name: ``normal`` or the switches that differ from it."""
        d = self.diff(self.normal, topology)
        if not d:
            return "normal"
        return ",".join(f"{n}={'closed' if c else 'open'}" for n, c in d)

    def connected(self, topology: Topology) -> bool:
        """Every bus fed from the slack (an islanded part has no state to estimate)."""
        return len(self.network(topology).islands()) == 1

    def radial(self, topology: Topology) -> bool:
        net = self.network(topology)
        return (len(net.islands()) == 1
                and int(net.branches.in_service.sum()) == net.n_bus - 1)

    def candidates(self, reported: Topology, *, exchanges: bool = True) -> list[Topology]:
        """Connected topologies near ``reported``: single flips, then tie/sectionaliser
        exchanges (close an open switch, open a closed one on the loop it forms).
        Computed once per ``reported`` (the set's base never changes)."""
        key = (self._check(reported), bool(exchanges))
        cached = self._candidates.get(key)
        if cached is None:
            if len(self._candidates) >= CANDIDATE_CACHE:
                self._candidates.pop(next(iter(self._candidates)))
            cached = self._candidates[key] = tuple(self._search(key[0], exchanges=key[1]))
        return list(cached)

    def _search(self, reported: Topology, *, exchanges: bool) -> list[Topology]:
        out: list[Topology] = []
        seen = {reported}
        n = len(reported)
        for k in range(n):
            t = _flip(reported, k)
            if t not in seen and self.connected(t):
                seen.add(t)
                out.append(t)
        if exchanges:
            for k in (k for k in range(n) if not reported[k]):
                closed = _flip(reported, k)
                for j in (j for j in range(n) if reported[j]):
                    t = _flip(closed, j)
                    if t not in seen and self.connected(t):
                        seen.add(t)
                        out.append(t)
        return out

    def _check(self, topology: Sequence[bool]) -> Topology:
        if len(topology) != len(self.branches):
            raise TopologyError(f"{self.base.name}: topology has {len(topology)} states, "
                                f"the switch set {len(self.branches)}")
        return tuple(bool(c) for c in topology)


def _flip(t: Topology, k: int) -> Topology:
    return (*t[:k], not t[k], *t[k + 1:])


def with_load_pseudo(model: MeasurementModel, base: Network, *, rel: float = 0.5,
                     floor: float = 1e-4) -> MeasurementModel:
    """``model`` plus a load pseudo-measurement pair (``pinj``, ``qinj``) per load bus of
    ``base`` (sigma ``rel`` x the nominal load, at least ``floor`` pu), appended after the
    model's own measurements in bus order: feed them :func:`load_pseudo_values`."""
    extra: list[Spec] = []
    for b in _load_buses(base):
        for kind, nominal in (("pinj", base.p_load[b]), ("qinj", base.q_load[b])):
            extra.append(Spec(kind, bus=int(b), sigma=max(rel * abs(float(nominal)), floor),
                              name=f"{kind}@{int(base.bus_ids[b])}.pseudo"))
    return MeasurementModel(model.net, [*model.specs, *extra],
                            zero_injection=list(model.zero_injection),
                            channel=[*model.channel, *[-1] * len(extra)],
                            scale=[*model.scale, *[1.0] * len(extra)])


def load_pseudo_values(base: Network, scale: float = 1.0) -> np.ndarray:
    """Values of :func:`with_load_pseudo`'s pseudo-measurements: the nominal injections
    (minus the load, pu) times ``scale`` (e.g. the feeder's load level now)."""
    b = _load_buses(base)
    return np.column_stack((-base.p_load[b], -base.q_load[b])).ravel() * float(scale)


def _load_buses(base: Network) -> np.ndarray:
    return np.flatnonzero((base.p_load != 0) | (base.q_load != 0))


class TopologyBank:
    """One estimator per topology, built once (LRU over ``size`` topologies).

    ``make_model(net)`` builds the measurement model on a switched network: the same
    measurements in the same order for every topology, so one measurement vector serves
    every hypothesis. ``builds`` counts the estimators built (a known topology coming back
    does not add one, and its factorizations are still in its estimator's cache).

    **Common weights.** J values are comparable between hypotheses only when every
    hypothesis weighs the measurements alike. The estimator weighs at its *nominal*
    values (see :mod:`estimator.linear`), which it would otherwise take from whatever
    snapshot it first saw -- possibly one taken under another topology, where a branch
    that now carries power read zero. So the bank owns one reference snapshot: every
    estimator is primed with it when built (``reweight_ratio`` 0: no private re-basing),
    and :meth:`rebase` moves all of them to a new reference together, when the load has
    moved far (:meth:`drifted`, the estimator's own median rule).

    Estimator options pass through (``normalized_residuals`` defaults to off: a
    hypothesis needs its J only, and the residual sensitivities cost 3/4 of a test).
    """

    def __init__(self, switches: SwitchSet, make_model: Callable[[Network], MeasurementModel],
                 *, size: int = 256, reweight_ratio: float = 2.0,
                 **estimator_options: Any) -> None:
        self.switches = switches
        self.make_model = make_model
        self.size = int(size)
        # J is all a hypothesis needs: normalized residuals only when asked for
        self.options = {"normalized_residuals": False, **estimator_options,
                        "reweight_ratio": 0.0}
        self.reweight_ratio = float(reweight_ratio)
        self.builds = 0
        self.rebases = 0
        self.reference: np.ndarray | None = None
        self._est: OrderedDict[Topology, LinearStateEstimator] = OrderedDict()
        self._primed: set[Topology] = set()

    def __contains__(self, topology: Topology) -> bool:
        return topology in self._est

    def __len__(self) -> int:
        return len(self._est)

    def estimator(self, topology: Topology, z: np.ndarray | None = None) -> LinearStateEstimator:
        """The estimator of ``topology``; ``z`` becomes the reference when none is set."""
        if self.reference is None and z is not None:
            self.reference = np.asarray(z, float).copy()
        est = self._est.get(topology)
        if est is not None:
            self._est.move_to_end(topology)
        else:
            est = LinearStateEstimator(self.make_model(self.switches.network(topology)),
                                       **self.options)
            self.builds += 1
            self._est[topology] = est
            if len(self._est) > self.size:
                old, _ = self._est.popitem(last=False)
                self._primed.discard(old)
        if topology not in self._primed and self.reference is not None:
            ref = self.reference
            est.factor(np.isfinite(ref), ref)  # sets the nominal values = the reference
            self._primed.add(topology)
        return est

    def drifted(self, z: np.ndarray) -> bool:
        """The sigmas at ``z`` moved, in the median, more than ``reweight_ratio`` away from
        those at the reference (never when ``reweight_ratio`` is 0)."""
        if self.reference is None or not self.reweight_ratio:
            return False
        model = next(iter(self._est.values())).model if self._est else None
        if model is None:
            return False
        ref = self.reference
        check = np.isfinite(z) & np.isfinite(ref) & ~model.is_angle & (model.rel > 0)
        floor = np.maximum(model.floor[check], 1e-12)
        s_now = np.fmax(model.rel[check] * np.abs(z[check]), floor)
        s_ref = np.fmax(model.rel[check] * np.abs(ref[check]), floor)
        moving = (s_now > floor) | (s_ref > floor)
        if not moving.any():
            return False
        return abs(float(np.median(np.log(s_now[moving] / s_ref[moving])))) > math.log(
            self.reweight_ratio)

    def rebase(self, z: np.ndarray) -> None:
        """Make ``z`` the reference of every estimator (each refactorizes on next use)."""
        self.reference = np.asarray(z, float).copy()
        for est in self._est.values():
            est.forget_weights()
        self._primed.clear()
        self.rebases += 1


@dataclass(frozen=True)
class Hypothesis:
    topology: Topology
    objective: float  # J(x) under this topology (inf: no estimate)


@dataclass(frozen=True)
class Identification:
    """The outcome of :func:`identify` (see the module docstring for the quantities)."""

    reported: Topology
    ranked: tuple[Hypothesis, ...]  # ascending J, the reported topology among them
    j_reported: float
    evidence: float  # J_reported / J_best (>= 1)
    confidence: float  # 1 - J_best / J_runner_up, in [0, 1]
    changes: tuple[tuple[str, bool], ...]  # switches the best hypothesis sets differently

    @property
    def best(self) -> Topology:
        return self.ranked[0].topology

    @property
    def j_best(self) -> float:
        return self.ranked[0].objective

    def differs(self, ratio: float) -> bool:
        """The best hypothesis is not the reported topology and fits ``ratio`` x better."""
        return self.best != self.reported and self.evidence >= ratio


def _objective(est: LinearStateEstimator, z: np.ndarray, warm: np.ndarray | None) -> float:
    try:
        st = est.solve(z, warm_start=warm if warm is not None else False)
    except (EstimatorError, np.linalg.LinAlgError, ValueError):
        return float("inf")
    j = float(st.objective)
    return j if np.isfinite(j) else float("inf")


def identify(bank: TopologyBank, z: np.ndarray, reported: Topology, *,
             candidates: Sequence[Topology] | None = None,
             warm: np.ndarray | None = None) -> Identification:
    """Rank the reported topology and its candidates by J on snapshot ``z`` (pu, the
    bank's measurement order); see the module docstring for the method."""
    sw = bank.switches
    cands = sw.candidates(reported) if candidates is None else list(candidates)
    if bank.drifted(z):
        bank.rebase(z)
    hyps = [Hypothesis(t, _objective(bank.estimator(t, z), z, warm))
            for t in (reported, *[c for c in cands if c != reported])]
    j_rep = hyps[0].objective
    ranked = tuple(sorted(hyps, key=lambda h: h.objective))
    if not np.isfinite(ranked[0].objective):
        raise NetworkError(f"{sw.base.name}: no topology hypothesis gives an estimate")
    j0 = max(ranked[0].objective, 1e-12)
    j1 = ranked[1].objective if len(ranked) > 1 else float("inf")
    evidence = j_rep / j0 if np.isfinite(j_rep) else float("inf")
    confidence = 1.0 - j0 / j1 if np.isfinite(j1) else 1.0
    return Identification(reported=reported, ranked=ranked, j_reported=j_rep,
                          evidence=float(evidence), confidence=float(max(confidence, 0.0)),
                          changes=sw.diff(reported, ranked[0].topology))
