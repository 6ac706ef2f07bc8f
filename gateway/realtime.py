"""Real-time scheduling: one table of SCHED_FIFO priorities, one way to ask for them.

Who runs at which priority, and why (higher preempts lower):

* ``gateway`` 20 and ``estimator`` 20: the pipeline thread (ingest, align, quality,
  handoff) and the estimator worker; a snapshot needs both, neither may wait for the other;
* ``predictor`` 15: the quality stage's ONNX child (``models.serve``): below the pipeline
  and the estimator, so a late prediction never delays reading frames or solving (the
  quality stage then waits for it or predicts itself); ``models`` may not import the
  gateway, so ``models.serve.RT_PRIORITY`` carries the same number (a test checks it);
* ``emulator`` 10: an emulator sharing the host (``hil``): below the twin it feeds;
  ``hil.emulator.REALTIME_PRIORITY`` carries the same number (checked by the same test);
  its pacer spins at most a tenth of a period before a slot (``hil.emulator.spin_ceiling``:
  a spin of half the period at 1 kHz took the gateway's CPU past the real-time budget
  below once a second);
* ``historian`` 1: the commit thread of an in-process writer, real-time but lowest:
  storage may lag, the pipeline must not, and ordinary processes may not preempt it
  while it holds the GIL (which would hold the pipeline thread up: priority inversion).

The historian's *process* (``gridtwin run --realtime``) is not real-time: it runs under
the ordinary scheduler at nice -20 (:data:`NICE_OF`; a weight ~87 times an ordinary
process's, so ordinary load on the host does not starve it either),
never pinned. Why not SCHED_FIFO 1: Linux gives all real-time tasks of a CPU at most
``kernel.sched_rt_runtime_us`` per ``sched_rt_period_us`` (950 ms per 1 s by default)
and then stops them ALL for the rest of the period. At 1 kHz the twin's real-time
processes used ~1.8 of the 2 CPUs (gateway 60 %, estimator 36 %, emulator 35 %,
historian 30 %, predictor 20 %) and a CPU ran out of its budget about once a second:
every real-time process on it stood still ~50 ms (gaps of 51-55 ms in the frames'
arrival 1.01-1.05 s apart, ~75 deadline misses each). The historian, the one process
that may lag, was the one to take out of that budget; as a separate process it holds
no GIL the pipeline needs.

Every real-time policy is set with ``SCHED_RESET_ON_FORK``: a child process starts with
ordinary scheduling, never with its parent's priority (the forecaster's worker pool, spawned
at the first forecast, spent 435 ms of imports at the gateway's priority on the gateway's
CPU and stalled the pipeline that long). A child that must run real-time asks for it
itself (the estimator's ``--realtime``) or is given its role by the parent
(:func:`adopt`: the predictor).

CPUs (:data:`CPU_OF`, with at least two CPUs allowed): the gateway and the predictor on
the first, the estimator on the second. The gateway's thread and the estimator then never
wait for each other's CPU. The predictor's look-ahead (asked for right after a handoff,
due when the next snapshot is cleaned) runs while the gateway waits for the next frames;
on the estimator's CPU it waited for the solve and the estimator's polling before the
next snapshot and came late (measured at 1 kHz, 5 s runs, load 2.9-4.9: the quality
stage's p99 0.73 ms there, 0.17-0.23 ms on the gateway's CPU; deadline misses 615-857
against 494-497). Threads of the gateway share its CPU; children inherit it until they
are placed (the historian's process runs on any CPU, and so do the low-priority
background children, the state forecaster's worker and the topology process:
:func:`unpin`).

Without the right to real-time scheduling (not root, no CAP_SYS_NICE) a process falls
back to ``nice -10`` when allowed, else stays as it is; :func:`set_realtime` says which.
"""

from __future__ import annotations

import contextlib
import os

#: role -> SCHED_FIFO priority (see the module docstring for the order)
PRIORITIES: dict[str, int] = {
    "gateway": 20,
    "estimator": 20,
    "predictor": 15,
    "emulator": 10,
    "historian": 1,
}
NICE_FALLBACK = -10
#: processes adopted (:func:`adopt`) under the ordinary scheduler at this nice value
#: instead of SCHED_FIFO (the historian's process: see the module docstring)
NICE_OF: dict[str, int] = {
    "historian": -20,
}
#: role -> position in the sorted list of allowed CPUs (with two or more; roles not
#: listed, and every role on a one-CPU host, are not pinned)
CPU_OF: dict[str, int] = {
    "gateway": 0,
    "estimator": 1,
    "predictor": 0,  # beside the gateway: see the module docstring
    # an emulator on the twin's machine (the demo, the bench): its own CPU from three on;
    # on two, beside the gateway, never on the estimator's (there its pacer evicted the
    # estimator's working set between snapshots: 1 kHz misses 112-209 -> 49-77)
    "emulator": 2,
}
#: the CPUs the roles are placed on, as the first process to pin itself found them; its
#: children inherit it (their own affinity is then the parent's single CPU)
CPUS_ENV = "GRIDTWIN_RT_CPUS"
#: the policy flag that keeps a child from inheriting a real-time policy (Linux)
RESET_ON_FORK: int = getattr(os, "SCHED_RESET_ON_FORK", 0)


