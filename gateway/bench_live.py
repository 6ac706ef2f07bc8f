"""Live-view benchmark (``gridtwin bench --only live``): does the page slow the twin?

``live.e2e_p99_5clients`` (ms): one in-process gateway (quality stage and estimator
process on, no historian) fed by the emulator over loopback UDP at 50 Hz, with five
browsers' worth of ``/live`` connections — four reading every update, one stalled (it
never reads; its socket buffer is tiny, so the server's writes to it back up at once) —
the 99th percentile of first frame → state back. Peer: the same run's first half, with no
client connected. ``live.updates_per_s`` reports how many updates the readers got (the
throttle: at most 10 per second).
"""

from __future__ import annotations

import asyncio
import socket
import time

from gateway.bench import BenchResult


def benchmarks(quick: bool) -> list[BenchResult]:
    seconds = 6.0 if quick else 20.0
    alone, with_clients, updates = asyncio.run(_run(seconds))
    return [BenchResult("live.e2e_p99_5clients", with_clients, "ms", "no client connected",
                        alone),
            BenchResult("live.updates_per_s", updates, "updates/s")]


async def _run(seconds: float) -> tuple[float, float, float]:
    from gateway.app import Gateway, GatewayOptions
    from gateway.config import load_config
    from gateway.telemetry import pct_ms
    from hil.emulator import Emulator, retarget
    from hil.scenario import ScenarioSpec, make_trace

    base = load_config("ieee33")
    steps = round(2 * seconds * 50)
    trace = make_trace(ScenarioSpec(config="ieee33", hours=steps / 50 / 3600, step_s=0.02,
                                    seed=4))
    gw = Gateway(retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams}),
                 GatewayOptions(historian_url="none", metrics_bind="127.0.0.1:0",
                                spare=False))
    await gw.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    readers: list[asyncio.Task[int]] = []
    stalled: socket.socket | None = None
    try:
        ports = {n: t.local_address for n, t in gw.transports.items()}
        em = Emulator(retarget(base, {n: f"udp://{a[0]}:{a[1]}" for n, a in ports.items()
                                      if a}), trace, rate_hz=50.0)
        await _play(em, tx, 0, steps // 2)
        alone = pct_ms(gw.telemetry.e2e_s)["p99"] or float("nan")
        gw.telemetry.e2e_s.clear()
        assert gw.server is not None and gw.server.address is not None
        port = gw.server.address[1]
        readers = [asyncio.create_task(_reader(port)) for _ in range(4)]
        stalled = _stall(port)
        t0 = time.monotonic()
        await _play(em, tx, steps // 2, steps)
        span = time.monotonic() - t0
        with_clients = pct_ms(gw.telemetry.e2e_s)["p99"] or float("nan")
    finally:
        for r in readers:
            r.cancel()
        got = []
        for r in readers:
            try:
                got.append(await r)
            except asyncio.CancelledError:
                got.append(0)
        if stalled is not None:
            stalled.close()
        tx.close()
        await gw.close()
    return alone, with_clients, (sum(got) / max(len(got), 1)) / span


async def _play(em: object, tx: socket.socket, k0: int, k1: int) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k in range(k0, k1):
        for out in em.frames(k):  # type: ignore[attr-defined]
            tx.sendto(out.emission.data, (out.plan.stream.host, out.plan.stream.port))
        await asyncio.sleep(max(0.0, t0 + (k - k0 + 1) / 50.0 - loop.time()))


async def _reader(port: int) -> int:
    """A browser that reads every update; returns how many it got when cancelled."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /live HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    n = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                return n
            n += line.startswith(b"event: state")
    except asyncio.CancelledError:
        return n
    finally:
        writer.close()


def _stall(port: int) -> socket.socket:
    """A browser tab that stopped reading: connected, asked for /live, reads nothing."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /live HTTP/1.1\r\nHost: bench\r\n\r\n")
    return s
