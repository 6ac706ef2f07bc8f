"""One real-time priority table (gateway.realtime), and the processes that cannot import
it carry the same numbers."""

from __future__ import annotations

import os
import threading

import pytest

from gateway.realtime import PRIORITIES, set_realtime


def test_the_order_of_the_roles() -> None:
    p = PRIORITIES
    assert p["gateway"] == p["estimator"] > p["predictor"] > p["emulator"] > \
        p["historian"] >= 1


def test_copies_outside_the_gateway_agree_with_the_table() -> None:
    from hil.emulator import REALTIME_PRIORITY
    from models.serve import RT_PRIORITY

    assert PRIORITIES["predictor"] == RT_PRIORITY
    assert PRIORITIES["emulator"] == REALTIME_PRIORITY


def test_set_realtime_reports_what_it_applied_to_a_thread() -> None:
    started, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        started.set()
        done.wait(60)

    th = threading.Thread(target=body)
    th.start()
    try:
        assert started.wait(60)
        applied = set_realtime("historian", tid=tid[0], nice=None)
        policy = os.sched_getscheduler(tid[0])
        if applied.startswith("SCHED_FIFO"):
            assert applied == f"SCHED_FIFO {PRIORITIES['historian']}"
            assert policy == os.SCHED_FIFO
            assert os.sched_getparam(tid[0]).sched_priority == PRIORITIES["historian"]
        else:
            assert applied.startswith("normal") and policy != os.SCHED_FIFO
    finally:
        done.set()
        th.join()
    with pytest.raises(KeyError):
        set_realtime("no-such-role")
