"""The predictor child process (``python -m models.serve``) comes back after it dies.

Real processes: the child is SIGKILLed mid-run; the quality stage goes on predicting
in-process with the same numbers, and the gateway's keeper starts a new child after the
back-off and hands it to the stage (event ``predictor_process_restarted``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np
import pytest

from gateway.components import GatewayOptions, open_quality
from gateway.config import load_config
from gateway.quality import QualityStage
from gateway.quality.predictor import PredictorProcess
from models.bench import synthetic_snapshots

WAIT_S = 60.0  # the restart's deadline (loading onnxruntime on a loaded machine)


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return load_config("ieee33")


def _same(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.flags, b.flags)
    np.testing.assert_array_equal(a.z, b.z)


def test_stage_adopts_a_new_child_after_the_old_one_is_killed(cfg) -> None:  # type: ignore[no-untyped-def]
    """Without a loop: drop on SIGKILL, in-process meanwhile, a started child adopted."""
    x = synthetic_snapshots(cfg, 60, seed=5, bad_frac=0.1)
    zero = np.zeros(x.shape[1], np.uint32)
    local = QualityStage(cfg)
    remote = QualityStage(cfg, predictor_process=True)
    lost: list[str] = []
    remote.on_remote_lost = lost.append
    new: PredictorProcess | None = None
    try:
        assert remote.remote is not None
        old_pid = remote.remote.proc.pid
        for k in range(len(x)):
            if k == 15:
                os.kill(old_pid, signal.SIGKILL)
            if k == 30:
                assert remote.remote is None and len(lost) == 1
                new = remote.start_remote()
                assert remote.adopt_remote(new)
                assert not remote.adopt_remote(new)  # one child at a time
            _same(local.process(x[k], zero, float(k)), remote.process(x[k], zero, float(k)))
            remote.lookahead()
        assert new is not None and remote.remote is new and new.proc.pid != old_pid
        assert new.proc.poll() is None and not remote.remote_error
    finally:
        remote.close()
    assert new.proc.wait(timeout=WAIT_S) is not None  # close() ends the adopted child
    assert not remote.adopt_remote(new)  # closed: nothing adopted any more


def test_gateway_restarts_the_killed_predictor_process(cfg) -> None:  # type: ignore[no-untyped-def]
    """As the gateway runs it (``open_quality`` on an event loop): the reader callback
    collects, the kill is seen, the keeper restarts the child and says so; values equal
    the in-process stage's throughout, before, during and after the restart."""
    asyncio.run(_restart_scenario(cfg))


async def _restart_scenario(cfg) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    events: list[tuple[str, dict[str, Any]]] = []
    restarted = asyncio.Event()

    def event(kind: str, source: str, detail: dict[str, Any]) -> None:
        events.append((kind, detail))
        if kind == "predictor_process_restarted":
            restarted.set()

    q, close = open_quality(cfg, GatewayOptions(), loop, event)
    assert isinstance(q, QualityStage) and q.remote is not None and close is not None
    local = QualityStage(cfg)
    x = synthetic_snapshots(cfg, 80, seed=6, bad_frac=0.1)
    zero = np.zeros(x.shape[1], np.uint32)
    old_pid = q.remote.proc.pid
    try:
        for k in range(len(x)):
            if k == 20:
                os.kill(old_pid, signal.SIGKILL)
            if k == 40:  # the stage went on meanwhile; now wait for the new child
                await asyncio.wait_for(restarted.wait(), WAIT_S)
            _same(local.process(x[k], zero, float(k)), q.process(x[k], zero, float(k)))
            q.lookahead()
            await asyncio.sleep(0)  # one loop turn: the reader callback may collect
        assert q.remote is not None and q.remote.proc.pid != old_pid
        new = q.remote
        assert new.proc.poll() is None
    finally:
        close()
    kinds = [k for k, _ in events]
    assert kinds == ["predictor_process_lost", "predictor_process_restarted"]
    assert events[1][1]["pid"] == new.proc.pid and events[1][1]["restarts"] == 1
    assert new.proc.wait(timeout=WAIT_S) is not None
