"""Benchmarks of the running twin: ``ingest.udp`` and ``e2e.ieee33.p99`` (+ ``_1khz``).

* ``ingest.udp`` (frames/s): the highest offered rate of GTNET-SKT datagrams (the ieee33
  pmu/scada/weather frames in turn, 3-word VILLASnode header) that the gateway's ingest
  path — UDP transport, decode, per-stream statistics, alignment into snapshots,
  snapshot hand-on with the quality stage off and no estimator — takes with **zero loss**
  on its one asyncio thread. A separate sender process offers each rate for a fixed time
  in 1 ms bursts; the rate steps up until a frame is lost. No peer.
* ``ingest.udp_single`` (frames/s): the same with a single-stream config (ieee33's PMU
  stream alone), so every frame completes a snapshot: the per-snapshot work (alignment
  publish, pass-through cleaning, telemetry) on every frame, as with one stream or one
  frame per instant. No peer.
* ``gateway.cpu_per_frame_us`` (µs): the gateway process's CPU time (user + system,
  ``getrusage``, every thread) per frame received while the single-stream gateway takes
  a fixed number of frames at :data:`CPU_RATE` frames/s: the cost behind
  ``ingest.udp_single``, less dependent on the machine's load than a rate. No peer.
* ``ingest.pipeline`` (frames/s): the same frames fed straight into the sans-IO
  :class:`~gateway.pipeline.Pipeline` (decode, statistics, alignment, pass-through
  cleaning, settle) with arrival times that follow the timestamps, no socket and no
  loop: the CPU cost of the per-frame path alone, the ceiling ``ingest.udp`` approaches.
  Best of several passes.
  ``ingest.pipeline_single``: the same with the single-stream config above.
* ``ingest.pipeline_batch`` / ``ingest.pipeline_batch_single`` (frames/s): the same
  frames through :meth:`~gateway.pipeline.Pipeline.feed_frames` in batches of
  :data:`BURST` frames of one stream (what the UDP transport hands over per wake-up
  under load); peer: the same frames one at a time (``ingest.pipeline[_single]``).
* ``e2e.ieee33.p99`` / ``e2e.ieee33.p99_1khz`` (ms): ``gridtwin demo`` at 50 Hz and 1 kHz
  (emulator and twin as separate processes, SQLite, models, real estimator): the 99th
  percentile of first frame received → state back in the gateway. No peer.
* ``handoff.ieee33.p99`` / ``handoff.ieee33.p99_1khz`` (µs): from the same runs, the 99th
  percentile of the snapshot handoff (gateway hands the encoded snapshot to the kernel →
  the estimator process has it). No peer.
* ``e2e.ieee33.deadline_misses`` / ``…_1khz`` (count) and ``e2e.ieee33.states_pct`` /
  ``…_1khz`` (% of snapshots estimated; the rest were superseded, newest wins): the same
  runs, so a p99 is never read without what it left out.
* ``gateway.cpu_per_snapshot_us`` / ``gateway.estimator_cpu_per_snapshot_us`` (µs): from
  the 1 kHz run, the CPU time (user + system, every thread, ``/proc``) of the gateway
  process and of its active estimator process while the emulator played, per snapshot:
  what the latencies above cost, and the figure that tells a slower machine from a busier
  one. Reported with ``--only e2e`` too (same run). No peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gateway.bench import BenchResult
from gateway.transports.udp import BURST  # frames one UDP wake-up reads at most

if TYPE_CHECKING:
    from gateway.config import TwinConfig

INGEST_RATES = (5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000,
                150_000, 200_000)
#: the offered rate and the duration of the CPU-per-frame run (single stream)
CPU_RATE = 10_000
CPU_SECONDS = (1.0, 3.0)  # quick, full


def benchmarks(quick: bool) -> list[BenchResult]:
    return benchmarks_ingest(quick) + e2e(quick)


def benchmarks_ingest(quick: bool) -> list[BenchResult]:
    one = ingest_pipeline(quick)
    one_single = ingest_pipeline(quick, single=True)
    return [BenchResult("ingest.pipeline", one, "frames/s"),
            BenchResult("ingest.pipeline_single", one_single, "frames/s"),
            BenchResult("ingest.pipeline_batch", ingest_pipeline(quick, batch=BURST),
                        "frames/s", "the same frames one at a time", one),
            BenchResult("ingest.pipeline_batch_single",
                        ingest_pipeline(quick, single=True, batch=BURST), "frames/s",
                        "the same frames one at a time", one_single),
            BenchResult("ingest.udp", float(ingest_udp(quick)), "frames/s"),
            BenchResult("ingest.udp_single", float(ingest_udp(quick, single=True)),
                        "frames/s"),
            BenchResult("gateway.cpu_per_frame_us", cpu_per_frame_us(quick), "us")]


def _config(single: bool = False) -> TwinConfig:
    """ieee33, or ieee33 with its first stream alone (``single``: one frame per
    snapshot; the other streams' channels stay MISSING)."""
    from gateway.config import load_config

    cfg = load_config("ieee33")
    if single:
        first = cfg.enabled_streams[0].name
        cfg = dataclasses.replace(cfg, streams=[
            s if s.name == first else dataclasses.replace(s, enabled=False) for s in cfg.streams])
    return cfg


def _frames(steps: int, single: bool = False) -> list[tuple[str, bytes]]:
    """ieee33 frames of ``steps`` time slots, the enabled streams in turn (headers
    matter, values do not)."""
    from gateway.codecs.gtnet_skt import GtnetSktCodec

    streams = _config(single).enabled_streams
    codecs = [GtnetSktCodec([p.type for p in s.points], header=True) for s in streams]
    return [(s.name, c.build([0.5] * c.n_points, seq=k, ts=1_000_000.0 + k * 0.02))
            for k in range(steps) for s, c in zip(streams, codecs, strict=True)]


def ingest_pipeline(quick: bool, single: bool = False, batch: int = 1) -> float:
    """Frames per second through :meth:`Pipeline.feed_frame` (+ ``settle`` per snapshot),
    best of several passes over pre-built frames; a fresh pipeline per pass
    (``single``: the single-stream config, a snapshot per frame). ``batch`` > 1: through
    :meth:`Pipeline.feed_frames`, each stream's frames in batches of that many, as the
    UDP transport hands over one wake-up's datagrams."""
    from gateway.pipeline import Pipeline, Settle
    from gateway.telemetry import Telemetry

    cfg = _config(single)
    per_slot = len(cfg.enabled_streams)
    frames = _frames(2_000 if quick else 10_000, single)
    # each frame arrives 0.1 ms after its timestamp (those of a slot 10 µs apart): a
    # clock that ran ahead of, or behind, the timestamps would refuse them as FUTURE
    arrival = [1_000_000.0 + (i // per_slot) * 0.02 + 1e-4 + (i % per_slot) * 1e-5
               for i in range(len(frames))]
    batches = _batches(frames, arrival, per_slot, batch)
    best = math.inf
    for _ in range(5 if quick else 15):
        p = Pipeline(cfg, Telemetry(cfg, clock=time.time))
        p.handoff = p.store = False  # no estimator, no historian: the ingest path alone
        feed, feed_many, settle = p.feed_frame, p.feed_frames, p.settle
        t0 = time.perf_counter()
        if batch <= 1:
            for i, (name, data) in enumerate(frames):
                if feed(name, data, arrival[i]):
                    settle()
        else:
            for name, datas, nows in batches:
                for o in feed_many(name, datas, nows):
                    if o.__class__ is Settle:
                        settle()
        best = min(best, time.perf_counter() - t0)
        if p.telemetry.snapshots != len(frames) // per_slot:
            raise RuntimeError(f"ingest.pipeline: {p.telemetry.snapshots} snapshots from "
                               f"{len(frames)} frames")
    return len(frames) / best


def _batches(frames: list[tuple[str, bytes]], arrival: list[float], per_slot: int,
             batch: int) -> list[tuple[str, list[bytes], list[float]]]:
    """The frames (streams in turn, slot by slot) as each stream's socket would give
    them: ``batch`` consecutive frames of one stream, then the next stream's."""
    out = []
    n_slots = len(frames) // per_slot
    for start in range(0, n_slots, max(1, batch)):
        for j in range(per_slot):
            idx = range(start * per_slot + j, min(start + batch, n_slots) * per_slot,
                        per_slot)
            out.append((frames[idx[0]][0], [frames[i][1] for i in idx],
                        [arrival[i] for i in idx]))
    return out


# --------------------------------------------------------------------------- ingest

def _sender(port_list: list[int], rate: float, seconds: float, single: bool = False
            ) -> None:
    """Child process: offer ``rate`` frames/s round-robin over the streams for ``seconds``."""
    import socket

    n = int(rate * seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    # pre-build one frame per step and stream (values do not matter, headers do)
    frames = [data for _, data in _frames(n // len(port_list) + 1, single)]
    addrs = [("127.0.0.1", p) for p in port_list]
    per_ms = rate / 1000.0
    t0 = time.perf_counter()
    sent = 0
    sendto = sock.sendto
    while sent < n:
        due = min(n, int((time.perf_counter() - t0) * 1000.0 * per_ms) + 1)
        while sent < due:
            sendto(frames[sent], addrs[sent % len(addrs)])
            sent += 1
        time.sleep(0.0005)
    print(json.dumps({"sent": sent, "s": time.perf_counter() - t0}), flush=True)


async def _ingest_once(rate: float, seconds: float, sender_cpus: list[int] | None = None,
                       single: bool = False) -> tuple[int, int, float]:
    """(frames sent, frames received, CPU seconds of this process while receiving)."""
    from gateway.app import Gateway, GatewayOptions

    cfg = _config(single)
    urls = {s.name: "udp://127.0.0.1:0" for s in cfg.enabled_streams}
    gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="", quality=False,
                                     estimator=False, url_overrides=urls))
    await gw.start()
    try:
        ports = [gw.transports[s.name].local_address[1]  # type: ignore[index]
                 for s in cfg.enabled_streams]
        pin = f"import os; os.sched_setaffinity(0, {set(sender_cpus)!r}); " \
            if sender_cpus else ""
        cpu0 = _cpu_s()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", pin + "from gateway.bench_e2e import _sender; "
            f"_sender({ports!r}, {rate!r}, {seconds!r}, {single!r})",
            stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        sent = int(json.loads(out)["sent"])
        last, stable = -1, 0
        while stable < 3:  # received count unchanged for 3 x 50 ms: all in
            await asyncio.sleep(0.05)
            got = sum(s.received + s.decode_errors for s in gw.stats.values())
            stable = stable + 1 if got == last else 0
            last = got
        return sent, last, _cpu_s() - cpu0
    finally:
        await gw.close()


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def _pinned_realtime() -> Iterator[list[int]]:
    """This process on the first CPU with real-time scheduling (as ``gridtwin run
    --realtime``); yields the other CPUs, for the sender (all CPUs if there is one)."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    old_policy = os.sched_getscheduler(0)
    old_param = os.sched_getparam(0)
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[0]})
        from gateway.realtime import set_realtime

        set_realtime("gateway")
        yield cpus[1:] or cpus
    finally:
        os.sched_setaffinity(0, set(cpus))
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, old_policy, old_param)


def ingest_udp(quick: bool, single: bool = False) -> float:
    """Best zero-loss rate (``single``: the single-stream config, one frame per
    snapshot); the receiving process is pinned to one CPU (the sender to the others) and
    asks for real-time scheduling as ``gridtwin run --realtime`` does."""
    seconds = 1.0 if quick else 3.0
    best = 0.0
    with _pinned_realtime() as sender_cpus:
        for rate in INGEST_RATES:
            sent, got, _ = asyncio.run(_ingest_once(rate, seconds, sender_cpus, single))
            if got < sent:
                break
            best = float(rate)
    return best


def cpu_per_frame_us(quick: bool) -> float:
    """µs of this process's CPU per frame received by the single-stream gateway at
    :data:`CPU_RATE` frames/s (a fixed number of frames; pinned and real-time as for
    ``ingest.udp``). NaN when nothing was received."""
    seconds = CPU_SECONDS[0] if quick else CPU_SECONDS[1]
    with _pinned_realtime() as sender_cpus:
        _, got, cpu = asyncio.run(_ingest_once(CPU_RATE, seconds, sender_cpus, True))
    return cpu / got * 1e6 if got else math.nan


# --------------------------------------------------------------------------- end to end

def e2e(quick: bool) -> list[BenchResult]:
    import tempfile
    from pathlib import Path

    from gateway.cli_demo import run_demo

    out: list[BenchResult] = []
    companions: list[BenchResult] = []
    for rate, suffix in ((50.0, ""), (1000.0, "_1khz")):
        with tempfile.TemporaryDirectory(prefix="gridtwin-bench-") as tmp:
            res = run_demo(Path(tmp), seconds=5.0 if quick else 20.0, rate=rate,
                           bad_pct=10.0, progress=False)
        e2e_p99 = (res.get("e2e_latency_ms") or {}).get("p99")
        hand_p99 = (res.get("handoff_latency_us") or {}).get("p99")
        snaps = res.get("snapshots") or 0
        if rate == 1000.0:
            cpu = res.get("cpu_per_snapshot_us") or {}
            companions = [
                BenchResult("gateway.cpu_per_snapshot_us", _num(cpu.get("gateway")), "us"),
                BenchResult("gateway.estimator_cpu_per_snapshot_us",
                            _num(cpu.get("estimator")), "us")]
        out += [
            BenchResult(f"e2e.ieee33.p99{suffix}", _num(e2e_p99), "ms"),
            BenchResult(f"handoff.ieee33.p99{suffix}", _num(hand_p99), "us"),
            BenchResult(f"e2e.ieee33.deadline_misses{suffix}",
                        _num(res.get("deadline_misses")), "count"),
            BenchResult(f"e2e.ieee33.states_pct{suffix}",
                        100.0 * (res.get("states") or 0) / snaps if snaps else math.nan, "%"),
        ]
    return out + companions


#: results of :func:`e2e` reported whatever ``--only`` prefix selected it (same runs)
e2e.companions = ("gateway.cpu_per_snapshot_us",  # type: ignore[attr-defined]
                  "gateway.estimator_cpu_per_snapshot_us")


def _num(x: object) -> float:
    return math.nan if x is None else float(x)  # type: ignore[arg-type]


if __name__ == "__main__":
    for r in benchmarks("--quick" in sys.argv):
        print(json.dumps(r.as_dict()))
