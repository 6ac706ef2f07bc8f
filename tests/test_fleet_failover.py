"""Fleet failures with real processes: a worker killed mid-run, a cluster node stopped.

* Two `gridtwin worker` processes share the work queue; one is SIGKILLed while snapshots
  flow. Nothing is lost: every snapshot is estimated or superseded by design, the newest
  of every feeder has its state, and the work queue ends with nothing pending.
* A three-node nats-server cluster with the stream replicated three times (R3): a node is
  stopped mid-run; every snapshot published is acknowledged and stored once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.bus import wire
from gateway.bus.conn import STREAM, WORKERS, BusOptions, connect
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from hil.natsserver import NatsServer, cluster, free_port
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import offer_rows, queue_drained, until

FEEDERS = ("f1", "f2", "f3")


@pytest.fixture(scope="module")
def trace():
    return make_trace(ScenarioSpec(config="ieee33", hours=120 / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=21))


def _solved(port: int) -> float:
    """The worker's own counter of estimated snapshots (its /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    m = re.search(r'gridtwin_worker_snapshots_total\{outcome="solved"\} (\S+)', text)
    return float(m.group(1)) if m else -1.0


def _worker(url: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--bus", url, "--ack-wait", "1",
         "--metrics-bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


async def test_a_killed_worker_loses_no_snapshot(nats: NatsServer, trace) -> None:
    opts = BusOptions(url=nats.url, ack_wait_s=1.0)
    for f in FEEDERS:
        await register_config(opts, "ieee33", name=f)
    states: dict[str, dict[int, wire.BusState]] = {f: {} for f in FEEDERS}
    edges = [EdgeBus(f, opts, on_state=lambda s, rtt, f=f: states[f].__setitem__(s.seq, s))
             for f in FEEDERS]
    for e in edges:
        await e.start()  # creates the stream and the work queue (ack wait 1 s)
    ports = [free_port(), free_port()]
    procs = [_worker(nats.url, p) for p in ports]
    n = 100
    try:
        await until(lambda: all(_solved(p) >= 0 for p in ports), "both workers serving")
        for k in range(n):
            for e in edges:
                offer_rows(e, trace, range(k, k + 1), wall=True)
            if k == 30:
                await until(lambda: all(_solved(p) > 0 for p in ports), "both working")
                procs[0].send_signal(signal.SIGKILL)  # mid-run, maybe mid-solve
                procs[0].wait(10)
                survivor_at_kill = _solved(ports[1])
            await asyncio.sleep(0.02)  # the edges publish at 50 Hz (pacing, not a wait)
        for e in edges:
            assert await e.flush(30)
        nc = await connect(opts)
        js = nc.jetstream()

        await queue_drained(js, "the work queue never drained", 90)
        info = await js.consumer_info(STREAM, WORKERS)
        await nc.drain()
        await until(lambda: all(n - 1 in states[f] for f in FEEDERS), "the newest states")
        survivor = _solved(ports[1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
        for e in edges:
            await e.close()
    # every snapshot was delivered and acknowledged (estimated, or superseded by a newer
    # one of its feeder); the last of every feeder, which nothing supersedes, has a state
    assert info.num_pending == 0 and info.num_ack_pending == 0
    assert survivor > survivor_at_kill  # the other worker carried on
    for f in FEEDERS:
        assert states[f][n - 1].converged


async def test_cluster_node_stopped_mid_run_loses_nothing(tmp_path: Path, trace) -> None:
    nodes = cluster(tmp_path, 3)
    try:
        urls = tuple(s.url for s in nodes)
        opts = BusOptions(url=urls[0], servers=urls[1:], replicas=3)
        end = time.monotonic() + 60
        edge = EdgeBus("f1", opts)
        while True:  # the cluster elects its JetStream leader first
            try:
                await edge.start()
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.5)
        n = 200
        for k in range(n):
            offer_rows(edge, trace, range(k, k + 1), wall=True)
            if k == n // 2:
                nodes[2].stop()  # one of three nodes away: R3 keeps a quorum
            await asyncio.sleep(0.005)
        assert await edge.flush(60)
        await edge.close()
        assert edge.stats.published == n and edge.stats.dropped == 0
        nc = await connect(BusOptions(url=urls[1]))
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        await nc.drain()
        assert info.config.num_replicas == 3
        assert info.state.messages == n  # every snapshot stored once
    finally:
        for s in nodes:
            s.close()
