"""``gridtwin fleet demo``: a fleet of feeders on this machine, end to end over JetStream.

What runs (all real, all on loopback):

* a NATS server with JetStream: ``--bus URL`` if given, else a private ``nats-server`` on
  a free port with a temporary store (Debian's package), else the machine's on 4222;
* N IEEE33 feeders, each with its own scenario (seed, load level, PV) played by the
  emulator at ``--rate`` over UDP into its own edge gateway (one ``gateway.app.Gateway``
  per feeder, quality stage on, ``[bus] estimate = "workers"``), dealt out to K edge
  processes (``--edge-processes``, default one per core; :mod:`gateway.cli_fleet_edges`):
  the edges of one process share its event loop and burst together every frame period,
  so one process would bound the fleet by one core;
* M ``gridtwin worker`` processes sharing the work queue, and one ``gridtwin sink`` writing
  every feeder to one SQLite database.

Latency figures leave out the first ``min(3 s, S/4)``: the workers' start-up (imports, each
feeder's model built once) is not the fleet's steady state; counts cover the whole run
and are taken only once every snapshot handed to the bus has its answer (``settled``;
worker faults, snapshots a worker could not estimate, under ``worker_faults``).

Per feeder and in total it reports frames sent/received/lost, snapshots, states,
superseded, deadline misses, lost snapshots (handed to the bus and neither estimated nor
superseded), |V| MAPE against the feeder's truth and the bus round trip (edge publish →
state back) p50/p99. ``--kill-worker-at T`` SIGKILLs the first worker T s in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def register_demo(fsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = fsub.add_parser("demo", help="N emulated feeders, their edges, M workers and a sink "
                        "on this machine")
    d.add_argument("--feeders", type=int, default=4)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--rate", type=float, default=50.0, help="frames per second per stream")
    d.add_argument("--bus", default=None, metavar="URL",
                   help="an existing NATS JetStream server (default: a private one)")
    d.add_argument("--edge-processes", type=int, default=None, metavar="K",
                   help="processes the edges are dealt out to (default: one per core)")
    d.add_argument("--kill-worker-at", type=float, default=None, metavar="T")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")
    d.set_defaults(func=run_fleet_demo)


def run_fleet_demo(args: argparse.Namespace) -> int:
    from gateway.bus.conn import BusError
    from hil.errors import HilError

    if args.feeders < 1 or args.workers < 1 or args.seconds <= 0 or (
            args.edge_processes is not None and args.edge_processes < 1):
        print("gridtwin fleet demo: --feeders, --workers, --seconds and --edge-processes "
              "must be positive",
              file=sys.stderr)
        return 2
    try:
        res = asyncio.run(_demo(args))
    except (BusError, HilError) as exc:
        print(f"gridtwin fleet demo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, default=float))
    else:
        _print(res)
    return 0


# --------------------------------------------------------------------------- the bus

def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
        return True
    return False


def _bus(url: str | None, stack: contextlib.ExitStack, log: Any) -> tuple[str, int | None]:
    """The bus URL and, for a private server, its pid (for its CPU time)."""
    from hil.errors import HilError
    from hil.natsserver import NatsServer, nats_server_binary

    if url:
        return url, None
    if nats_server_binary() is not None:
        srv = stack.enter_context(NatsServer())
        log(f"fleet demo: private nats-server on {srv.url}")
        return srv.url, srv.proc.pid if srv.proc is not None else None
    if _answers(4222):
        log("fleet demo: using the NATS server on 127.0.0.1:4222")
        return "nats://127.0.0.1:4222", None
    raise HilError("no NATS server: install Debian's nats-server ('apt-get install "
                   "nats-server') or pass --bus nats://HOST:PORT of a JetStream server")


# --------------------------------------------------------------------------- processes

def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args],
                            stdout=out.open("wb"), stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env)


def _stop(p: subprocess.Popen[bytes], out: Path) -> dict[str, Any] | None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    text = out.read_text(errors="replace").strip().splitlines()
    with contextlib.suppress(json.JSONDecodeError, IndexError):
        return json.loads(text[-1])  # type: ignore[no-any-return]
    return None  # killed: its counters died with it


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.bus.conn import BusOptions
    from gateway.bus.fleet import register_config
    from gateway.cli_fleet_edges import CpuMeter

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(
            prefix="gridtwin-fleet-") as tmp:
        wd = Path(tmp)
        url, nats_pid = _bus(args.bus, stack, log)
        opts = BusOptions(url=url, ack_wait_s=1.0)
        for i in range(args.feeders):
            await register_config(opts, "ieee33", name=f"feeder-{i + 1:02d}")
        workers = [(_spawn(["worker", "--bus", url, "--ack-wait", "1"], wd / f"w{i}.json"),
                    wd / f"w{i}.json") for i in range(args.workers)]
        sink_out = wd / "sink.json"
        sink = _spawn(["sink", "--bus", url, "--historian", f"sqlite:///{wd / 'fleet.db'}"],
                      sink_out)
        cpu = CpuMeter({"workers": [p.pid for p, _ in workers], "sink": [sink.pid],
                        "nats": [nats_pid] if nats_pid else []}, rate=args.rate)
        killed: list[int] = []
        edges = _spawn_edges(args, url, wd)
        try:
            await _ready(edges, log)
            log(f"fleet demo: {args.feeders} edges in {len(edges)} processes, "
                f"{args.workers} workers, playing {args.seconds:g} s at {args.rate:g} Hz")
            start = time.time() + 0.5  # the edge processes play from here, in turn
            for i, p in enumerate(edges):
                assert p.stdin is not None
                at = start + phase(i, len(edges), args.rate)
                p.stdin.write(json.dumps({"start": at}).encode() + b"\n")
                p.stdin.flush()
            await _timeline(start, workers, cpu, killed, args, log)
            results = await _results(edges, args.seconds + 120.0)
        finally:
            for p in edges:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        wstats = [_stop(p, out) for p, out in workers]
        await _sink_caught_up(opts)
        sstats = _stop(sink, sink_out)
        rows = sorted((r for res in results for r in res["rows"]), key=lambda r: r["feeder"])
        return {**_report(rows, wstats, sstats, killed, args),
                "edge_processes": len(edges),
                "settled": all(res["settled"] for res in results),
                **_cpu(cpu, results, args.feeders)}


def phase(i: int, k: int, rate: float) -> float:
    """Edge process ``i`` of ``k`` plays ``i/k`` of a frame period after the first: the
    processes' bursts (every feeder of a process handles its frames in the same loop
    turns) take turns on the cores instead of all edges, then all workers, wanting a
    core at the same instant. Each feeder still sends at ``rate``."""
    return i / (k * rate)


def _spawn_edges(args: argparse.Namespace, url: str, wd: Path
                 ) -> list[subprocess.Popen[bytes]]:
    """K edge processes (:mod:`gateway.cli_fleet_edges`), the feeders dealt out in turn."""
    k = max(1, min(args.feeders, getattr(args, "edge_processes", None) or os.cpu_count() or 1))
    rows = min(round(args.seconds * args.rate) + 50, 6000)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = []
    for i in range(k):
        spec = {"url": url, "rate": args.rate, "seconds": args.seconds, "rows": rows,
                "warmup_s": min(3.0, args.seconds / 4),
                "feeders": list(range(i, args.feeders, k))}
        out.append(subprocess.Popen(
            [sys.executable, "-m", "gateway.cli_fleet_edges", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(wd / f"edges{i}.log").open("wb"), env=env))
    return out


async def _line(p: subprocess.Popen[bytes], key: str, timeout: float) -> dict[str, Any]:
    """The first JSON object with ``key`` on the process's stdout (other lines skipped);
    HilError when it ends first or ``timeout`` runs out."""
    from hil.errors import HilError

    assert p.stdout is not None
    loop = asyncio.get_running_loop()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            raw = await asyncio.wait_for(loop.run_in_executor(None, p.stdout.readline),
                                         max(0.1, end - time.monotonic()))
        except TimeoutError:
            break
        if not raw:
            raise HilError(f"an edge process ended (status {p.wait()}) before its {key!r}")
        with contextlib.suppress(ValueError):
            obj = json.loads(raw)
            if isinstance(obj, dict) and key in obj:
                return obj
    raise HilError(f"no {key!r} from an edge process in {timeout:g} s")


async def _ready(edges: list[subprocess.Popen[bytes]], log: Any) -> None:
    await asyncio.gather(*(_line(p, "ready", 300.0) for p in edges))


async def _results(edges: list[subprocess.Popen[bytes]], timeout: float
                   ) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(_line(p, "rows", timeout) for p in edges)))


async def _timeline(start: float, workers: list[tuple[subprocess.Popen[bytes], Path]],
                    cpu: Any, killed: list[int], args: argparse.Namespace, log: Any) -> None:
    """What happens at a time into the run: the end of the warm-up (the CPU of workers,
    sink and nats-server is measured from there to the end of play; each edge process
    measures its own), ``--kill-worker-at``."""

    def kill() -> None:
        workers[0][0].send_signal(signal.SIGKILL)
        killed.append(workers[0][0].pid)
        log(f"fleet demo: worker {workers[0][0].pid} killed at {args.kill_worker_at:.1f} s")

    events: list[tuple[float, Any]] = [(min(3.0, args.seconds / 4), cpu.mark),
                                       (args.seconds, cpu.stop_wall)]
    if args.kill_worker_at is not None:
        events.append((args.kill_worker_at, kill))
    for at, act in sorted(events, key=lambda e: e[0]):
        await asyncio.sleep(max(0.0, start + at - time.time()))
        act()


def _cpu(cpu: Any, results: list[dict[str, Any]], feeders: int) -> dict[str, Any]:
    """CPU ms per feeder-second of every process kind: the edge processes' own figures
    (weighted by the feeder-seconds each played) beside the workers', sink's, server's."""
    rep = cpu.report(feeders)
    out = rep.get("cpu_ms_per_feeder_s") or {}
    fs = sum(r["feeder_s"] for r in results if r.get("cpu_ms_per_feeder_s"))
    kinds: dict[str, Any] = {}
    for kind in ("edges", "emulators"):
        parts = [(r["cpu_ms_per_feeder_s"].get(kind), r["feeder_s"]) for r in results
                 if r.get("cpu_ms_per_feeder_s")]
        kinds[kind] = (sum(v * w for v, w in parts if v is not None) / fs) if fs else None
    merged = {"edges": kinds["edges"], **{k: v for k, v in out.items()
                                           if k not in ("emulators", "total")},
              "emulators": kinds["emulators"]}
    merged["total"] = sum(v for v in merged.values() if v is not None)
    late = [r["emulator_late_ms_p99"] for r in results if r.get("emulator_late_ms_p99")
            is not None]
    return {"cpu_ms_per_feeder_s": merged if fs else {},
            "emulator_late_ms_p99": max(late) if late else None}


