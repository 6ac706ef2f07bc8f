"""The worker-process helper (gateway.workers) on a real child: the estimator worker with
``--method flat`` (no maths)."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.handoff import READY, STOP, ReadyMsg, decode_reply
from gateway.workers import (
    Backoff,
    Worker,
    WorkerError,
    WorkerSpec,
    child_pids,
    spawn,
    start_blocking,
    wait_ready,
)

MODULE = "gateway.estimator_worker"


def spec(config: str = "ieee33") -> WorkerSpec:
    return WorkerSpec(MODULE, ["--config", config, "--method", "flat"],
                      is_ready=lambda m: m[:1] == READY, stop_message=STOP)


def test_start_blocking_ready_handshake_and_close() -> None:
    w = start_blocking(spec(), timeout=60)
    try:
        ready = decode_reply(w.ready_message)
        assert isinstance(ready, ReadyMsg) and ready.n_bus == 37 and ready.pid == w.pid
        assert child_pids(os.getpid(), MODULE) == [w.pid]
    finally:
        w.close()
    assert w.proc.returncode == 0  # EOF on its socket ended it
    assert child_pids(os.getpid(), MODULE) == []


def test_a_worker_that_never_says_ready_is_refused() -> None:
    with pytest.raises(WorkerError, match="did not become ready"):
        start_blocking(spec("no-such-config"), timeout=60)


async def test_spawn_wait_ready_stop_and_exit_callback() -> None:
    exits: list[str] = []
    gone = asyncio.Event()

    def on_exit(w: Worker, why: str) -> None:
        exits.append(why)
        gone.set()

    w = await spawn(spec(), on_message=lambda w, m: None, on_exit=on_exit, started=1.0)
    ready = decode_reply(await wait_ready(w, 60))
    assert isinstance(ready, ReadyMsg) and ready.pid == w.pid and w.started == 1.0
    await w.kill()
    async with asyncio.timeout(60):
        await gone.wait()
    assert len(exits) == 1 and w.dead
    # a second worker stopped politely: no exit callback (it was asked to go)
    w2 = await spawn(spec(), on_message=lambda w, m: None, on_exit=on_exit)
    await wait_ready(w2, 60)
    await w2.stop()
    assert w2.proc.returncode == 0 and len(exits) == 1


async def test_wait_ready_fails_and_kills_a_broken_worker() -> None:
    w = await spawn(spec("no-such-config"), on_message=lambda w, m: None,
                    on_exit=lambda w, why: None)
    with pytest.raises(WorkerError, match="did not become ready"):
        await wait_ready(w, 60)
    assert w.proc.returncode is not None


def test_backoff_is_free_for_two_crashes_then_doubles_to_the_cap() -> None:
    b = Backoff(window_s=10.0, free=2, start_s=0.1, max_s=0.5)
    assert [b.crashed(t) for t in (0.0, 1.0)] == [0.0, 0.0]
    assert [b.crashed(t) for t in (2.0, 3.0, 4.0, 5.0)] == [0.1, 0.2, 0.4, 0.5]
    assert b.delay(100.0) == 0.0  # the crashes left the window
