"""One real-time priority table (gateway.realtime), and the processes that cannot import
it carry the same numbers."""

from __future__ import annotations

import os
import threading

import pytest

from gateway.realtime import (
    CPUS_ENV,
    NICE_OF,
    PRIORITIES,
    RESET_ON_FORK,
    adopt,
    cpu_for,
    set_realtime,
    unpin,
)


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
        policy = os.sched_getscheduler(tid[0]) & ~RESET_ON_FORK
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


def _policy(pid: int) -> int:
    return os.sched_getscheduler(pid) & ~RESET_ON_FORK


def test_children_of_a_realtime_process_start_with_ordinary_scheduling() -> None:
    """SCHED_RESET_ON_FORK: a process started by a real-time gateway (a forecaster
    pool's worker importing for half a second) does not run at the gateway's priority."""
    import subprocess
    import sys

    code = ("import os, subprocess, sys\n"
            "from gateway.realtime import set_realtime\n"
            "print(set_realtime('gateway', nice=None))\n"
            "print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO)\n"
            "sys.stdout.flush()\n"
            "subprocess.run([sys.executable, '-c', 'import os; "
            "print(os.sched_getscheduler(0) == os.SCHED_OTHER)'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             sys.path)}).stdout.split("\n")
    if not out[0].startswith("SCHED_FIFO"):
        pytest.skip("no permission for real-time scheduling here")
    assert out[1:3] == ["True", "True"]


def test_adopt_gives_a_child_its_role_and_cpu() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        applied = adopt(child.pid, "predictor", allowed={0, 1})
        if not applied.startswith("SCHED_FIFO"):
            pytest.skip("no permission for real-time scheduling here")
        assert _policy(child.pid) == os.SCHED_FIFO
        assert os.sched_getparam(child.pid).sched_priority == PRIORITIES["predictor"]
        if len(os.sched_getaffinity(0) & {0, 1}) == 2:
            assert os.sched_getaffinity(child.pid) == {0} and applied.endswith("CPU 0")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_adopt_runs_the_historian_process_outside_the_realtime_budget() -> None:
    """The historian's process is adopted at nice -20 under the ordinary scheduler, not
    SCHED_FIFO: it may lag, and real-time tasks share a throttled budget per CPU."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        applied = adopt(child.pid, "historian", allowed={0, 1})
        assert _policy(child.pid) == os.SCHED_OTHER
        if not applied.startswith(f"nice {NICE_OF['historian']}"):
            assert applied.startswith("normal")
            pytest.skip("no permission to lower a nice value here")
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == NICE_OF["historian"] < 0
        assert applied.endswith("not pinned")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_roles_share_out_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_for("gateway", {2, 3}) == cpu_for("predictor", {2, 3}) == 2
    assert cpu_for("estimator", {2, 3}) == 3
    assert cpu_for("gateway", {5}) is None  # one CPU: nothing to place
    assert cpu_for("historian", {0, 1}) is None  # not a placed role
    # an emulator beside the twin: never on the estimator's CPU; its own from three on
    assert cpu_for("emulator", {0, 1}) == cpu_for("gateway", {0, 1}) == 0
    assert cpu_for("emulator", {0, 1, 2, 3}) == 2
    monkeypatch.setenv(CPUS_ENV, "4,7")  # what a pinned parent passes on
    assert cpu_for("estimator") == 7


def test_unpin_frees_a_child_from_its_parents_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forecaster's worker and the topology process inherit the gateway's one CPU;
    they go back to every CPU the twin was given."""
    was = os.sched_getaffinity(0)
    monkeypatch.setenv(CPUS_ENV, ",".join(map(str, sorted(was))))
    try:
        os.sched_setaffinity(0, {min(was)})  # as a child of the pinned gateway starts
        assert unpin() == "any CPU"
        assert os.sched_getaffinity(0) == was
    finally:
        os.sched_setaffinity(0, was)