async def _sink_caught_up(opts: Any, timeout: float = 60.0) -> None:
    """Until the sink's consumer has nothing pending or unacknowledged (or ``timeout``):
    its rows then hold every message of the run."""
    from gateway.bus.conn import SINK, STREAM, connect

    nc = await connect(opts)
    try:
        js = nc.jetstream()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            info = await js.consumer_info(STREAM, SINK)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


#: worker counters of snapshots that went wrong (not lost: answered, or left for
#: redelivery): bad layout, unregistered feeder, estimate failed, state not stored
WORKER_FAULTS = ("bad", "unknown_feeder", "failed", "publish_failures")


def _report(rows: list[dict[str, Any]], wstats: list[dict[str, Any] | None],
            sstats: dict[str, Any] | None, killed: list[int],
            args: argparse.Namespace) -> dict[str, Any]:
    """Totals over the edge processes' rows; per feeder superseded and failed (the
    workers' counts), estimated and lost (handed to the bus and neither estimated, nor
    superseded, nor failed by a worker).

    ``estimated`` is the states the workers stored (each once), not only those back at
    the edge when it counted: an edge counts once every snapshot is *answered*, and a
    newer snapshot's state answers an older one still being estimated by another
    (stalled) worker, whose state then comes after the count. Counting those as lost
    made a run that lost nothing report ``lost 1`` with ``settled: true``. A killed
    worker's counts die with it: then the edge's count is the floor."""
    live = [w for w in wstats if w is not None]
    for r in rows:
        f = r["feeder"]
        r["superseded"] = sum(w.get("superseded_per_feeder", {}).get(f, 0) for w in live)
        # estimated by no worker because it could not be (e.g. not observable: the
        # scenario's bad data left buses without a measurement): answered, not lost
        r["failed"] = sum(w.get("failed_per_feeder", {}).get(f, 0) for w in live)
        stored = sum(w.get("per_feeder", {}).get(f, 0)
                     - w.get("duplicates_per_feeder", {}).get(f, 0) for w in live)
        r["estimated"] = max(r["states"], stored)
        r["states_after_count"] = r["estimated"] - r["states"]
        r["lost"] = max(0, r["snapshots"] - r["estimated"] - r["superseded"] - r["failed"])
    tot = {k: sum(r[k] for r in rows) for k in ("frames_sent", "frames_received",
                                                "frames_lost", "snapshots", "states",
                                                "estimated", "states_after_count",
                                                "superseded", "failed", "lost",
                                                "deadline_misses")}
    rtts = [r["bus_rtt_ms"]["p99"] for r in rows if r["bus_rtt_ms"] and
            r["bus_rtt_ms"]["p99"] is not None]
    return {"feeders": len(rows), "workers": args.workers, "seconds": args.seconds,
            "rate_hz": args.rate, "per_feeder": rows, "total": tot,
            "vm_mape_pct_max": max((r["vm_mape_pct"] for r in rows
                                    if r["vm_mape_pct"] is not None), default=None),
            "bus_rtt_p99_ms_max": max(rtts, default=None),
            "e2e_p99_ms_max": max((r["e2e_p99_ms"] or 0.0 for r in rows), default=None),
            "fresh_p99_ms_max": max((r["fresh_p99_ms"] or 0.0 for r in rows), default=None),
            "workers_killed": len(killed),
            "redelivered": sum(w.get("redelivered", 0) for w in live),
            "worker_faults": {k: sum(w.get(k, 0) for w in live) for k in WORKER_FAULTS},
            "worker_fail_reasons": [r for w in live for r in w.get("fail_reasons", [])][:10],
            "sink": sstats}


