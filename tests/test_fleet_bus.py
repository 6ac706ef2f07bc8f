"""The fleet on a real nats-server: edge → work queue → workers → states back; bad input.

Each test starts its own ``nats-server -js`` on a loopback port with a temporary store
(Debian's nats-server; .ci/run installs it when missing). No sleeps as synchronisation:
every wait is for a condition, with its own deadline.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from gateway.bus import wire
from gateway.bus.conn import BUCKET, BusOptions, connect, ensure_fleet
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from gateway.bus.worker import Worker
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import offer_rows, queue_drained, until


@pytest.fixture(scope="module")
def trace():
    return make_trace(ScenarioSpec(config="ieee33", hours=40 / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=5))




async def test_edge_worker_round_trip_estimates_every_snapshot(nats, trace) -> None:
    opts = BusOptions(url=nats.url)
    name, rev = await register_config(opts, "ieee33", name="f1")
    assert (name, rev) == ("f1", 1)
    worker = Worker(opts)
    await worker.start()
    states: dict[int, wire.BusState] = {}
    edge = EdgeBus("f1", opts, on_state=lambda s, rtt: states.__setitem__(s.seq, s))
    await edge.start()
    n = 30
    try:
        offer_rows(edge, trace, range(n))
        await until(lambda: worker.stats.solved + worker.stats.superseded == n,
                    "every snapshot estimated or superseded", 60)
        await until(lambda: len(states) == worker.stats.solved, "states back at the edge", 10)
    finally:
        await edge.close()
        await worker.close()
    assert edge.stats.published == n and edge.stats.dropped == 0
    assert worker.stats.bad == 0 and worker.stats.failed == 0
    for seq, st in states.items():
        vm_true = np.abs(trace.v[seq])
        assert st.run == edge.run and st.converged
        assert np.mean(np.abs(st.vm_pu - vm_true) / vm_true) < 5e-4  # |V| MAPE < 0.05 %


async def test_bad_messages_and_unknown_feeders_are_counted_not_fatal(nats, trace) -> None:
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    worker = Worker(opts)
    await worker.start()
    nc = await connect(opts)
    js = nc.jetstream()
    try:
        await js.publish("gridtwin.f1.snapshot", b"not a snapshot")
        await js.publish("gridtwin.f1.snapshot", wire.encode_json(wire.EVENT, {"x": 1}))
        good = wire.BusSnapshot(1, 0, float(trace.time[0]), 0.0, time.time(),
                                trace.measured[0], np.zeros(trace.measured.shape[1], np.uint32),
                                trace.pv_mw[0], np.full(trace.pv_mw.shape[1], 0.01))
        await js.publish("gridtwin.nobody.snapshot", wire.encode_snapshot(good))
        await js.publish("gridtwin.f1.snapshot", wire.encode_snapshot(good))
        await until(lambda: worker.stats.solved == 1, "the good snapshot estimated", 30)
    finally:
        await nc.drain()
        await worker.close()
    assert worker.stats.bad == 2 and worker.stats.unknown_feeder == 1


async def test_an_invalid_config_revision_leaves_the_previous_in_force(nats) -> None:
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    worker = Worker(opts)
    await worker.start()
    nc = await connect(opts)
    try:
        kv = await nc.jetstream().key_value(BUCKET)
        rev = await kv.put("f1", b"[network]\ncase = 'no-such-case'\n")
        await until(lambda: worker.stats.config_rejected == 1, "the revision refused", 30)
    finally:
        await nc.drain()
        await worker.close()
    assert worker.cache.revision("f1") == rev - 1
    assert "revision" in worker.cache.errors["f1"]


async def test_newest_wins_within_a_batch(nats, trace) -> None:
    """Snapshots that queued up while no worker ran: only the newest per feeder is
    estimated, the rest are acknowledged as superseded; nothing is left pending."""
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    await register_config(opts, "ieee33", name="f2")
    edges = [EdgeBus(f, opts) for f in ("f1", "f2")]
    worker = Worker(opts, batch=64, credit=64)  # a batch holds at most the credit
    for e in edges:
        await e.start()
    try:
        for e in edges:
            offer_rows(e, trace, range(10))
        for e in edges:
            assert await e.flush(30)
        await worker.start()
        # at least: a redelivery (a stall past the ack wait) must fail the count below,
        # saying so, not leave this wait to time out
        await until(lambda: worker.stats.solved + worker.stats.superseded >= 20,
                    "the backlog handled", 60)
    finally:
        await worker.close()  # also when a wait failed: its tasks must not outlive the test
        for e in edges:
            await e.close()
    assert worker.stats.solved + worker.stats.superseded == 20, worker.stats
    assert worker.stats.close_timeouts == 0
    # the backlog arrives in one batch or, when a read splits it, two: at most two
    # estimates per feeder, everything else superseded (never one estimate each)
    assert worker.stats.solved <= 4 and worker.stats.superseded >= 16
    assert set(worker.stats.per_feeder) == {"f1", "f2"}
    assert max(worker.stats.per_feeder.values()) <= 2


async def test_stream_and_consumers_are_created_once(nats) -> None:
    opts = BusOptions(url=nats.url)
    nc = await connect(opts)
    try:
        js = nc.jetstream()
        await ensure_fleet(js, opts)
        await ensure_fleet(js, opts)  # idempotent: a second edge or worker starting
        info = await js.stream_info("GRIDTWIN")
        assert info.config.duplicate_window == 120.0
        names = {c.name for c in await js.consumers_info("GRIDTWIN")}
        assert names == {"workers", "sink"}
    finally:
        await nc.drain()


async def test_ack_all_acknowledges_a_batch_in_one_write(nats) -> None:
    """The acknowledgements written together reach the server as ones sent one by one:
    nothing stays pending or comes back."""
    from gateway.bus.conn import STREAM, WORKERS
    from gateway.bus.pull import PullFeed, ack_all

    opts = BusOptions(url=nats.url)
    nc = await connect(opts)
    try:
        js = nc.jetstream()
        await ensure_fleet(js, opts)
        for seq in range(7):
            await js.publish("gridtwin.f1.snapshot", b"x%d" % seq)
        feed = PullFeed(nc, STREAM, WORKERS, credit=16)
        await feed.start()
        got: list = []
        end = time.monotonic() + 30
        while len(got) < 7:
            assert time.monotonic() < end, "the messages did not come"
            got += await feed.next_batch(16, 5.0)
        await ack_all(nc, got)
        await nc.flush(5)

        await queue_drained(js, "acknowledgements not taken", 30,
                            between=lambda: nc.flush(5))
        await feed.close()
    finally:
        await nc.close()
    assert sorted(m.data for m in got) == [b"x%d" % i for i in range(7)]
