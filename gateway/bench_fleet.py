"""Fleet benchmarks (``gridtwin bench --only fleet`` / ``--only bus``), on a private
nats-server on loopback.

* ``bus.publish`` (snapshots/s): one edge publishes IEEE33 snapshots to JetStream with
  acknowledgements (pipelined, up to 64 awaiting their PubAck); peer: the same messages as core NATS
  publishes without acknowledgements (the bus's own ceiling on this machine).
* ``bus.rtt.p99`` (µs): edge publish → worker (a ``gridtwin worker`` process) → state back
  at the edge, one feeder at 200 snapshots/s.
* ``fleet.feeders_50hz`` (feeders): the largest N of IEEE33 feeders at 50 Hz (N emulators,
  N edge gateways with their quality stage in one edge process per core, two workers and
  the sink, all on this machine)
  with no lost snapshot and an end-to-end p99 of at most 20 ms over every snapshot (first
  frame at the edge → its state back there; a superseded one → the state of a newer one);
  ``fleet.e2e_p99_ms`` and ``fleet.cpu_per_feeder_ms`` (CPU of every process of the fleet
  — emulators, edges, workers, sink, nats-server — per feeder-second) report that run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import numpy as np

from gateway.bench import BenchResult, p99

E2E_P99_MAX_MS = 20.0


def benchmarks_bus(quick: bool) -> list[BenchResult]:
    """``bus.publish`` and ``bus.rtt.p99`` (on a private nats-server)."""
    from hil.natsserver import NatsServer

    if not _have_server():
        return []
    out: list[BenchResult] = []
    with NatsServer() as srv:
        out += asyncio.run(_publish(srv.url, 2000 if quick else 20_000))
        out.append(asyncio.run(_rtt(srv.url, 400 if quick else 2000)))
    return out


def benchmarks_fleet(quick: bool) -> list[BenchResult]:
    """``fleet.feeders_50hz`` and the figures of its run."""
    return _fleet(quick) if _have_server() else []


def _have_server() -> bool:
    from hil.natsserver import nats_server_binary

    if nats_server_binary() is None:
        print("bench: nats-server is not installed (apt-get install nats-server): no bus "
              "figures", file=sys.stderr)
        return False
    return True


def _snapshots(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from hil.scenario import ScenarioSpec, make_trace

    tr = make_trace(ScenarioSpec(config="ieee33", hours=min(n, 2000) / 50 / 3600,
                                 step_s=0.02, missing_pct=0.0, seed=7))
    flags = np.zeros(tr.measured.shape[1], np.uint32)
    sig = np.full(tr.pv_mw.shape[1], 0.01)
    return [(tr.measured[k % len(tr.time)], flags, tr.pv_mw[k % len(tr.time)], sig)
            for k in range(n)]


async def _publish(url: str, n: int) -> list[BenchResult]:
    from gateway.bus import wire
    from gateway.bus.conn import BusOptions, connect
    from gateway.bus.edge import EdgeBus

    snaps = _snapshots(n)
    edge = EdgeBus("bench", BusOptions(url=url), buffer=n + 10)
    await edge.start()
    t0 = time.perf_counter()
    for k, (v, f, pv, s) in enumerate(snaps):
        edge.offer_snapshot(k, 0.0, 0.0, v, f, pv, s)
    assert await edge.flush(300)
    js_rate = n / (time.perf_counter() - t0)
    await edge.close()
    nc = await connect(BusOptions(url=url))
    msgs = [wire.encode_snapshot(wire.BusSnapshot(1, k, 0.0, 0.0, 0.0, v, f, pv, s))
            for k, (v, f, pv, s) in enumerate(snaps)]
    t0 = time.perf_counter()
    for m in msgs:
        await nc.publish("bench.core", m)
    await nc.flush()
    core_rate = n / (time.perf_counter() - t0)
    await nc.close()
    return [BenchResult("bus.publish", js_rate, "snapshots/s", "core NATS publish, no ack",
                        core_rate)]


async def _rtt(url: str, n: int) -> BenchResult:
    from gateway.bus.conn import BusOptions
    from gateway.bus.edge import EdgeBus
    from gateway.bus.fleet import register_config

    opts = BusOptions(url=url)
    await register_config(opts, "ieee33", name="bench-rtt")
    rtts: list[float] = []
    edge = EdgeBus("bench-rtt", opts, on_state=lambda st, rtt: rtts.append(rtt))
    await edge.start()
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--bus", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        snaps = _snapshots(n + 50)
        end = time.monotonic() + 60
        k = 0
        while len(rtts) < 1 and time.monotonic() < end:  # the worker has loaded the feeder
            v, f, pv, s = snaps[0]
            edge.offer_snapshot(k, 0.0, 0.0, v, f, pv, s)
            k += 1
            await asyncio.sleep(0.1)
        rtts.clear()
        for j in range(n):
            v, f, pv, s = snaps[j]
            edge.offer_snapshot(k + j, 0.0, 0.0, v, f, pv, s)
            await asyncio.sleep(0.005)  # 200 snapshots/s, one feeder
        deadline = time.monotonic() + 10
        while len(rtts) < n * 0.99 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        worker.terminate()
        worker.wait(30)
        await edge.close()
    return BenchResult("bus.rtt.p99", p99(rtts) * 1e6 if rtts else float("nan"), "us")


def _fleet(quick: bool) -> list[BenchResult]:
    """Fleets of growing N until one loses a snapshot or misses the latency bound. The
    bound applies to every snapshot: an estimated one from its first frame at the edge to
    its state back there, a superseded one until the state of a newer snapshot came back
    (newest-wins must not hide a backlog)."""
    from gateway.cli_fleet_demo import _demo

    seconds = 8.0 if quick else 20.0
    best, best_res = 0, None
    for n in ((2, 4, 8) if quick else (2, 4, 8, 12, 16, 20, 24, 28, 32)):
        load = os.getloadavg()[0]
        args = argparse.Namespace(feeders=n, workers=2, seconds=seconds, rate=50.0, bus=None,
                                  kill_worker_at=None, json=True, edge_processes=None)
        res = asyncio.run(_demo(args))
        e2e = max(res["e2e_p99_ms_max"] or 0.0, res["fresh_p99_ms_max"] or 0.0)
        ok = res["total"]["lost"] == 0 and e2e <= E2E_P99_MAX_MS
        cpu = res.get("cpu_ms_per_feeder_s") or {}
        print(f"bench: fleet {n} feeders in {res['edge_processes']} edge processes "
              f"(load {load:.1f}): lost {res['total']['lost']}, "
              f"superseded {res['total']['superseded']}/{res['total']['snapshots']}, e2e p99 "
              f"{e2e:.1f} ms, worker faults {res.get('worker_faults')} "
              f"{res.get('worker_fail_reasons') or ''}, CPU ms/feeder-s " + ", ".join(
                  f"{k} {v:.1f}" for k, v in cpu.items() if v is not None)
              + f" -> {'ok' if ok else 'over'}", file=sys.stderr)
        if not ok:
            break
        best, best_res = n, (e2e, cpu)
    out = [BenchResult("fleet.feeders_50hz", float(best), "feeders")]
    if best_res is not None:
        out += [BenchResult("fleet.e2e_p99_ms", best_res[0], "ms"),
                BenchResult("fleet.cpu_per_feeder_ms", best_res[1].get("total", float("nan")),
                            "ms/s")]
    return out
