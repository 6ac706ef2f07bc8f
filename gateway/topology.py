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
topology and runs the identification when the tracker asks (the evaluation uses it).
The counters behind ``gridtwin_topology_changes_total`` and
``gridtwin_topology_identified_total`` are :meth:`TopologyTracker.metrics`;
:class:`TopologyCollector` exposes them to a Prometheus registry.

On the live twin (:func:`gateway.components.open_topology`): :class:`StatusBoard` turns
the decoded frames into each snapshot's statuses, :class:`LiveTopology` runs the tracker
between the pipeline and the estimator process (the topology travels with the snapshot,
the estimator process names the one it used in its state), and the hypothesis tests run
in a child process (:func:`child_init`, :func:`identify_in_child`) with the
:class:`Identifier` of the config.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import CounterMetricFamily

from estimator.network import Network
from estimator.state import State
from estimator.topology import (
    Identification,
    SwitchSet,
    Topology,
    TopologyBank,
    identify,
    load_pseudo_values,
    with_load_pseudo,
)
from gateway.errors import GatewayError
from gateway.se_model import measurement_model

if TYPE_CHECKING:
    from gateway.config import TwinConfig

log = logging.getLogger("gridtwin.topology")

#: an int32 GTNET-SKT point with no value (the emulator's and RSCAD's missing marker)
INT32_MISSING = -(2**31)

__all__ = ["Identifier", "StatusBoard", "TopologyCollector", "TopologyEvent",
           "TopologyTracker", "TopologyTwin", "statuses_from_values"]


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
    previous: str = ""  # label of the topology moved from

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "time": self.time, "from": self.previous,
                "topology": self.topology,
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
        previous = self.switches.label(self.current)
        self.current = to
        self._streak = _Streak()
        if source == "status":
            self.changes += 1
            kind = "topology_changed"
        else:
            self.identified += 1
            kind = "topology_identified"
        return TopologyEvent(kind, now, self.switches.label(to), diff, source, confidence,
                             evidence, previous)

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


