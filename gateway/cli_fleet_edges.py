"""One edge process of ``gridtwin fleet demo``: a share of the demo's feeders, each with its
emulator and its edge gateway, on one event loop.

The demo runs its edges in K such processes (``--edge-processes``, default: one per
core): the edges of one process share one event loop and all burst every frame period
(ingest, alignment, the quality stage and its predictor, the bus), so with every edge in
one process the fleet is bounded by one core however many the machine has.

Run by the demo as ``python -m gateway.cli_fleet_edges SPEC`` (SPEC: JSON with the bus
URL, rate, seconds, warm-up, rows and the feeders' indices). It starts its edges, prints
``{"ready": true}``, reads ``{"start": WALL_TIME}`` from stdin (the demo staggers the
edge processes' starts within one frame period), plays, settles (:func:`settle`:
nothing is counted while a straggler is in flight), and prints one JSON object: per
feeder its counts, accuracy and latencies, and the process's CPU over the steady state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


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


def _feeders(indices: list[int], rows: int, rate: float) -> list[Feeder]:
    """Feeder ``i`` of the demo (``feeder-<i+1>``) has its own scenario, whichever edge
    process plays it."""
    from hil.scenario import ScenarioSpec, make_trace

    out = []
    for i in indices:
        spec = ScenarioSpec(config="ieee33", start="1990-06-01T11:00", hours=rows / rate / 3600,
                            step_s=1.0 / rate, seed=100 + i, load_scale=0.8 + 0.05 * (i % 8),
                            missing_pct=0.5, bad_pct=2.0)
        out.append(Feeder(f"feeder-{i + 1:02d}", make_trace(spec)))
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
        # the edges of one process clean their snapshots in the same loop turns: one
        # predictor call for all of them (gateway.quality.batch)
        gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="",
                                         forecast=False, batch_predictor=True))
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

    def stop_wall(self) -> None:
        """:meth:`stop` for processes that play nothing (workers, sink, server): the
        feeder-seconds are the wall time since the mark at the stream rate."""
        self.stop()
        if len(self._wall) == 2:
            self.steps = round((self._wall[1] - self._wall[0]) * self.rate)

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


# --------------------------------------------------------------------------- the process

def _warmup(feeders: list[Feeder], cpu: CpuMeter, warmup_s: float) -> Any:
    """Latency and CPU count from the end of the warm-up: ``warmup_s`` into the run and
    every feeder of this process has had a state back (the workers' start-up, imports
    and each feeder's model built once, is not the fleet's steady state)."""

    def on_tick(t: float) -> None:
        if not cpu.marked and t >= warmup_s and all(f.gateway.states for f in feeders):
            cpu.mark()
            for f in feeders:
                f.gateway.telemetry.e2e_s.clear()
                f.gateway.bus.rtt_s.clear()
                f.gateway.bus.fresh_s.clear()

    return on_tick


def _row(f: Feeder) -> dict[str, Any]:
    """One feeder's figures from its summary taken after :func:`settle`."""
    s = f.summary
    b = s["bus"] or {}
    return {"feeder": f.name, "frames_sent": f.sent, "frames_received": s["frames_received"],
            "frames_lost": max(0, f.sent - s["frames_received"]),
            "snapshots": s["snapshots"], "states": s["states"],
            "deadline_misses": s["deadline_misses"],
            "vm_mape_pct": 100 * float(np.mean(f.errors)) if f.errors else None,
            "e2e_p99_ms": s["e2e_latency_ms"]["p99"],
            "fresh_p99_ms": (b.get("fresh_ms") or {}).get("p99"),
            "bus_rtt_ms": b.get("rtt_ms"), "bus_errors": b.get("errors", 0)}


async def run_edges(spec: dict[str, Any]) -> dict[str, Any]:
    """Start this process's edges, wait for the start instant, play, settle, report."""
    rate, loop = float(spec["rate"]), asyncio.get_running_loop()
    feeders = _feeders(list(spec["feeders"]), int(spec["rows"]), rate)
    cpu = CpuMeter({"edges": [os.getpid()]}, rate=rate)
    try:
        await _start_edges(feeders, str(spec["url"]), rate)
        # what start-up built (traces, models) stays: out of the collector's way, so a
        # full collection does not walk it during the run (pauses of ~0.1 s)
        gc.collect()
        gc.freeze()
        print(json.dumps({"ready": True}), flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return {"error": "no start instant (the demo went away)"}
        await asyncio.sleep(max(0.0, float(json.loads(line)["start"]) - time.time()))
        await _play(feeders, rate, float(spec["seconds"]), _warmup(
            feeders, cpu, float(spec["warmup_s"])), cpu)
        cpu.stop()
        settled = await settle(feeders)
        for f in feeders:  # counted now: the states are in, nothing is closing yet
            f.summary = f.gateway.summary()
    finally:
        for f in feeders:
            if f.gateway is not None:
                await f.gateway.close()
    return {"rows": [_row(f) for f in feeders], "settled": settled,
            "feeder_s": len(feeders) * max(cpu.steps, 1) / rate, **cpu.report(len(feeders))}


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m gateway.cli_fleet_edges SPEC_JSON (run by gridtwin fleet "
              "demo)", file=sys.stderr)
        return 2
    res = asyncio.run(run_edges(json.loads(sys.argv[1])))
    print(json.dumps(res, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
