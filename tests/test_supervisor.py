"""The estimator worker and its supervisor: the wire (one layout module, both ends),
handoff, newest-wins, deadline accounting, restart after SIGKILL (real child processes,
``--method flat``: no maths)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time

import numpy as np
import pytest

from gateway import estimator_worker as ew
from gateway import handoff as gh
from gateway.snapshot import Snapshot
from gateway.supervisor import EstimatorSupervisor


def snap(seq: int, now: float, m: int = 148) -> Snapshot:
    return Snapshot(seq, 1000.0 + seq * 0.02, now, np.arange(m, dtype=float),
                    published_time=now)


def test_wire_round_trip_through_the_one_layout_module() -> None:
    s = snap(3, 5.0)
    msg = gh.encode_snapshot(s, np.array([0.5, 0.7]), np.array([0.01, 0.02]), 6.0)
    back, pv, sig, t = gh.decode_snapshot(msg)
    assert back.seq == 3 and t == 6.0 and list(pv) == [0.5, 0.7] and list(sig) == [0.01, 0.02]
    np.testing.assert_array_equal(back.values, s.values)
    st = gh.StateMsg(3, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 80.0, 0.1, 0.2, 4, True,
                     np.array([1.0, 0.99]), np.array([0.0, -0.01]))
    got = gh.decode_reply(st.encode())
    assert isinstance(got, gh.StateMsg)
    assert (got.seq, got.source_time, got.arrival_time, got.published_time, got.send_time,
            got.recv_time, got.done_time, got.chi2, got.chi2_threshold, got.t_build_s,
            got.t_solve_s, got.iterations, got.converged) == (
        3, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, 80.0, 0.1, 0.2, 4, True)
    np.testing.assert_array_equal(got.vm, st.vm)
    np.testing.assert_array_equal(got.va, st.va)
    f = gh.decode_reply(gh.FailMsg(9, 1.0, 2.0, "not observable").encode())
    assert isinstance(f, gh.FailMsg) and f.reason == "not observable"
    r = gh.decode_reply(gh.encode_ready(37, 1234, 8.5))
    assert isinstance(r, gh.ReadyMsg) and (r.n_bus, r.pid, r.time) == (37, 1234, 8.5)
    with pytest.raises(gh.HandoffError):
        gh.decode_reply(b"Z" + bytes(10))
    with pytest.raises(gh.HandoffError):
        gh.decode_reply(struct.pack("<c", b"T") + bytes(8))
    with pytest.raises(gh.HandoffError):
        gh.decode_snapshot(b"T" + bytes(20))


def test_worker_answers_through_the_same_module() -> None:
    """The worker's side of the wire: a SNAP message in, a STATE (or FAIL) message out,
    both read back with the gateway's decoder."""
    n_bus, solve = ew.build_solver("ieee33", "flat")
    s = snap(7, 5.0)
    msg = gh.encode_snapshot(s, np.zeros(4), np.zeros(4), 6.0)
    got = gh.decode_reply(ew.answer(msg, 6.5, solve, 0.25, clock=lambda: 7.0))
    assert isinstance(got, gh.StateMsg)
    assert (got.seq, got.source_time, got.arrival_time, got.published_time) == (
        7, s.source_time, s.arrival_time, s.published_time)
    assert (got.send_time, got.recv_time, got.done_time, got.t_build_s) == (6.0, 6.5, 7.0,
                                                                           0.25)
    assert got.vm.size == n_bus and (got.vm == 1.0).all() and (got.va == 0.0).all()
    bad = gh.decode_reply(ew.answer(msg[:-3], 6.5, solve, 0.25))
    assert isinstance(bad, gh.FailMsg) and bad.recv_time == 6.5 and bad.reason


