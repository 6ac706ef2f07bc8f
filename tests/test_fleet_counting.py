"""The fleet demo's count of lost snapshots when a worker stalls.

A 2-feeder demo once reported ``lost 1`` with ``settled: true`` during a multi-second
machine stall. The edge counts once every snapshot it published is *answered* (its own
state or a newer one's, :attr:`BusLink.unanswered`); with two workers, snapshot 5 can sit
at a stalled worker while another answers snapshot 6: the edge counts, and state 5
arrives after the count. The demo took "states back at the edge when it counted" for
"estimated", so snapshot 5 was neither estimated nor superseded: lost.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

from gateway.bus import wire
from gateway.bus.conn import BusOptions
from gateway.bus.link import BusLink
from gateway.cli_fleet_demo import _report
from gateway.config import load_config


def _snap(seq: int) -> SimpleNamespace:
    return SimpleNamespace(seq=seq, source_time=float(seq), arrival_time=time.time(),
                           values=np.ones(4), flags=np.zeros(4, np.uint32), topology=None)


def _state(run: int, seq: int) -> wire.BusState:
    now = time.time()
    return wire.BusState(run, seq, float(seq), now, now, now, 1.0, 2.0, 1e-3, 2, True,
                         np.ones(33), np.zeros(33))


def test_a_newer_state_answers_an_older_snapshot_before_its_own_state_comes() -> None:
    """The race, on the edge's own bookkeeping: nothing is left unanswered (the edge
    counts now) while snapshot 5's state is still to come."""
    got: list[int] = []
    link = BusLink(load_config("ieee33"), BusOptions(), clock=time.time,
                   on_state=lambda st, received, met: got.append(st.seq))
    for seq in (5, 6):
        link.snapshot(_snap(seq), np.zeros(2), np.full(2, 0.01))
    link._state(_state(link.edge.run, 6), 0.01)  # worker B, while worker A stalls on 5
    assert link.unanswered == 0 and got == [6]  # "settled", with state 5 still to come


def test_the_demo_counts_a_state_that_came_after_the_edge_counted_as_estimated() -> None:
    """The edge counted 1 state for 2 snapshots; the workers stored 2 states (one of
    them stored twice: a redelivery): nothing is lost."""
    row = {"feeder": "feeder-01", "snapshots": 2, "states": 1, "frames_sent": 100,
           "frames_received": 100, "frames_lost": 0, "deadline_misses": 0,
           "vm_mape_pct": 0.01, "e2e_p99_ms": 5.0, "fresh_p99_ms": 5.0,
           "bus_rtt_ms": {"p50": 1.0, "p99": 2.0}}
    workers = [{"per_feeder": {"feeder-01": 1}},  # worker A: snapshot 5, after the count
               {"per_feeder": {"feeder-01": 2}, "duplicates_per_feeder": {"feeder-01": 1}}]
    args = argparse.Namespace(workers=2, seconds=4.0, rate=50.0)
    res = _report([dict(row)], workers, None, [], args)
    t = res["total"]
    assert t["lost"] == 0 and t["estimated"] == 2 and t["states_after_count"] == 1
    # a snapshot nobody estimated is still lost
    res = _report([dict(row, snapshots=3)], workers, None, [], args)
    assert res["total"]["lost"] == 1


def test_a_killed_workers_states_still_count_from_the_edge() -> None:
    """A killed worker's counters died with it: the edge's count is the floor."""
    row = {"feeder": "feeder-01", "snapshots": 3, "states": 3, "frames_sent": 1,
           "frames_received": 1, "frames_lost": 0, "deadline_misses": 0,
           "vm_mape_pct": None, "e2e_p99_ms": None, "fresh_p99_ms": None,
           "bus_rtt_ms": None}
    res = _report([row], [None, {"per_feeder": {"feeder-01": 1}}], None, [1],
                  argparse.Namespace(workers=2, seconds=4.0, rate=50.0))
    assert res["total"]["lost"] == 0 and res["total"]["estimated"] == 3