def _print(res: dict[str, Any]) -> None:
    print(f"gridtwin fleet demo: {res['feeders']} feeders, {res['workers']} workers, "
          f"{res['seconds']:g} s at {res['rate_hz']:g} Hz")
    print(f"{'feeder':12} {'frames':>14} {'snaps':>6} {'states':>6} {'supers':>6} "
          f"{'fail':>4} {'lost':>5} {'miss':>5} {'|V| MAPE %':>10} {'rtt p50/p99 ms':>16}")
    for r in res["per_feeder"]:
        rtt = r["bus_rtt_ms"] or {}
        mape = "-" if r["vm_mape_pct"] is None else f"{r['vm_mape_pct']:.4f}"
        lat = "-" if rtt.get("p50") is None else f"{rtt['p50']:.1f}/{rtt['p99']:.1f}"
        print(f"{r['feeder']:12} {r['frames_received']:>6}/{r['frames_sent']:<7} "
              f"{r['snapshots']:>6} {r['states']:>6} {r['superseded']:>6} {r['failed']:>4} "
              f"{r['lost']:>5} "
              f"{r['deadline_misses']:>5} {mape:>10} {lat:>16}")
    t = res["total"]
    print(f"{'total':12} {t['frames_received']:>6}/{t['frames_sent']:<7} {t['snapshots']:>6} "
          f"{t['states']:>6} {t['superseded']:>6} {t['failed']:>4} {t['lost']:>5} "
          f"{t['deadline_misses']:>5}")
    print(f"e2e p99 (first frame -> state back at the edge): {res['e2e_p99_ms_max']:.1f} ms "
          f"estimated snapshots, {res['fresh_p99_ms_max']:.1f} ms every snapshot (superseded "
          "ones until a newer state came)")
    cpu = res.get("cpu_ms_per_feeder_s") or {}
    if cpu:
        print("CPU ms per feeder-second: " + ", ".join(
            f"{k} {v:.1f}" for k, v in cpu.items() if v is not None)
            + f"; emulator late p99 {res['emulator_late_ms_p99']:.1f} ms")
    if res["workers_killed"]:
        print(f"worker killed mid-run: {res['redelivered']} snapshots redelivered to the "
              "others")
    if res["sink"]:
        print(f"sink: {res['sink'].get('messages', 0)} messages written, rows "
              f"{res['sink'].get('rows', {})}")
