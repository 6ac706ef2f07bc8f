"""The historian sink on a real nats-server: every message one row, redelivery makes no
duplicate, a database outage leaves the backlog on the bus and loses nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bus.conn import SINK, STREAM, BusOptions, connect
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from gateway.bus.sink import Sink
from gateway.bus.worker import Worker
from hil.scenario import ScenarioSpec, make_trace
from tests.dbhelpers import mysql_scratch
from tests.fleethelpers import offer_rows, until
from tests.tcpproxy import TcpProxy

N = 20


@pytest.fixture(scope="module")
def trace():
    return make_trace(ScenarioSpec(config="ieee33", hours=30 / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=9))


async def _publish(opts: BusOptions, trace, twin: str = "f1") -> EdgeBus:
    edge = EdgeBus(twin, opts)
    await edge.start()
    offer_rows(edge, trace, range(N))
    edge.offer_event(0, {"time": float(trace.time[0]), "kind": "sender_restart",
                         "source": "stream", "run": edge.run})
    assert await edge.flush(30)
    return edge


def _counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "channels", "corrected", "states", "forecasts", "events")}
    finally:
        con.close()


async def test_sink_writes_every_message_once_even_when_redelivered(nats, trace,
                                                                    tmp_path: Path) -> None:
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    worker = Worker(opts)
    await worker.start()
    db = tmp_path / "fleet.db"
    sink = Sink(opts, f"sqlite:///{db}")
    await sink.start()
    edge = await _publish(opts, trace)
    total = N + 1 + N  # snapshots, one event, the states
    try:
        await until(lambda: worker.stats.solved + worker.stats.superseded == N, "estimates")
        await until(lambda: sink.stats.messages == N + 1 + worker.stats.solved,
                    "the sink caught up")
    finally:
        await edge.close()
        await worker.close()
        await sink.close()
    first = _counts(db)
    assert first["corrected"] == N and first["states"] == worker.stats.solved
    assert first["events"] == 1 and first["runs"] == 1 and first["channels"] == 148
    assert first["forecasts"] == N
    # the sink's consumer forgets its progress: every message comes again
    nc = await connect(opts)
    await nc.jetstream().delete_consumer(STREAM, SINK)
    await nc.drain()
    again = Sink(opts, f"sqlite:///{db}")
    await again.start()
    try:
        await until(lambda: again.stats.messages >= N + 1 + worker.stats.solved,
                    "the redelivered backlog written")
    finally:
        await again.close()
    assert _counts(db) == first  # not one duplicate row
    assert total >= again.stats.messages


@pytest.fixture()
def mysql() -> Iterator[tuple[str, str]]:
    yield from mysql_scratch()


async def test_database_outage_keeps_the_backlog_on_the_bus(nats, trace, mysql) -> None:
    base, dbname = mysql
    u = urlsplit(base)
    import pymysql

    conn = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                           password=u.password or "")
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{dbname}`")
    conn.close()
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    with TcpProxy(u.hostname or "127.0.0.1", u.port or 3306) as proxy:
        auth = f"{u.username}@" if u.username else ""
        url = f"mysql://{auth}127.0.0.1:{proxy.port}/{dbname}?connect_timeout=2&read_timeout=5"
        sink = Sink(opts, url, write_timeout_s=10.0)
        await sink.start()
        try:
            proxy.cut()
            edge = await _publish(opts, trace)
            await until(lambda: sink.stats.write_failures >= 1, "a failed write")
            assert sink.stats.messages == 0  # nothing acknowledged while the DB is away
            proxy.restore()
            await until(lambda: sink.stats.messages == N + 1, "the backlog written", 120)
            await edge.close()
        finally:
            await sink.close()
    conn = pymysql.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", database=dbname)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM corrected")
        assert cur.fetchone() == (N, N)
        cur.execute("SELECT COUNT(*) FROM events")
        assert cur.fetchone() == (1,)
    conn.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=40))
def test_state_vectors_stored_as_the_same_json_text(xs: list[float]) -> None:
    """The sink's cheaper vector encoding writes exactly the text ``json.dumps`` wrote
    (non-finite values as null), so the database holds what it held."""
    import json
    import math

    from gateway.historian.schema import json_vector

    expected = json.dumps([x if math.isfinite(x) else None for x in xs])
    assert json_vector(np.asarray(xs, dtype=np.float64)) == expected
