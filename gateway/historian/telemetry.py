"""The historian writer's state as Prometheus metrics, read at scrape time.

The writer keeps cumulative counters (:class:`~gateway.historian.writer.HistorianStats`);
:func:`metrics_hook` returns a function the gateway calls before every exposition
(``Metrics.before_scrape``): it copies the connection state and the queue and spool
sizes into gauges and adds what the counters grew by since the last call, so nothing is
done per row on the pipeline's thread and an outage is visible on ``/metrics`` (errors
rising, ``gridtwin_historian_up`` 0, the spool growing, then the replay progressing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: HistorianStats counter -> the Metrics attribute of its Prometheus counter
COUNTERS = (("db_errors", "historian_errors"), ("committed", "historian_committed"),
            ("spooled", "historian_spooled"), ("replayed", "historian_replayed"),
            ("rejected", "historian_rejected"))


def metrics_hook(metrics: Any, writer: Any) -> Callable[[], None]:
    """A no-argument function that moves ``writer.stats()`` into ``metrics`` (a
    :class:`gateway.metrics.Metrics`); idempotent, safe to call at any rate."""
    from gateway.metrics import follower

    follow = [(name, follower(getattr(metrics, attr))) for name, attr in COUNTERS]

    def sync() -> None:
        st = writer.stats()
        metrics.historian_up.set(1.0 if st.connected else 0.0)
        metrics.historian_spool_records.set(st.spool_records)
        metrics.historian_spool_bytes.set(st.spool_bytes)
        metrics.historian_queue.set(st.queue_depth)
        metrics.historian_last_commit.set(st.last_commit_time or 0.0)
        for name, grew in follow:
            grew(int(getattr(st, name)))

    return sync