class Collect:
    def __init__(self) -> None:
        self.states: list[tuple[gh.StateMsg, float, bool]] = []
        self.events: list[tuple[str, dict[str, object]]] = []
        self.changed = asyncio.Event()

    def state(self, s: gh.StateMsg, t: float, met: bool) -> None:
        self.states.append((s, t, met))
        self.changed.set()

    def event(self, kind: str, detail: dict[str, object]) -> None:
        self.events.append((kind, detail))
        self.changed.set()

    async def until(self, cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


async def test_handoff_roundtrip_and_restart_after_kill() -> None:
    c = Collect()
    sup = EstimatorSupervisor("ieee33", deadline_s=10.0, method="flat", on_state=c.state,
                              on_event=c.event, spare=True)
    await sup.start()
    try:
        n = sup.n_bus
        assert n == 37
        sup.submit(snap(1, time.time()), np.zeros(4), np.zeros(4))
        await c.until(lambda: len(c.states) == 1)
        st, received, met = c.states[0]
        assert st.seq == 1 and met and st.vm.size == n and (st.vm == 1.0).all()
        assert st.send_time <= st.recv_time <= st.done_time <= received
        # wait for the warm spare, then kill the active process
        await asyncio.wait_for(asyncio.shield(sup.spare.ready), 60)  # type: ignore[union-attr]
        old = sup.active.pid  # type: ignore[union-attr]
        os.kill(old, signal.SIGKILL)
        await c.until(lambda: any(k == "estimator_restarted" for k, _ in c.events))
        kinds = [k for k, _ in c.events]
        assert kinds.index("estimator_crashed") < kinds.index("estimator_restarted")
        assert sup.stats.restarts == 1 and sup.active.pid != old  # type: ignore[union-attr]
        sup.submit(snap(2, time.time()), np.zeros(4), np.zeros(4))
        await c.until(lambda: len(c.states) == 2)
        assert c.states[-1][0].seq == 2
        # the spare is replaced behind the promoted one
        await c.until(lambda: sup.spare is not None, 60)
    finally:
        await sup.close()
    assert sup.active is None


async def test_newest_wins_and_deadline_misses_are_counted() -> None:
    c = Collect()
    fake = [0.0]  # the supervisor's clock, moved by the test (no real-time assumptions)
    sup = EstimatorSupervisor("ieee33", deadline_s=0.001, method="flat", on_state=c.state,
                              on_event=c.event, spare=False, clock=lambda: fake[0])
    await sup.start()
    try:
        sup.submit(snap(1, 0.0), np.zeros(4), np.zeros(4))  # sent: in flight
        sup.submit(snap(2, 0.0), np.zeros(4), np.zeros(4))  # waits in the pending slot
        sup.submit(snap(3, 0.0), np.zeros(4), np.zeros(4))  # replaces 2: superseded
        assert sup.stats.sent == 1 and sup.stats.superseded == 1
        fake[0] = 0.05  # past the 1 ms deadline, younger than stale_after_s (0.1 s)
        # 1 comes back late; 3 is then estimated all the same (the newest there is)
        await c.until(lambda: len(c.states) == 2 and sup.inflight is None)
        assert [s[0].seq for s in c.states] == [1, 3]
        assert [s[2] for s in c.states] == [False, False]
        # each counted once (timer or reply), the superseded 2 too: its deadline passed
        # without a state (gateway.flow's rule)
        assert sup.stats.deadline_misses == 3
        assert [k for k, _ in c.events].count("deadline_missed") == 3
        assert sup.stats.stale == 0 and sup.stats.sent == 2
        # a pending snapshot older than stale_after_s is dropped, not estimated
        fake[0] = 0.0
        sup.submit(snap(4, 0.0), np.zeros(4), np.zeros(4))
        sup.submit(snap(5, 0.0), np.zeros(4), np.zeros(4))
        fake[0] = 10.0
        await c.until(lambda: len(c.states) == 3 and sup.inflight is None)
        assert c.states[2][0].seq == 4 and sup.stats.stale == 1 and sup.stats.sent == 3
    finally:
        await sup.close()


async def test_a_broken_estimator_command_fails_start() -> None:
    from gateway.supervisor import SupervisorError

    sup = EstimatorSupervisor("no-such-config", deadline_s=1.0, method="flat",
                              on_state=lambda *a: None, spare=False)
    with pytest.raises(SupervisorError, match="did not become ready"):
        await sup.start(timeout=60)
    await sup.close()
