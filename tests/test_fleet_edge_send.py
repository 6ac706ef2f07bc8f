"""The edge's sending on a real nats-server: a snapshot leaves in the loop turn after its
offer, its de-duplication id is honoured, a full buffer drops the oldest and counts it,
and while the bus is down the buffer is the spool, sent in order once it is back.

The edge builds its ``HPUB`` frames itself and writes them to the connection's socket
(:meth:`gateway.bus.pub.AckedPublisher.send`), so each of these checks what the server
stored, not what the edge believes it sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import wire
from gateway.bus.conn import STREAM, BusOptions, connect, ensure_fleet
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from gateway.bus.pub import AckedPublisher, PublishRejected, route_direct
from gateway.bus.worker import Worker
from hil.natsserver import NatsServer, free_port
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import offer_rows, until


@pytest.fixture(scope="module")
def trace():  # type: ignore[no-untyped-def]
    return make_trace(ScenarioSpec(config="ieee33", hours=20 / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=5))


async def _stored(url: str) -> list[tuple[str, Any]]:
    """Every message of the fleet's stream: (its de-duplication id, decoded)."""
    nc = await connect(BusOptions(url=url))
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(STREAM, seq)
            out.append(((m.headers or {}).get("Nats-Msg-Id", ""), wire.decode(m.data)))
        return out
    finally:
        await nc.close()


async def test_offers_leave_in_the_loop_turn_after_them(nats, trace) -> None:  # type: ignore[no-untyped-def]
    """Edges sharing a connection: what they offer in one loop turn is with the server's
    socket when the next turn starts (no publisher or flusher task in between)."""
    opts = BusOptions(url=nats.url)
    edges = [EdgeBus(f"f{i}", opts, shared=True) for i in range(3)]
    for e in edges:
        await e.start()
    try:
        for e in edges:
            offer_rows(e, trace, range(0, 2))
        assert all(e.pending == 2 for e in edges)
        await asyncio.sleep(0)  # one loop turn: the send asked for by the offers runs
        assert all(len(e._buf) == 0 and e._inflight == 2 for e in edges)
        await until(lambda: all(e.stats.published == 2 for e in edges), "the PubAcks")
        # the PubAcks skip the client library's per-message delivery
        assert edges[0]._pub._sub.delivered == 0
    finally:
        for e in edges:
            await e.close()
    stored = await _stored(nats.url)
    assert sorted(i for i, _ in stored) == sorted(
        wire.msg_id(e.twin, e.run, wire.SNAPSHOT, s) for e in edges for s in (0, 1))
    assert all(isinstance(m, wire.BusSnapshot) for _, m in stored)


async def test_a_repeated_id_is_stored_once_and_counted(nats, trace) -> None:  # type: ignore[no-untyped-def]
    edge = EdgeBus("f1", BusOptions(url=nats.url))
    await edge.start()
    try:
        offer_rows(edge, trace, range(0, 3))
        offer_rows(edge, trace, range(1, 2))  # sent again: same run, kind and seq
        assert await edge.flush(20)
    finally:
        await edge.close()
    assert edge.stats.published == 4 and edge.stats.duplicates == 1
    assert [m.seq for _, m in await _stored(nats.url)] == [0, 1, 2]


async def test_a_full_buffer_drops_the_oldest_and_counts_it(nats, trace) -> None:  # type: ignore[no-untyped-def]
    edge = EdgeBus("f1", BusOptions(url=nats.url), buffer=5)
    offer_rows(edge, trace, range(0, 8))  # before start: nothing can leave yet
    assert edge.stats.dropped == 3 and edge.pending == 5
    await edge.start()
    try:
        assert await edge.flush(20)
    finally:
        await edge.close()
    assert edge.stats.published == 5
    assert [m.seq for _, m in await _stored(nats.url)] == [3, 4, 5, 6, 7]


