"""Closing the fleet's processes never waits forever.

A CI run once hung in a worker's close (the event loop idle, nothing left to wake it).
Two ways a close waited without a bound, both reproduced here on the real thing:

* a task that does not end on its cancellation (``task.cancel(); await task``): Python
  3.11's ``asyncio.wait_for`` loses a cancellation that comes in the loop turn its future
  completed in (a polling loop around ``js.consumer_info`` then polls on), and nats-py's
  forced flush catches ``CancelledError``;
* ``nc.close()`` with bytes the server has not read: it drains the socket without a
  bound, so a hung server (stopped here with SIGSTOP) holds the close forever.

Every wait of a close is now bounded; what did not close is logged and counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.bus.conn import BusOptions, stop_tasks
from gateway.bus.fleet import register_config
from gateway.bus.sink import Sink
from gateway.bus.worker import Worker


@contextmanager
def frozen(srv: Any) -> Iterator[None]:
    """The server hung (SIGSTOP): its sockets stay open, nothing is read or answered."""
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)


async def fill_socket(nc: Any) -> None:
    """Publish until bytes wait in this process twice over: the kernel's socket buffers
    towards the (hung) server are full, the socket's own buffer holds more, and the
    client holds more still (its writer waits for the socket)."""
    sock = nc._transport._io_writer.transport  # the socket under the client
    for _ in range(400):
        await nc.publish("gridtwin.junk", b"x" * 400_000)
        await asyncio.sleep(0)  # the client's flusher writes what it has to the socket
        # 1.5 MB held by the client (below its 2 MB limit, past which a publish waits):
        # more than the kernel could still take if it let its buffers grow
        if sock.get_write_buffer_size() > 0 and nc._pending_data_size > 1_500_000:
            return
    raise AssertionError("the socket towards the stopped server never filled")


async def bounded(closing: Any, timeout: float = 60.0) -> bool:
    """True when ``closing`` finished within ``timeout`` (a hang fails the test, it does
    not block it: the close is left running)."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    return bool(done)


async def test_worker_close_ends_when_the_server_hangs_with_bytes_unsent(nats) -> None:  # type: ignore[no-untyped-def]
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    worker = Worker(opts)
    await worker.start()
    with frozen(nats):
        await fill_socket(worker.nc)
        assert await bounded(worker.close()), "the worker's close hung"
    # the connection could not close cleanly: given up and counted, not waited for
    # (usually; a kernel that still took the bytes lets it close cleanly)
    assert worker.stats.close_timeouts <= 1


async def test_sink_close_ends_when_the_server_hangs_with_bytes_unsent(nats, tmp_path  # type: ignore[no-untyped-def]
                                                                       ) -> None:
    sink = Sink(BusOptions(url=nats.url), f"sqlite:///{tmp_path / 'h.db'}")
    await sink.start()
    with frozen(nats):
        await fill_socket(sink.nc)
        assert await bounded(sink.close()), "the sink's close hung"
    assert sink.stats.close_timeouts <= 1  # the connection only (as for the worker)


async def test_stop_tasks_ends_a_task_that_swallowed_its_cancellation() -> None:
    """The first cancellation is lost (as in ``wait_for`` on 3.11 or nats-py's flush):
    the second one ends the task, and nothing is reported stuck."""
    swallowed = 0
    ready = asyncio.Event()

    async def poller() -> None:
        nonlocal swallowed
        while True:
            try:
                ready.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # lost, as a completed wait_for loses it

    t = asyncio.create_task(poller(), name="poller")
    await ready.wait()
    assert await stop_tasks([t], "test", timeout=30.0) == []
    assert swallowed == 1 and t.cancelled()


async def test_stop_tasks_names_a_task_that_never_ends_and_returns() -> None:
    keep_going = True
    ready = asyncio.Event()

    async def stubborn() -> None:
        while keep_going:
            try:
                ready.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                continue

    t = asyncio.create_task(stubborn(), name="stubborn")
    await ready.wait()
    assert await stop_tasks([t, None], "test", timeout=0.2) == ["stubborn"]
    assert not t.done()
    keep_going = False  # let it end now (the test's loop must not keep it)
    t.cancel()
    await asyncio.wait({t}, timeout=30.0)
    assert t.done()