def cpu_for(role: str, allowed: set[int] | None = None) -> int | None:
    """The CPU ``role`` runs on (:data:`CPU_OF`) among ``allowed`` (default:
    :func:`allowed_cpus`), or None: not pinned (a role not listed, fewer than two CPUs)."""
    cpus = sorted(allowed_cpus() if allowed is None else allowed)
    at = CPU_OF.get(role)
    if at is None or len(cpus) < 2:
        return None
    return cpus[at % len(cpus)]


def allowed_cpus() -> set[int]:
    """The CPUs to place the roles on: those :data:`CPUS_ENV` names (set by the first
    process of the twin that pinned itself), else this process's affinity."""
    text = os.environ.get(CPUS_ENV, "")
    with contextlib.suppress(ValueError):
        cpus = {int(c) for c in text.split(",") if c.strip()}
        if cpus:
            return cpus
    return set(os.sched_getaffinity(0))


def pin(role: str, *, pid: int = 0, allowed: set[int] | None = None) -> str:
    """Pin process/thread ``pid`` (0: the caller) to ``role``'s CPU; what was done, for
    the log. A refusal (another cgroup's CPU set) leaves it where it was."""
    if allowed is None:
        allowed = allowed_cpus()
    cpu = cpu_for(role, allowed)
    if cpu is None:
        if pid != 0 and role not in CPU_OF:  # a child: free of the parent's one CPU
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, allowed)
        return "not pinned"
    if pid == 0:  # children place themselves among the same CPUs
        os.environ.setdefault(CPUS_ENV, ",".join(map(str, sorted(allowed))))
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError as exc:
        return f"not pinned ({exc.strerror or exc})"
    return f"CPU {cpu}"


def unpin() -> str:
    """A background child of the gateway (the state forecaster's worker, the topology
    identification process) on every allowed CPU again, not its parent's one: it runs at
    a low priority, so on the gateway's CPU (busy with real-time work at 1 kHz) it only
    waited, while another CPU had idle time. What was done, for the log."""
    try:
        os.sched_setaffinity(0, allowed_cpus())
    except (OSError, AttributeError) as exc:
        return f"not moved ({exc})"
    return "any CPU"


def set_realtime(role: str, *, tid: int = 0, nice: int | None = NICE_FALLBACK) -> str:
    """SCHED_FIFO at ``role``'s priority for thread/process ``tid`` (0: the caller), not
    inherited by its children (:data:`RESET_ON_FORK`); else ``nice`` (None: no fallback).
    Returns what was applied, for the log."""
    priority = PRIORITIES[role]
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | RESET_ON_FORK, os.sched_param(priority))
        return f"SCHED_FIFO {priority}"
    except (OSError, AttributeError):
        pass
    if nice is not None:
        with contextlib.suppress(OSError):
            os.nice(nice)
            return f"nice {nice}"
    return "normal (no permission for real-time scheduling)"


def adopt(pid: int, role: str, *, allowed: set[int] | None = None) -> str:
    """Give a child process the real-time ``role`` (priority and CPU) from its parent:
    the child started with ordinary scheduling (:data:`RESET_ON_FORK`) and does not ask
    for it itself (the predictor). No fallback to nice: a child that cannot run
    real-time keeps ordinary scheduling. A role in :data:`NICE_OF` (the historian's
    process) gets that nice value instead of a real-time policy. What was applied, for
    the log."""
    where = pin(role, pid=pid, allowed=allowed)
    if role in NICE_OF:
        return f"{set_nice(pid, NICE_OF[role])}, {where}"
    return f"{set_realtime(role, tid=pid, nice=None)}, {where}"


def set_nice(pid: int, nice: int) -> str:
    """Process ``pid`` (its main thread: threads it starts later inherit it) at ``nice``
    under the ordinary scheduler; what was applied, for the log."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as exc:
        return f"normal (nice {nice} refused: {exc.strerror or exc})"
    return f"nice {nice}"


def go_realtime(role: str) -> str:
    """The calling process's real-time role in full: pinned to its CPU, then its
    priority (what ``gridtwin run --realtime`` and the estimator's ``--realtime`` do)."""
    where = pin(role)
    return f"{set_realtime(role)}, {where}"
