"""``gridtwin fleet demo``: a fleet of feeders on this machine, end to end over JetStream.

What runs (all real, all on loopback):

* a NATS server with JetStream: ``--bus URL`` if given, else a private ``nats-server`` on
  a free port with a temporary store (Debian's package), else the machine's on 4222;
* N IEEE33 feeders, each with its own scenario (seed, load level, PV) played by the
  emulator at ``--rate`` over UDP into its own edge gateway (the gateways share one
  process and one event loop: one ``gateway.app.Gateway`` per feeder, quality stage on,
  ``[bus] estimate = "workers"``);
* M ``gridtwin worker`` processes sharing the work queue, and one ``gridtwin sink`` writing
  every feeder to one SQLite database.

Latency figures leave out the first ``min(3 s, S/4)``: the workers' start-up (imports, each
feeder's model built once) is not the fleet's steady state; counts cover the whole run.

Per feeder and in total it reports frames sent/received/lost, snapshots, states,
superseded, deadline misses, lost snapshots (handed to the bus and neither estimated nor
superseded), |V| MAPE against the feeder's truth and the bus round trip (edge publish →
state back) p50/p99. ``--kill-worker-at T`` SIGKILLs the first worker T s in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
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

import numpy as np


def register_demo(fsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = fsub.add_parser("demo", help="N emulated feeders, their edges, M workers and a sink "
                        "on this machine")
    d.add_argument("--feeders", type=int, default=4)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--rate", type=float, default=50.0, help="frames per second per stream")
    d.add_argument("--bus", default=None, metavar="URL",
                   help="an existing NATS JetStream server (default: a private one)")
    d.add_argument("--kill-worker-at", type=float, default=None, metavar="T")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")
    d.set_defaults(func=run_fleet_demo)


def run_fleet_demo(args: argparse.Namespace) -> int:
    from gateway.bus.conn import BusError
    from hil.errors import HilError

    if args.feeders < 1 or args.workers < 1 or args.seconds <= 0:
        print("gridtwin fleet demo: --feeders, --workers and --seconds must be positive",
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


# --------------------------------------------------------------------------- feeders

@dataclasses.dataclass
class Feeder:
    name: str
    trace: Any
    gateway: Any = None
    emulator: Any = None
    truth_t0: float = 0.0
    errors: list[float] = dataclasses.field(default_factory=list)
    sent: int = 0
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # after settle()


def _feeders(n: int, rows: int, rate: float, log: Any) -> list[Feeder]:
    from hil.scenario import ScenarioSpec, make_trace

    out = []
    for i in range(n):
        spec = ScenarioSpec(config="ieee33", start="1990-06-01T11:00", hours=rows / rate / 3600,
                            step_s=1.0 / rate, seed=100 + i, load_scale=0.8 + 0.05 * (i % 8),
                            missing_pct=0.5, bad_pct=2.0)
        out.append(Feeder(f"feeder-{i + 1:02d}", make_trace(spec)))
    log(f"fleet demo: {n} scenarios of {rows} steps")
    return out


async def _start_edges(feeders: list[Feeder], url: str, rate: float) -> None:
    from gateway.app import Gateway, GatewayOptions
    from gateway.config import BusConfig, load_config
    from hil.emulator import Emulator, retarget

    base = load_config("ieee33")
    for f in feeders:
        cfg = dataclasses.replace(
            retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams}),
            name=f.name, bus=BusConfig(url=url, estimate="workers"),
            quality=dataclasses.replace(base.quality, predictor_process=False))
        # the edges of the demo forecast nothing: one forecaster process per feeder would
        # measure the forecaster, not the fleet
        gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="",
                                         forecast=False))
        await gw.start()
        f.gateway = gw
        ports = {n: t.local_address for n, t in gw.transports.items()}
        f.emulator = Emulator(retarget(base, {n: f"udp://{a[0]}:{a[1]}"
                                              for n, a in ports.items() if a}),
                              f.trace, rate_hz=rate, loop=True)
        f.truth_t0 = float(f.trace.time[0])


def _score(f: Feeder, rate: float) -> None:
    """|V| error of the feeder's newest estimate against its truth at that instant."""
    st = f.gateway.pipeline.last_state
    if st is None:
        return
    msg = st[0]
    k = round((msg.source_time - f.truth_t0) * rate) % f.trace.v.shape[0]
    truth = np.abs(f.trace.v[k])
    f.errors.append(float(np.mean(np.abs(msg.vm - truth) / truth)))


