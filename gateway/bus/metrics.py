"""Prometheus metrics of the fleet's processes (worker, sink), read from their counters at
scrape time: nothing is counted twice and the message path pays nothing for them.

Label sets are bounded: ``outcome`` and ``table`` are fixed vocabularies; ``feeder`` is
bounded by the number of registered feeders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["SinkCollector", "WorkerCollector", "serve"]

OUTCOMES = ("solved", "superseded", "bad", "unknown_feeder", "failed")


class WorkerCollector(Collector):
    def __init__(self, worker: Any) -> None:
        self.w = worker

    def collect(self) -> Iterator[Metric]:
        s = self.w.stats
        c = CounterMetricFamily("gridtwin_worker_snapshots", "Snapshots taken off the work "
                                "queue, by what became of them", labels=["outcome"])
        for o in OUTCOMES:
            c.add_metric([o], getattr(s, o))
        yield c
        yield CounterMetricFamily("gridtwin_worker_redelivered", "Snapshots this worker got "
                                  "on a second or later delivery", value=s.redelivered)
        yield CounterMetricFamily("gridtwin_worker_deadline_misses", "States done later than "
                                  "the feeder's deadline after the edge published the "
                                  "snapshot", value=s.deadline_misses)
        yield CounterMetricFamily("gridtwin_worker_state_publish_failures", "States not "
                                  "stored (no PubAck): their snapshots left for redelivery",
                                  value=s.publish_failures)
        yield CounterMetricFamily("gridtwin_worker_config_rejected", "Feeder config revisions "
                                  "refused (the previous one stayed)", value=s.config_rejected)
        yield GaugeMetricFamily("gridtwin_worker_feeders", "Feeders this worker can estimate",
                                value=len(self.w.cache.feeders))
        yield GaugeMetricFamily("gridtwin_worker_consumer_pending", "Snapshots waiting in the "
                                "work queue (last poll)", value=self.w.pending)


class SinkCollector(Collector):
    def __init__(self, sink: Any, clock: Callable[[], float] = time.time) -> None:
        self.s = sink
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        s = self.s.stats
        yield CounterMetricFamily("gridtwin_sink_messages", "Bus messages written and "
                                  "acknowledged", value=s.messages)
        rows = CounterMetricFamily("gridtwin_sink_rows", "Rows written", labels=["table"])
        for t, n in sorted(s.rows.items()):
            rows.add_metric([t], n)
        yield rows
        yield CounterMetricFamily("gridtwin_sink_bad_messages", "Malformed messages dropped",
                                  value=s.bad)
        yield CounterMetricFamily("gridtwin_sink_write_failures", "Batches left on the bus "
                                  "because the database write failed", value=s.write_failures)
        yield GaugeMetricFamily("gridtwin_sink_connected", "1 when the last write succeeded",
                                value=int(s.connected))
        yield GaugeMetricFamily("gridtwin_sink_consumer_pending", "Messages waiting for the "
                                "sink (last poll)", value=self.s.pending)
        age = GaugeMetricFamily("gridtwin_fleet_state_age_seconds", "Seconds since the "
                                "newest state of each feeder reached the sink",
                                labels=["feeder"])
        now = self.clock()
        for feeder, t in sorted(self.s.last_state.items()):
            age.add_metric([feeder], max(0.0, now - t))
        yield age


def serve(collector: Collector, bind: str) -> CollectorRegistry:
    """Serve ``collector`` on ``bind`` (``HOST:PORT``; loopback unless said otherwise)."""
    reg = CollectorRegistry()
    reg.register(collector)
    host, _, port = bind.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=reg)
    return reg
