"""Topology tracking: which switch states each estimate uses, and finding out when a
reported status is wrong or missing.

:class:`TopologyTracker` is sans-IO: it is fed each snapshot's reported switch statuses
(where the streams carry them: GTNET-SKT ``int32`` points named after a switch,
``sw_8_21``), each estimate's objective ``J`` and the identification results it asked
for, with the time passed in; it answers with :class:`TopologyEvent` values and keeps
the topology the estimator must use next (:attr:`TopologyTracker.current`).

* A reported status **change** moves the tracker to the new topology at once (the next
  snapshot is estimated on it): event ``topology_changed`` (source ``status``).
* The estimate's ``J`` is watched against its own recent level (a running median of the
  healthy values, so a mis-scaled noise model does not matter). When ``J`` rises above
  ``j_rise`` times that level, or every ``probe_every_s`` seconds, a hypothesis test over
  the candidate topologies is due (:meth:`needs_test`; the caller runs
  :func:`estimator.topology.identify` and hands the result back).
* When the same other topology wins ``confirm`` tests in a row and the summed objectives
  over those snapshots favour it by ``ratio`` (``sum J_current / sum J_best``: the
  multi-snapshot version of the single-snapshot J-ratio test, robust to a common scale
  error), the tracker declares it: event ``topology_identified`` with the switches it
  believes moved, their state and a confidence, and moves to it.

:class:`TopologyTwin` is the thin runner that couples the tracker to a
:class:`~estimator.topology.TopologyBank`: one call per snapshot estimates on the current
topology and runs the identification when the tracker asks. The counters behind
``gridtwin_topology_changes_total`` and ``gridtwin_topology_identified_total`` are
:meth:`TopologyTracker.metrics`; :class:`TopologyCollector` exposes them to a Prometheus
registry.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily

from estimator.state import State
from estimator.topology import Identification, SwitchSet, Topology, TopologyBank, identify
from gateway.errors import GatewayError

__all__ = ["TopologyCollector", "TopologyEvent", "TopologyTracker", "TopologyTwin",
           "statuses_from_values"]


class TopologyStatusError(GatewayError):
    """A switch status value on the wire is not a status (0 open, 1 closed)."""


@dataclass(frozen=True)
class TopologyEvent:
    kind: str  # "topology_changed" | "topology_identified"
    time: float
    topology: str  # label of the topology moved to
    switches: tuple[tuple[str, bool], ...]  # (switch, closed) that differ from before
    source: str  # "status" | "measurements"
    confidence: float = 1.0
    evidence: float = float("nan")  # sum J_before / sum J_after over the confirming tests

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "time": self.time, "topology": self.topology,
                "switches": [{"switch": n, "state": "closed" if c else "open"}
                             for n, c in self.switches],
                "source": self.source, "confidence": round(self.confidence, 4),
                "evidence": None if math.isnan(self.evidence) else round(self.evidence, 3)}


def statuses_from_values(values: Mapping[str, float]) -> dict[str, bool]:
    """Wire values of status points (int32: 0 open, 1 closed; NaN: not received) ->
    ``{switch: closed}``; a value other than 0/1 raises naming the point."""
    out: dict[str, bool] = {}
    for name, val in values.items():
        if val is None or (isinstance(val, float) and math.isnan(val)):
            continue
        if val not in (0, 1):
            raise TopologyStatusError(f"switch status {name}: value {val!r} is neither "
                                      "0 (open) nor 1 (closed)")
        out[name] = bool(val)
    return out


@dataclass
class _Streak:
    topology: Topology | None = None
    count: int = 0
    j_current: float = 0.0
    j_best: float = 0.0
    confidence: list[float] = field(default_factory=list)


class TopologyTracker:
    """See the module docstring. ``confirm``: tests in a row; ``ratio``: summed-J ratio;
    ``j_rise``: J above this multiple of its running median triggers a test;
    ``probe_every_s``: periodic test (0: every snapshot; ``inf``: only on a rise)."""

    def __init__(self, switches: SwitchSet, *, initial: Topology | None = None,
                 confirm: int = 3, ratio: float = 1.5, j_rise: float = 2.0,
                 probe_every_s: float = 60.0, baseline: int = 30) -> None:
        if confirm < 1 or not ratio > 1 or not j_rise > 1:
            raise GatewayError("topology tracker: confirm >= 1, ratio > 1 and j_rise > 1")
        self.switches = switches
        self.current: Topology = initial if initial is not None else switches.normal
        self.reported: Topology = self.current
        self.confirm, self.ratio, self.j_rise = int(confirm), float(ratio), float(j_rise)
        self.probe_every_s = float(probe_every_s)
        self._j: deque[float] = deque(maxlen=int(baseline))
        self._next_probe = -math.inf
        self._due = False
        self._streak = _Streak()
        self.changes = 0
        self.identified = 0

    @property
    def label(self) -> str:
        return self.switches.label(self.current)

    # ---------------------------------------------------------------- inputs
    def on_status(self, now: float, states: Mapping[str, bool]) -> list[TopologyEvent]:
        """Reported statuses of this snapshot (only the switches carried); a change of the
        reported topology moves the tracker to it."""
        if not states:
            return []
        reported = self.switches.with_states(self.reported, dict(states))
        if reported == self.reported:
            return []
        self.reported = reported
        if reported == self.current:
            return []
        return [self._move(now, reported, "status")]

    def on_estimate(self, now: float, objective: float) -> None:
        """The objective J of the estimate on :attr:`current`; schedules a test when it
        rose (or the periodic probe is due)."""
        j = float(objective)
        level = float(np.median(self._j)) if self._j else math.nan
        raised = not math.isfinite(j) or (math.isfinite(level) and j > self.j_rise * level)
        if raised or self._streak.count:
            self._due = True
        else:
            self._j.append(j)
        if now >= self._next_probe:
            self._due = True

    def needs_test(self) -> bool:
        return self._due

    def next_deadline(self) -> float:
        """When the periodic probe falls due (the runner may :meth:`tick` then)."""
        return self._next_probe

    def tick(self, now: float) -> None:
        if now >= self._next_probe:
            self._due = True

    def on_identification(self, now: float, idf: Identification) -> list[TopologyEvent]:
        """The hypothesis test the tracker asked for (run around :attr:`current`)."""
        self._due = False
        self._next_probe = now + self.probe_every_s
        best = idf.best
        s = self._streak
        if best == self.current or not math.isfinite(idf.j_best):
            self._streak = _Streak()
            return []
        if s.topology != best:
            s = self._streak = _Streak(topology=best)
        s.count += 1
        s.j_current += idf.j_reported
        s.j_best += idf.j_best
        s.confidence.append(idf.confidence)
        evidence = s.j_current / max(s.j_best, 1e-12)
        if s.count < self.confirm or evidence < self.ratio:
            self._due = True
            return []
        self._streak = _Streak()
        ev = self._move(now, best, "measurements", confidence=float(np.mean(s.confidence)),
                        evidence=evidence)
        self._j.clear()
        return [ev]

    # ---------------------------------------------------------------- outputs
    def _move(self, now: float, to: Topology, source: str, *, confidence: float = 1.0,
              evidence: float = math.nan) -> TopologyEvent:
        diff = self.switches.diff(self.current, to)
        self.current = to
        self._streak = _Streak()
        if source == "status":
            self.changes += 1
            kind = "topology_changed"
        else:
            self.identified += 1
            kind = "topology_identified"
        return TopologyEvent(kind, now, self.switches.label(to), diff, source, confidence,
                             evidence)

    def metrics(self) -> dict[str, int]:
        return {"gridtwin_topology_changes_total": self.changes,
                "gridtwin_topology_identified_total": self.identified}


class TopologyCollector:
    """Prometheus collector of a tracker's counters (register it on a registry)."""

    def __init__(self, tracker: TopologyTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[CounterMetricFamily]:
        helps = {"gridtwin_topology_changes_total": "Topology changes from switch statuses.",
                 "gridtwin_topology_identified_total":
                     "Topologies identified from the measurements (status wrong or missing)."}
        for name, value in self.tracker.metrics().items():
            fam = CounterMetricFamily(name.removesuffix("_total"), helps[name])
            fam.add_metric([], value)
            yield fam


class TopologyTwin:
    """Tracker + bank: one :meth:`step` per snapshot (``z`` in the bank's order)."""

    def __init__(self, bank: TopologyBank, tracker: TopologyTracker) -> None:
        self.bank = bank
        self.tracker = tracker
        self.tests = 0

    def step(self, now: float, z: np.ndarray,
             statuses: Mapping[str, bool] | None = None) -> tuple[State, list[TopologyEvent]]:
        """Estimate ``z`` on the current topology (after this snapshot's statuses), then
        test the candidate topologies when the tracker asks."""
        tr = self.tracker
        events = tr.on_status(now, statuses or {})
        if self.bank.drifted(z):
            self.bank.rebase(z)
        state = self.bank.estimator(tr.current, z).solve(z, now=now)
        tr.on_estimate(now, state.objective)
        if tr.needs_test():
            self.tests += 1
            idf = identify(self.bank, z, tr.current, warm=state.v)
            events += tr.on_identification(now, idf)
        return state, events