class StatusBoard:
    """The switch statuses received since the last snapshot, from the decoded frames.

    One slot per switch of ``cfg.switches``. A GTNET-SKT ``int32`` point named after a
    switch carries 0 (open) or 1 (closed); a C37.118 stream's ``digitals`` name the bits
    of a PMU's DIGITAL words (bit set: closed). :meth:`feed` takes every decoded frame (a
    dictionary look-up for the streams that carry none); :meth:`take` hands the
    snapshot being published its statuses and clears the board, so a status that stops
    arriving reads NaN (not received) instead of its last value. A value other than 0/1
    (or the int32 missing marker) is not a status: it is counted in :attr:`invalid` and
    ignored.
    """

    def __init__(self, cfg: TwinConfig) -> None:
        self.names = [s.name for s in cfg.switches]
        index = {n: i for i, n in enumerate(self.names)}
        self.values = np.full(len(self.names), np.nan)
        self._skt: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._c37: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self._c37_words: dict[str, tuple[Any, np.ndarray, np.ndarray, np.ndarray]] = {}
        for st in cfg.enabled_streams:
            if st.format == "c37.118":
                if st.digitals:
                    self._c37[st.name] = tuple((station, bit, index[name])
                                               for station, bit, name in st.digitals)
                continue
            pos = [(j, index[p.name]) for j, p in enumerate(st.points)
                   if p.channel is None and p.name in index]
            if pos:
                self._skt[st.name] = (np.array([j for j, _ in pos], np.intp),
                                      np.array([k for _, k in pos], np.intp))
        self.invalid = 0

    @property
    def empty(self) -> bool:
        """No enabled stream carries a status."""
        return not self._skt and not self._c37

    def feed(self, stream: str, values: np.ndarray, c37: Any = None) -> None:
        """One decoded frame of ``stream`` (its values in point order; ``c37``: the
        stream's C37.118 decoder, whose last DIGITAL words are read)."""
        skt = self._skt.get(stream)
        if skt is not None:
            self._put(values[skt[0]], skt[1], stream)
        elif c37 is not None and stream in self._c37 and c37.digitals is not None:
            words, shift, sws = self._c37_map(stream, c37)
            ok = words >= 0
            bits = (c37.digitals[words[ok]] >> shift[ok]) & 1
            self._put(bits.astype(float), sws[ok], stream)

    def _put(self, v: np.ndarray, sws: np.ndarray, stream: str) -> None:
        good = (v == 0) | (v == 1)
        self.values[sws[good]] = v[good]
        bad = ~good & np.isfinite(v) & (v != INT32_MISSING)
        if bad.any():
            self.invalid += int(bad.sum())
            if self.invalid <= 3:
                log.warning("stream %s: switch status %s = %r is neither 0 (open) nor 1 "
                            "(closed); ignored", stream, self.names[int(sws[bad][0])],
                            float(v[bad][0]))

    def _c37_map(self, stream: str, dec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word index into the frame's DIGITAL words or -1, bit, switch slot) per mapped
        bit, for the configuration in force (recomputed when the sender's changes)."""
        cfg = dec.config
        cached = self._c37_words.get(stream)
        if cached is not None and cached[0] is cfg:
            return cached[1], cached[2], cached[3]
        base: dict[str, tuple[int, int]] = {}
        k = 0
        for p in (cfg.pmus if cfg is not None else ()):
            base[p.station] = (k, p.n_digitals)
            k += p.n_digitals
        words, bits, sws = [], [], []
        for station, bit, sw in self._c37[stream]:
            first, n = base.get(station, (0, 0))
            words.append(first + bit // 16 if bit // 16 < n else -1)
            bits.append(bit % 16)
            sws.append(sw)
        w, b, s = (np.array(words, np.intp), np.array(bits, np.uint16),
                   np.array(sws, np.intp))
        self._c37_words[stream] = (cfg, w, b, s)
        return w, b, s

    def take(self) -> np.ndarray:
        """The statuses received since the last call (NaN: none), and clear the board."""
        out = self.values.copy()
        self.values.fill(np.nan)
        return out


class Identifier:
    """Topology identification for a twin config: the bank of hypothesis estimators (the
    config's measurement model plus load pseudo-measurements, :func:`with_load_pseudo`)
    and the assembly of a snapshot into the bank's measurement vector. Runs where it is
    called: the live twin builds one in its identification process (:func:`child_init`),
    off the loop and off the gateway's GIL."""

    def __init__(self, cfg: TwinConfig, switches: SwitchSet, pseudo_rel: float = 0.5) -> None:
        base = cfg.network
        self.cfg = cfg

        def make(net: Network) -> Any:
            return with_load_pseudo(measurement_model(replace(cfg, network=net)), base,
                                    rel=pseudo_rel)

        self.bank = TopologyBank(switches, make)
        self.model = self.bank.estimator(switches.normal).model
        self.head = cfg.channel_index.get(f"flow.{base.branches.names[0]}.p")
        self.nominal_mw = float(base.p_load.sum() * base.base_mva)

    def z(self, values: np.ndarray, pv_mw: np.ndarray) -> np.ndarray:
        """The bank's measurement vector of a snapshot: its channels, the PV forecasts,
        and the load pseudo-measurements scaled to the load level the measured head
        flow implies (nominal when the head flow is not measured)."""
        head = values[self.head] if self.head is not None else math.nan
        level = (head + float(np.sum(pv_mw))) / self.nominal_mw if math.isfinite(head) \
            else 1.0
        pseudo = np.r_[pv_mw, load_pseudo_values(self.cfg.network, max(level, 0.05))]
        return np.asarray(self.model.values_to_pu(values, pseudo))

    def identify(self, values: np.ndarray, pv_mw: np.ndarray, reported: Topology,
                 warm: np.ndarray | None = None) -> Identification:
        return identify(self.bank, self.z(values, pv_mw), reported, warm=warm)


#: snapshots kept for an identification asked after their estimate came back
RECENT_SNAPSHOTS = 16


class LiveTopology:
    """The tracker on the live twin (the runner side of :class:`TopologyTracker`).

    * :meth:`stamp` runs for every snapshot the pipeline publishes, before the quality
      stage cleans it (:attr:`gateway.pipeline.Pipeline.topology_of`): its reported
      statuses go to the tracker, and the snapshot is stamped with the topology to
      estimate on (:attr:`Snapshot.topology`), so a reported change is in force for the
      very snapshot that carried it. It says whether that topology differs from the
      previous snapshot's (reported or identified): the pipeline then tells the quality
      stage that a new regime starts, so the flows' jump is not taken for bad data.
    * :meth:`note_handoff` runs first for every snapshot handed to the estimator: it keeps
      the snapshot for a hypothesis test (and stamps it when no pipeline did).
    * :meth:`on_estimate` sees every estimate: its ``J`` feeds the tracker's rise
      detector; when a hypothesis test is due, :func:`identify_in_child` runs through
      ``submit`` (the component gives a one-process pool: off the event loop and off
      the gateway's GIL, one test at a time, on the estimate's snapshot) and its result
      comes back through ``call_soon`` (the loop's thread), where the tracker decides.
    * events (``topology_changed``, ``topology_identified``) go to ``event``.
    """

    def __init__(self, cfg: TwinConfig, *, event: Any, submit: Any = None,
                 call_soon: Any = None) -> None:
        t = cfg.topology
        self.switches = SwitchSet.of(cfg.network)
        self.tracker = TopologyTracker(self.switches, confirm=t.confirm, ratio=t.ratio,
                                       probe_every_s=t.probe_s)
        self.names = [self.switches.names[self.switches.branches.index(s.branch)]
                      for s in cfg.switches]
        self.event = event
        self.submit = submit if t.identify else None
        self.call_soon = call_soon
        #: seq -> (values, PV, stamped topology, source time) of the snapshots kept for a
        #: test; a snapshot leaves when it is tested
        self._recent: dict[int, tuple[np.ndarray, np.ndarray, Topology | None, float]] = {}
        self._stamped: Topology = self.tracker.current  # the last snapshot's topology
        self._busy = False
        self.tests = 0
        self.test_errors = 0

    @property
    def label(self) -> str:
        return self.tracker.label

    def stamp(self, snap: Any) -> bool:
        """Feed ``snap``'s reported statuses to the tracker and stamp it with the topology
        to estimate on; True when that topology differs from the previous snapshot's (a
        reported change, or one identified since)."""
        st = snap.statuses
        if st is not None:
            states = {self.names[k]: bool(st[k]) for k in np.flatnonzero(np.isfinite(st))}
            for ev in self.tracker.on_status(snap.source_time, states):
                self._emit(ev)
        topo = snap.topology = self.tracker.current
        if topo == self._stamped:
            return False
        self._stamped = topo
        return True

    def note_handoff(self, snap: Any, pv_mw: np.ndarray, pv_sigma: np.ndarray) -> None:
        if snap.topology is None:  # not stamped by a pipeline before cleaning
            self.stamp(snap)
        if self.submit is not None:
            recent = self._recent
            recent[snap.seq] = (snap.values, pv_mw, snap.topology, snap.source_time)
            if len(recent) > RECENT_SNAPSHOTS:
                del recent[next(iter(recent))]

    def on_estimate(self, st: Any, received: float) -> None:
        self.tracker.on_estimate(st.source_time, st.chi2 if st.converged else math.inf)
        self._next_test()

    def _candidate(self) -> int | None:
        """The newest kept snapshot not yet tested that was stamped with the topology the
        tracker holds now (a snapshot of another topology says nothing about this one)."""
        current = self.tracker.current
        for seq in reversed(self._recent):
            if self._recent[seq][2] == current:
                return seq
        return None

    def _next_test(self) -> None:
        """Submit a hypothesis test when the tracker wants one and none is running. Called
        after every estimate AND after every test's result: a test that falls due while
        another runs is not left waiting for the next estimate, which never comes once
        the stream ends (a slow, niced process under CPU load returned its tests after
        the last estimate, and the tracker never got its confirming tests)."""
        if self.submit is None or self._busy:
            return
        seq = self._candidate()
        if seq is None:
            return
        values, pv, _, now = self._recent[seq]
        tr = self.tracker
        tr.tick(now)
        if not tr.needs_test():
            return
        del self._recent[seq]  # each snapshot is tested once: independent evidence
        reported = tr.current
        try:
            fut = self.submit(identify_in_child, values, pv, reported)
        except Exception as exc:  # the pool is gone (its process died): stop testing
            self.submit = None
            log.error("topology identification stopped: %s", exc)
            self.event("topology_identification_lost", "topology", {"error": str(exc)})
            return
        self._busy = True
        fut.add_done_callback(lambda f: self.call_soon(self._identified, f, reported, now))

    def idle(self) -> bool:
        """No test is running and none is due that a kept snapshot could serve: what the
        identification will conclude from the snapshots received so far is concluded."""
        if self.submit is None or self._busy:
            return not self._busy
        seq = self._candidate()
        tr = self.tracker
        return seq is None or not (tr.needs_test()
                                   or self._recent[seq][3] >= tr.next_deadline())

    def _identified(self, fut: Any, reported: Topology, now: float) -> None:
        self._busy = False
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.test_errors += 1
            if self.test_errors <= 3:
                log.error("topology identification failed: %s", exc)
            return  # no chaining: the next estimate tries again
        self.tests += 1
        if self.tracker.current == reported:  # else a status moved it: the test is past
            for ev in self.tracker.on_identification(now, fut.result()):
                self._emit(ev)
        self._next_test()

    def _emit(self, ev: TopologyEvent) -> None:
        log.warning("%s: %s (%s)", ev.kind, ev.topology, ev.source)
        self.event(ev.kind, "topology", ev.as_dict())

    def summary(self) -> dict[str, Any]:
        return {"topology": self.label, "changes": self.tracker.changes,
                "identified": self.tracker.identified, "tests": self.tests,
                "test_errors": self.test_errors}


#: the identification process's Identifier (built by :func:`child_init`)
_CHILD: Identifier | None = None


def child_init(cfg: TwinConfig, nice: int = 10) -> None:
    """Initializer of the identification process: lower its priority (the hot path's
    processes come first) and free it from the gateway's CPU (:func:`unpin`), build the
    :class:`Identifier` of ``cfg``."""
    global _CHILD
    import contextlib
    import os

    from gateway.realtime import unpin

    with contextlib.suppress(OSError):
        os.nice(nice)
    unpin()
    child = Identifier(cfg, SwitchSet.of(cfg.network), cfg.topology.pseudo_rel)
    # the hypotheses around the normal topology: their models now, not in the first test
    # (weights and factorizations still come from the first real snapshot)
    sw = child.bank.switches
    for t in sw.candidates(sw.normal):
        child.bank.estimator(t)
    _CHILD = child


def child_ready() -> bool:
    """Nothing: submitted once when the pool opens, so the process starts (and
    :func:`child_init` builds the hypotheses) while the gateway starts, not in the run."""
    return _CHILD is not None


def identify_in_child(values: np.ndarray, pv_mw: np.ndarray, reported: Topology
                      ) -> Identification:
    """One hypothesis test in the identification process (see :func:`child_init`)."""
    if _CHILD is None:
        raise GatewayError("topology identification: the process was not initialized")
    return _CHILD.identify(values, pv_mw, reported)