async def test_the_buffer_spools_while_the_bus_is_down(tmp_path: Path, trace) -> None:  # type: ignore[no-untyped-def]
    """The server goes away mid-run: offers are kept (none lost, none sent), and once it
    is back on the same store they are sent in order; every snapshot is stored once."""
    port = free_port()
    srv = NatsServer(tmp_path / "js", port=port).start()
    edge = EdgeBus("f1", BusOptions(url=srv.url))
    try:
        await edge.start()
        offer_rows(edge, trace, range(0, 10))
        assert await edge.flush(20)
        srv.stop()
        await until(lambda: not edge.stats.connected, "the edge sees the bus gone")
        offer_rows(edge, trace, range(10, 30))
        await asyncio.sleep(0)
        assert edge.pending == 20 and edge.stats.published == 10  # spooled
        srv = NatsServer(tmp_path / "js", port=port).start()
        await until(lambda: edge.stats.connected, "the edge reconnected")
        assert await edge.flush(30)
    finally:
        await edge.close()
        srv.close()
    srv = NatsServer(tmp_path / "js", port=port).start()
    try:
        stored = await _stored(srv.url)
    finally:
        srv.close()
    assert edge.stats.reconnects >= 1 and edge.stats.dropped == 0
    assert [m.seq for _, m in stored] == list(range(30))


async def test_send_path_reports_rejections_and_survives_a_failing_handler(nats) -> None:  # type: ignore[no-untyped-def]
    """A publish no stream takes comes back as a PubAck with a status header (the client
    library's delivery path) and reaches its callback as PublishRejected; a routed
    handler that raises is logged and the connection's reader carries on."""
    opts = BusOptions(url=nats.url)
    nc = await connect(opts)
    pub = AckedPublisher(nc)
    got: list[tuple[str, BaseException | None, bool]] = []
    seen: list[bytes] = []

    def handler(subject: bytes, data: bytes) -> None:
        seen.append(data)
        if data == b"boom":
            raise RuntimeError("a handler's bug")

    try:
        await ensure_fleet(nc.jetstream(), opts)
        await pub.start()
        pub.send(b"nostream.here", b"x", b"nowhere:1", lambda c, e, d: got.append((c, e, d)),
                 "nowhere")
        pub.send(b"gridtwin.f1.event", wire.encode_json(wire.EVENT, {"k": 1}), b"f1:1:event:1",
                 lambda c, e, d: got.append((c, e, d)), "stored")
        pub.write()
        await until(lambda: len(got) == 2, "both PubAcks")
        sub = await nc.subscribe("probe")
        assert route_direct(nc, sub, handler)
        await nc.publish("probe", b"boom")
        await nc.publish("probe", b"after")
        await until(lambda: seen == [b"boom", b"after"], "both probes handled")
    finally:
        await pub.close()
        await nc.drain()
    by = {c: (e, d) for c, e, d in got}
    assert isinstance(by["nowhere"][0], PublishRejected)
    assert by["stored"] == (None, False)


async def test_states_reach_the_edge_from_the_reader(nats, trace) -> None:  # type: ignore[no-untyped-def]
    """A worker's states (with their de-duplication header) reach each edge's
    ``on_state`` without the client library's subscription delivery."""
    opts = BusOptions(url=nats.url)
    for f in ("f1", "f2"):
        await register_config(opts, "ieee33", name=f)
    worker = Worker(opts)
    await worker.start()
    got: dict[str, list[int]] = {"f1": [], "f2": []}
    edges = [EdgeBus(f, opts, shared=True,
                     on_state=lambda s, rtt, f=f: got[f].append(s.seq)) for f in got]
    try:
        for e in edges:
            await e.start()
        for e in edges:
            offer_rows(e, trace, range(5))
        await until(lambda: all(4 in s for s in got.values()), "both feeders' newest states")
    finally:
        for e in edges:
            await e.close()
        await worker.close()
    assert all(e.stats.states == len(got[e.twin]) > 0 for e in edges)
    assert all(e._sub.delivered == 0 for e in edges)  # none through the library's queue