async def _play(feeders: list[Feeder], rate: float, seconds: float, on_tick: Any,
                cpu: CpuMeter) -> None:
    """All feeders' emulators at ``rate``, paced on the wall clock, for ``seconds``. How
    late each step's frames left (against the schedule) goes to ``cpu.late_s``: an edge
    process too busy to send on time shows there, not as a short e2e latency."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    steps = round(seconds * rate)
    last_states = [0] * len(feeders)
    try:
        for k in range(steps):
            c0 = time.thread_time()
            if cpu.marked:
                cpu.late_s.append(loop.time() - (t0 + k / rate))
                cpu.steps += 1
            for f in feeders:
                for out in f.emulator.frames(k):
                    tx.sendto(out.emission.data, (out.plan.stream.host, out.plan.stream.port))
                    f.sent += 1
            cpu.emulator_s += time.thread_time() - c0
            for i, f in enumerate(feeders):
                if f.gateway.states != last_states[i]:
                    last_states[i] = f.gateway.states
                    _score(f, rate)
            on_tick(loop.time() - t0)
            delay = t0 + (k + 1) / rate - loop.time()
            await asyncio.sleep(max(0.0, delay))  # pacing the senders at the frame rate
    finally:
        tx.close()


def proc_cpu_s(pid: int) -> float | None:
    """CPU time (user + system, s) of process ``pid`` from /proc; None when it is gone (or
    there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class CpuMeter:
    """CPU time per process kind over the steady state (:meth:`mark` → :meth:`stop`), in
    ms per feeder-second of data played (not of wall time: a run that falls behind is not
    made to look cheaper): where a fleet on one machine spends its cores. The emulators
    share the edges' process; their thread CPU time is taken out of it."""

    pids: dict[str, list[int]]
    rate: float = 50.0
    steps: int = 0  # emulator steps played since the mark
    emulator_s: float = 0.0
    late_s: list[float] = dataclasses.field(default_factory=list)
    marked: bool = False
    _t0: dict[int, float | None] = dataclasses.field(default_factory=dict)
    _t1: dict[int, float | None] = dataclasses.field(default_factory=dict)
    _wall: list[float] = dataclasses.field(default_factory=list)

    def _read(self) -> dict[int, float | None]:
        return {pid: proc_cpu_s(pid) for pids in self.pids.values() for pid in pids}

    def mark(self) -> None:
        self.marked, self.emulator_s, self.steps = True, 0.0, 0
        self._t0, self._wall = self._read(), [time.monotonic()]

    def stop(self) -> None:
        if self.marked and len(self._wall) == 1:
            self._t1 = self._read()
            self._wall.append(time.monotonic())

    def report(self, feeders: int) -> dict[str, Any]:
        if len(self._wall) != 2:
            return {}
        fs = feeders * max(self.steps, 1) / self.rate
        out: dict[str, Any] = {}
        for kind, pids in self.pids.items():
            used = [(self._t1.get(p) or 0.0) - (self._t0.get(p) or 0.0) for p in pids
                    if self._t0.get(p) is not None and self._t1.get(p) is not None]
            out[kind] = 1e3 * sum(used) / fs if used else None
        if out.get("edges") is not None:
            out["edges"] -= 1e3 * self.emulator_s / fs
        out["emulators"] = 1e3 * self.emulator_s / fs
        out["total"] = sum(v for v in out.values() if v is not None)
        return {"cpu_ms_per_feeder_s": out,
                "emulator_late_ms_p99": float(np.percentile(self.late_s, 99)) * 1e3
                if self.late_s else None}


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

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(
            prefix="gridtwin-fleet-") as tmp:
        wd = Path(tmp)
        url, nats_pid = _bus(args.bus, stack, log)
        rows = min(round(args.seconds * args.rate) + 50, 6000)
        feeders = _feeders(args.feeders, rows, args.rate, log)
        opts = BusOptions(url=url, ack_wait_s=1.0)
        for f in feeders:
            await register_config(opts, "ieee33", name=f.name)
        workers = [(_spawn(["worker", "--bus", url, "--ack-wait", "1"], wd / f"w{i}.json"),
                    wd / f"w{i}.json") for i in range(args.workers)]
        sink_out = wd / "sink.json"
        sink = _spawn(["sink", "--bus", url, "--historian", f"sqlite:///{wd / 'fleet.db'}"],
                      sink_out)
        cpu = CpuMeter({"edges": [os.getpid()], "workers": [p.pid for p, _ in workers],
                        "sink": [sink.pid], "nats": [nats_pid] if nats_pid else []},
                       rate=args.rate)
        killed: list[int] = []
        on_tick = _ticker(feeders, workers, cpu, killed, args, log)
        try:
            await _start_edges(feeders, url, args.rate)
            # what start-up built (traces, models, configs) stays: out of the collector's
            # way, so a full collection does not walk it during the run (pauses of ~0.1 s)
            gc.collect()
            gc.freeze()
            log(f"fleet demo: {len(feeders)} edges, {args.workers} workers, playing "
                f"{args.seconds:g} s at {args.rate:g} Hz")
            await _play(feeders, args.rate, args.seconds, on_tick, cpu)
            cpu.stop()
            settled = await settle(feeders)
            for f in feeders:  # counted now: the states are in, nothing is closing yet
                f.summary = f.gateway.summary()
        finally:
            for f in feeders:
                if f.gateway is not None:
                    await f.gateway.close()
        wstats = [_stop(p, out) for p, out in workers]
        await _sink_caught_up(opts)
        sstats = _stop(sink, sink_out)
        return {**_report(feeders, wstats, sstats, killed, args), "settled": settled,
                **cpu.report(len(feeders))}


def _ticker(feeders: list[Feeder], workers: list[tuple[subprocess.Popen[bytes], Path]],
            cpu: CpuMeter, killed: list[int], args: argparse.Namespace, log: Any) -> Any:
    """What happens at a time into the run: the end of the warm-up (latency and CPU are
    measured from there: the first seconds are the workers' start-up, imports and each
    feeder's model built once, not the fleet; it ends once every feeder has had a state
    back, however long the start-up took) and ``--kill-worker-at``."""
    warmup_s = min(3.0, args.seconds / 4)

    def on_tick(t: float) -> None:
        if not cpu.marked and t >= warmup_s and all(f.gateway.states for f in feeders):
            cpu.mark()
            for f in feeders:
                f.gateway.telemetry.e2e_s.clear()
                f.gateway.bus.rtt_s.clear()
                f.gateway.bus.fresh_s.clear()
        if args.kill_worker_at is not None and not killed and t >= args.kill_worker_at:
            workers[0][0].send_signal(signal.SIGKILL)
            killed.append(workers[0][0].pid)
            log(f"fleet demo: worker {workers[0][0].pid} killed at {t:.1f} s")

    return on_tick


def _received(gw: Any) -> int:
    return sum(s.received for s in gw.telemetry.stats.values())


async def settle(feeders: list[Feeder], timeout: float = 30.0) -> bool:
    """End of play, before anything is counted: every frame sent has been read (its
    datagram may still sit in the socket), the pipeline has handed on every snapshot it
    held (``Gateway.drain``), and every snapshot handed to the bus has its answer (its
    state, or a newer snapshot's). Counting earlier shows a straggler still in flight as
    lost. False when ``timeout`` ran out first (a loss, then, is real or the bus is stuck).
    """
    end = time.monotonic() + timeout

    async def until(cond: Any) -> bool:
        while not cond():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True

    # frames the kernel dropped never arrive: wait for them a short part of the timeout
    read_end = time.monotonic() + min(5.0, timeout / 4)
    while any(_received(f.gateway) < f.sent for f in feeders) and time.monotonic() < read_end:
        await asyncio.sleep(0.01)
    for f in feeders:
        f.gateway.drain()  # publish what the aligner still holds
    return await until(lambda: all(f.gateway.bus.edge.pending == 0
                                   and f.gateway.bus.unanswered == 0 for f in feeders))


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


def _report(feeders: list[Feeder], wstats: list[dict[str, Any] | None],
            sstats: dict[str, Any] | None, killed: list[int],
            args: argparse.Namespace) -> dict[str, Any]:
    live = [w for w in wstats if w is not None]
    superseded = {f.name: sum(w.get("superseded_per_feeder", {}).get(f.name, 0) for w in live)
                  for f in feeders}
    rows = []
    for f in feeders:
        s = f.summary
        b = s["bus"] or {}
        lost = max(0, s["snapshots"] - s["states"] - superseded[f.name])
        rows.append({
            "feeder": f.name, "frames_sent": f.sent, "frames_received": s["frames_received"],
            "frames_lost": max(0, f.sent - s["frames_received"]), "snapshots": s["snapshots"],
            "states": s["states"],
            "superseded": superseded[f.name], "lost": lost,
            "deadline_misses": s["deadline_misses"],
            "vm_mape_pct": 100 * float(np.mean(f.errors)) if f.errors else None,
            "e2e_p99_ms": s["e2e_latency_ms"]["p99"],
            "fresh_p99_ms": (b.get("fresh_ms") or {}).get("p99"), "bus_rtt_ms": b.get("rtt_ms"),
            "bus_errors": b.get("errors", 0)})
    tot = {k: sum(r[k] for r in rows) for k in ("frames_sent", "frames_received",
                                                "frames_lost", "snapshots", "states",
                                                "superseded", "lost", "deadline_misses")}
    rtts = [r["bus_rtt_ms"]["p99"] for r in rows if r["bus_rtt_ms"] and
            r["bus_rtt_ms"]["p99"] is not None]
    return {"feeders": len(feeders), "workers": args.workers, "seconds": args.seconds,
            "rate_hz": args.rate, "per_feeder": rows, "total": tot,
            "vm_mape_pct_max": max((r["vm_mape_pct"] for r in rows
                                    if r["vm_mape_pct"] is not None), default=None),
            "bus_rtt_p99_ms_max": max(rtts, default=None),
            "e2e_p99_ms_max": max((r["e2e_p99_ms"] or 0.0 for r in rows), default=None),
            "fresh_p99_ms_max": max((r["fresh_p99_ms"] or 0.0 for r in rows), default=None),
            "workers_killed": len(killed),
            "redelivered": sum(w.get("redelivered", 0) for w in live),
            "worker_faults": {k: sum(w.get(k, 0) for w in live) for k in WORKER_FAULTS},
            "sink": sstats}


def _print(res: dict[str, Any]) -> None:
    print(f"gridtwin fleet demo: {res['feeders']} feeders, {res['workers']} workers, "
          f"{res['seconds']:g} s at {res['rate_hz']:g} Hz")
    print(f"{'feeder':12} {'frames':>14} {'snaps':>6} {'states':>6} {'supers':>6} "
          f"{'lost':>5} {'miss':>5} {'|V| MAPE %':>10} {'rtt p50/p99 ms':>16}")
    for r in res["per_feeder"]:
        rtt = r["bus_rtt_ms"] or {}
        mape = "-" if r["vm_mape_pct"] is None else f"{r['vm_mape_pct']:.4f}"
        lat = "-" if rtt.get("p50") is None else f"{rtt['p50']:.1f}/{rtt['p99']:.1f}"
        print(f"{r['feeder']:12} {r['frames_received']:>6}/{r['frames_sent']:<7} "
              f"{r['snapshots']:>6} {r['states']:>6} {r['superseded']:>6} {r['lost']:>5} "
              f"{r['deadline_misses']:>5} {mape:>10} {lat:>16}")
    t = res["total"]
    print(f"{'total':12} {t['frames_received']:>6}/{t['frames_sent']:<7} {t['snapshots']:>6} "
          f"{t['states']:>6} {t['superseded']:>6} {t['lost']:>5} {t['deadline_misses']:>5}")
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
