"""What the fleet tests share: a wait on a condition and publishing scenario rows as
snapshots from an edge (the ``nats`` fixture is in conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from gateway.bus.edge import EdgeBus


async def until(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Wait on the event loop for ``cond`` (bounded: a hang fails, it does not block)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def queue_drained(js, what: str, timeout: float, *,  # type: ignore[no-untyped-def]
                        between: Callable[[], Awaitable[object]] | None = None) -> None:
    """Wait until the workers' work queue holds nothing pending or unacknowledged
    (bounded); ``between``: what to await between two looks (default: 50 ms)."""
    from gateway.bus.conn import STREAM, WORKERS

    end = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(STREAM, WORKERS)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        assert time.monotonic() < end, what
        await (between() if between is not None else asyncio.sleep(0.05))


def offer_rows(edge: EdgeBus, trace, seqs: range, *, wall: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Publish trace rows as snapshots ``seqs`` (rows wrap around the trace)."""
    m, n = trace.measured.shape[1], trace.pv_mw.shape[1]
    for seq in seqs:
        k = seq % trace.measured.shape[0]
        edge.offer_snapshot(seq, float(trace.time[k]),
                            time.time() if wall else float(trace.time[k]),
                            trace.measured[k], np.zeros(m, np.uint32), trace.pv_mw[k],
                            np.full(n, 0.01))


async def play_into(gw, base, trace, steps: int, *,  # type: ignore[no-untyped-def]
                    counter: str = "states") -> None:
    """Play ``steps`` of ``trace`` from the emulator into the running gateway ``gw`` over
    loopback UDP, one step at a time, each awaited until ``gw.<counter>`` has counted it
    (``states``: its estimate; ``snapshots``: its snapshot)."""
    import socket

    from hil.emulator import Emulator, retarget

    ports = {n: t.local_address for n, t in gw.transports.items()}
    em = Emulator(retarget(base, {n: f"udp://{a[0]}:{a[1]}" for n, a in ports.items() if a}),
                  trace, rate_hz=50.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for k in range(steps):
            for out in em.frames(k):
                tx.sendto(out.emission.data, (out.plan.stream.host, out.plan.stream.port))
            await until(lambda k=k: getattr(gw, counter) > k, f"{counter} of step {k}")
