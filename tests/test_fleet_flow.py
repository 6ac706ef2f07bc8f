"""The bus plumbing under the fleet on a real nats-server: pipelined publishes with their
PubAcks matched, a pull consumer with standing credit, edges sharing one connection.

Each test starts its own ``nats-server -js`` (the ``nats`` fixture); every wait is for a
condition with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.bus import wire
from gateway.bus.conn import STREAM, WORKERS, BusOptions, connect, ensure_fleet
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from gateway.bus.pub import AckedPublisher, PublishRejected
from gateway.bus.pull import PullFeed
from gateway.bus.worker import Worker
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import offer_rows, until


@pytest.fixture(scope="module")
def trace():
    return make_trace(ScenarioSpec(config="ieee33", hours=20 / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=9))


async def test_pipelined_publishes_resolve_each_with_its_own_pubAck(nats) -> None:
    opts = BusOptions(url=nats.url)
    nc = await connect(opts)
    pub = AckedPublisher(nc)
    try:
        await ensure_fleet(nc.jetstream(), opts)
        await pub.start()
        futs = [await pub.publish("gridtwin.f1.event", wire.encode_json(wire.EVENT, {"k": k}),
                                  f"f1:1:event:{k}") for k in range(50)]
        again = await pub.publish("gridtwin.f1.event", b"x", "f1:1:event:7")  # same id
        nowhere = await pub.publish("nostream.here", b"x", "nowhere:1")
        assert [await f for f in futs] == [False] * 50  # each stored, none a duplicate
        assert await again is True  # stored once: the server says it had it
        with pytest.raises(PublishRejected):
            await nowhere  # no stream listens on the subject
        info = await nc.jetstream().stream_info(STREAM)
        assert info.state.messages == 50 and pub.in_flight == 0
    finally:
        await pub.close()
        await nc.drain()


async def test_pull_feed_delivers_every_message_once_on_standing_credit(nats, trace) -> None:
    """Snapshots waiting before the consumer starts and ones published while it runs all
    arrive once, on a few standing requests (not one request per batch)."""
    opts = BusOptions(url=nats.url)
    edge = EdgeBus("f1", opts)
    await edge.start()
    nc = await connect(opts)
    feed = PullFeed(nc, STREAM, WORKERS, credit=64)
    seen: list[int] = []
    try:
        offer_rows(edge, trace, range(30))
        assert await edge.flush(30)
        await feed.start()
        offer_rows(edge, trace, range(30, 60))

        async def drain() -> None:
            while len(seen) < 60:
                for m in await feed.next_batch(100, 1.0):
                    seen.append(wire.decode(m.data).seq)  # type: ignore[union-attr]
                    await m.ack()

        await asyncio.wait_for(drain(), 60)
        await nc.flush()
        info = await nc.jetstream().consumer_info(STREAM, WORKERS)
    finally:
        await feed.close()
        await nc.drain()
        await edge.close()
    assert sorted(seen) == list(range(60))  # each once
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert feed.requests_sent < 10  # standing credit, not a request per message


async def test_edges_sharing_a_connection_each_get_their_own_states(nats, trace) -> None:
    opts = BusOptions(url=nats.url)
    for f in ("f1", "f2"):
        await register_config(opts, "ieee33", name=f)
    worker = Worker(opts)
    await worker.start()
    got: dict[str, set[int]] = {"f1": set(), "f2": set()}

    def hear(f: str) -> Callable[[wire.BusState, float], None]:
        return lambda s, rtt: got[f].add(s.seq)

    edges = {f: EdgeBus(f, opts, shared=True, on_state=hear(f)) for f in got}
    try:
        for e in edges.values():
            await e.start()
        assert edges["f1"].nc is edges["f2"].nc  # one connection for both
        for e in edges.values():
            offer_rows(e, trace, range(5))
        await until(lambda: all(4 in s for s in got.values()), "both feeders' newest states")
        await edges["f1"].close()  # one edge leaves; the other keeps the connection
        offer_rows(edges["f2"], trace, range(5, 8))
        await until(lambda: 7 in got["f2"], "the remaining edge's state")
    finally:
        for e in edges.values():
            await e.close()
        await worker.close()
    assert edges["f2"].stats.published == 8 and edges["f2"].stats.errors == 0
    assert got["f1"] <= set(range(5)) and got["f2"] <= set(range(8))


def test_reply_subject_parsed_like_the_client_library() -> None:
    """``delivery`` reads the two numbers ``Msg.metadata`` would, from both reply layouts
    (without and with a JetStream domain), and refuses what the library refuses."""
    from nats.aio.msg import Msg
    from nats.errors import NotJSMessageError

    from gateway.bus.pull import delivery

    subjects = ["$JS.ACK.GRIDTWIN.workers.3.1042.977.1733300000000000000.12",
                "$JS.ACK.hub.ACCHASH.GRIDTWIN.sink.1.7.5.1733300000000000000.0.xyz",
                "$JS.ACK._.ACCHASH.GRIDTWIN.sink.2.99.98.1733300000000000000.4"]
    for reply in subjects:
        md = Msg.Metadata._from_reply(reply)
        assert delivery(reply) == (md.num_delivered, md.sequence.stream)
    for bad in ("_INBOX.abc.1", "$JS.ACK.GRIDTWIN.workers.3"):
        with pytest.raises(NotJSMessageError):
            Msg.Metadata._get_metadata_fields(bad)
        with pytest.raises(ValueError):
            delivery(bad)


async def test_delivery_of_real_messages_and_a_redelivery(nats, trace) -> None:
    """On messages the server delivered (and one it delivered again after a nak)."""
    from gateway.bus.pull import delivery

    opts = BusOptions(url=nats.url)
    edge = EdgeBus("f1", opts)
    await edge.start()
    nc = await connect(opts)
    feed = PullFeed(nc, STREAM, WORKERS, credit=8)
    got: list[tuple[int, int]] = []
    try:
        offer_rows(edge, trace, range(3))
        assert await edge.flush(30)
        await feed.start()

        async def take(n: int, *, nak_first: bool) -> None:
            left = n
            while left:
                for m in await feed.next_batch(10, 1.0):
                    md = m.metadata
                    assert delivery(m.reply) == (md.num_delivered, md.sequence.stream)
                    got.append(delivery(m.reply))
                    left -= 1
                    if nak_first and md.sequence.stream == 1 and md.num_delivered == 1:
                        await m.nak()
                    else:
                        await m.ack()

        await asyncio.wait_for(take(4, nak_first=True), 60)
    finally:
        await feed.close()
        await nc.drain()
        await edge.close()
    assert (2, 1) in got  # the nak'ed one came back, counted as a second delivery
