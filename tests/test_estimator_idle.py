"""The estimator worker's time between snapshots (``gateway.estimator_worker``): the
solver's deferred work and the garbage collector run there, never while a snapshot
waits; a worker that never idles still collects."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

import pytest

from gateway import estimator_worker as ew


@pytest.fixture
def collector() -> Iterator[ew.IdleCollector]:
    """An :class:`IdleCollector` in this process, the interpreter's collector restored
    after (it freezes and disables it)."""
    was = gc.isenabled()
    c = ew.IdleCollector()
    try:
        yield c
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


def _garbage(n: int) -> list[list[int]]:
    """``n`` tracked container objects kept alive (they count towards a collection)."""
    return [[i] for i in range(n)]


def test_no_collection_on_its_own_only_between_snapshots(
        collector: ew.IdleCollector) -> None:
    assert not gc.isenabled() and gc.get_freeze_count() > 0
    keep = _garbage(3 * ew.GC_YOUNG)
    assert gc.get_count()[0] >= ew.GC_YOUNG  # the interpreter would have collected
    assert collector.collections == [0, 0, 0]
    collector.busy()  # a snapshot waits: not yet
    assert collector.collections == [0, 0, 0]
    collector.idle()
    assert collector.collections == [1, 0, 0] and gc.get_count()[0] < ew.GC_YOUNG
    del keep


def test_the_generations_follow_the_interpreters_schedule(
        collector: ew.IdleCollector) -> None:
    keep = []
    for _ in range(12):
        keep.append(_garbage(ew.GC_YOUNG))
        collector.idle()
    # CPython's thresholds (700, 10, 10), each a "more than": the 12th young
    # collection is a middle one ...
    assert collector.collections == [11, 1, 0]
    while collector.collections[2] == 0 and len(keep) < 500:
        keep.append(_garbage(ew.GC_YOUNG))
        collector.idle()
    # ... and the 12th middle one a full one
    assert collector.collections[1:] == [11, 1]


def test_a_saturated_worker_still_collects(collector: ew.IdleCollector) -> None:
    keep = _garbage(ew.GC_YOUNG_BUSY + 10)
    collector.busy()
    assert sum(collector.collections) == 1
    del keep


def test_between_snapshots_only_while_none_waits(collector: ew.IdleCollector) -> None:
    calls: list[str] = []

    def idle() -> bool:
        calls.append("idle")
        return True

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        ew._between(a, idle, collector)  # nothing waiting: the deferred work runs
        assert calls == ["idle"]
        b.send(b"S...")  # the next snapshot is there: it comes first
        ew._between(a, idle, collector)
        assert calls == ["idle"]
        a.recv(16)
        ew._between(a, None, collector)  # a solver with nothing deferred
        assert calls == ["idle"]
