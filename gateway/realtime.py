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
* ``historian`` 1: the historian's commit thread, real-time but lowest: storage may lag,
  the pipeline must not, and an ordinary process must not preempt it while it holds the
  GIL (that would hold the pipeline thread up: priority inversion).

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


def set_realtime(role: str, *, tid: int = 0, nice: int | None = NICE_FALLBACK) -> str:
    """SCHED_FIFO at ``role``'s priority for thread/process ``tid`` (0: the caller);
    else ``nice`` (None: no fallback). Returns what was applied, for the log."""
    priority = PRIORITIES[role]
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        return f"SCHED_FIFO {priority}"
    except (OSError, AttributeError):
        pass
    if nice is not None:
        with contextlib.suppress(OSError):
            os.nice(nice)
            return f"nice {nice}"
    return "normal (no permission for real-time scheduling)"
