"""``gridtwin sink``: every feeder's snapshots, states and events from the bus into the historian.

A durable pull consumer (``sink``) reads the whole stream. Each fetched batch becomes
rows (:class:`SinkRows`, pure), is written in one idempotent database batch, and only
then acknowledged:

* a database that is down (or hung: the backend's timeouts) makes the write fail; the
  batch is *not* acknowledged (negative acknowledgement with a delay), so JetStream keeps
  the backlog and redelivers it; nothing is spooled on the sink's disk;
* every row has a natural key (twin run, sequence; events: the stream sequence), and the
  schema skips a duplicate key, so a redelivered message never makes a second row;
* a message that does not follow the layout is terminated and counted, never retried.

The run of a twin (``runs``, ``meters``, ``channels``, ``buses`` rows) is written the first
time one of its runs is seen, from the config in the ``gridtwin_feeders`` bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.bus import wire
from gateway.bus.conn import (
    BUCKET,
    SINK,
    STREAM,
    BusOptions,
    close_connection,
    close_step,
    connect,
    ensure_fleet,
    stop_tasks,
)
from gateway.bus.pull import PullFeed, ack_all, delivery
from gateway.bus.worker import config_from_text, poll_pending
from gateway.errors import HistorianError
from gateway.historian.writer import (
    RunInfo,
    _corrected_row,
    _forecast_rows,
    _state_rows,
    run_records,
)

log = logging.getLogger("gridtwin.sink")

Row = tuple[Any, ...]


@dataclass
class SinkStats:
    messages: int = 0  # acknowledged after their rows were written
    rows: dict[str, int] = field(default_factory=dict)
    bad: int = 0
    write_failures: int = 0  # batches left unacknowledged for redelivery
    redelivered: int = 0
    runs: int = 0
    connected: bool = False
    close_timeouts: int = 0  # tasks or bus parts that did not close in time (given up)


class SinkRows:
    """Rows for bus messages (pure). ``run_info(twin)`` gives the twin's :class:`RunInfo`
    and its PV plant names (None: the twin is not registered; its rows are still written,
    without the run's description and forecasts)."""

    def __init__(self, run_info: Callable[[str], tuple[RunInfo, list[str]] | None]) -> None:
        self.run_info = run_info
        self.known_runs: set[tuple[str, int]] = set()
        self.plants: dict[str, list[str]] = {}

    def rows(self, subject: str, data: bytes, stream_seq: int) -> list[tuple[str, Row]]:
        """(table, row) pairs for one message; BusMessageError when it is malformed."""
        parts = subject.split(".")
        if len(parts) != 3 or parts[0] != "gridtwin":
            raise wire.BusMessageError(f"subject {subject!r} is not gridtwin.<twin>.<kind>", 0)
        twin = parts[1]
        msg = wire.decode(data)
        if isinstance(msg, wire.BusSnapshot):
            out = self._run(twin, msg.run, msg.source_time)
            out.append(("corrected", _corrected_row(msg.run, msg.seq, msg.source_time,
                                                     msg.values, msg.flags)))
            names = self.plants.get(twin)
            if names and len(names) == msg.pv_mw.size:
                out.extend(_forecast_rows(msg.run, msg.seq, msg.source_time, 0, msg.source_time,
                                          dict(zip(names, msg.pv_mw.tolist(), strict=True)),
                                          dict(zip(names, msg.pv_sigma_mw.tolist(),
                                                   strict=True))))
            return out
        if isinstance(msg, wire.BusState):
            out = self._run(twin, msg.run, msg.source_time)
            out.extend(_state_rows(msg.run, msg.seq, msg.source_time, msg.vm_pu, msg.va_rad,
                                   msg.chi2, msg.iterations, msg.converged, True,
                                   {"solve_s": msg.t_solve_s}, msg.topology))
            return out
        if parts[2] == "event":
            run = int(msg.get("run", 0))
            detail = msg.get("detail")
            return [("events", (run, int(stream_seq), float(msg.get("time", 0.0)),
                                str(msg.get("kind", "event")), str(msg.get("source", twin)),
                                None if detail is None else json.dumps(detail, default=str)))]
        return []  # health: live information, not history

    def _run(self, twin: str, run: int, t: float) -> list[tuple[str, Row]]:
        if (twin, run) in self.known_runs:
            return []
        self.known_runs.add((twin, run))
        hit = self.run_info(twin)
        if hit is None:
            return []
        info, self.plants[twin] = hit
        return list(run_records(info, run, t))


class Sink:
    """The bus side of the historian sink (see the module docstring)."""

    def __init__(self, opts: BusOptions, historian_url: str, *, batch: int = 500,
                 write_timeout_s: float = 30.0, metrics_bind: str = "") -> None:
        from gateway.historian.backends import open_backend

        self.opts = opts
        self.metrics_bind = metrics_bind
        self.pending = 0  # the sink consumer's backlog at the last poll
        self.last_state: dict[str, float] = {}  # feeder -> wall time its newest state came
        self.batch = batch
        self.write_timeout_s = write_timeout_s
        self.backend = open_backend(historian_url)
        # one thread owns the database connection (SQLite connections are per thread)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridtwin-sink-db")
        self.stats = SinkStats()
        self._infos: dict[str, tuple[RunInfo, list[str]]] = {}
        self.rows = SinkRows(self._infos.get)
        self.nc: Any = None
        self._task: asyncio.Task[None] | None = None
        self._kv_task: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None
        self._feed: Any = None
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._db, self._connect)
        self.nc = await connect(self.opts)
        js = self.nc.jetstream()
        await ensure_fleet(js, self.opts)
        kv = await js.key_value(BUCKET)
        # set up here, not in its task (a cancellation can be lost in the set-up's
        # requests: see Worker.start)
        watcher = await kv.watchall()
        self._kv_task = asyncio.create_task(self._watch(watcher), name="sink-config-watch")
        self._feed = PullFeed(self.nc, STREAM, SINK, credit=2 * self.batch)
        await self._feed.start()
        self._task = asyncio.create_task(self._loop(), name="sink-loop")
        self._poll = asyncio.create_task(poll_pending(js, SINK, self),
                                         name="sink-poll-pending")
        if self.metrics_bind:
            from gateway.bus.metrics import SinkCollector, serve

            serve(SinkCollector(self), self.metrics_bind)

    async def _watch(self, watcher: Any) -> None:
        from gateway.historian.writer import run_info_from_config

        async for e in watcher:
            if e is None or not e.value:
                continue
            try:
                cfg = config_from_text(e.value.decode("utf-8", "replace"))
            except Exception as exc:  # an invalid revision: the workers report it
                log.warning("feeder %s revision %d not usable: %s", e.key, e.revision, exc)
                continue
            self._infos[e.key] = (run_info_from_config(cfg), [p.name for p in cfg.plants])

    async def _loop(self) -> None:
        while not self._closing:  # (a cancellation can be swallowed: see stop_tasks)
            try:
                # the sink is not latency-bound: a short linger makes fewer, larger
                # database transactions
                msgs = await self._feed.next_batch(self.batch, 1.0, linger_s=0.05)
            except Exception as exc:  # bus trouble: retry
                log.warning("receive failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if msgs:
                await self.handle(msgs)

    async def handle(self, msgs: Sequence[Any]) -> None:
        batch: dict[str, list[Row]] = {}
        good = []
        for m in msgs:
            delivered, stream_seq = delivery(m.reply)
            if delivered > 1:
                self.stats.redelivered += 1
            try:
                recs = self.rows.rows(m.subject, m.data, stream_seq)
            except wire.BusMessageError as exc:
                self.stats.bad += 1
                if self.stats.bad <= 10:
                    log.warning("dropped a bad bus message on %s: %s", m.subject, exc)
                await m.term()
                continue
            for table, row in recs:
                batch.setdefault(table, []).append(row)
            if m.subject.endswith(".state"):
                self.last_state[m.subject.split(".")[1]] = time.time()
            good.append(m)
        if not await self._write(batch):
            for m in good:  # JetStream keeps them; they come back after the delay
                await m.nak(delay=2.0)
            return
        await ack_all(self.nc, good)
        self.stats.messages += len(good)
        for t, rows in batch.items():
            self.stats.rows[t] = self.stats.rows.get(t, 0) + len(rows)

    async def _write(self, batch: Mapping[str, list[Row]]) -> bool:
        if not batch:
            return True
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._db, self.backend.write, batch),
                                   self.write_timeout_s)
        except (HistorianError, TimeoutError) as exc:
            self.stats.write_failures += 1
            self.stats.connected = False
            if self.stats.write_failures <= 5 or self.stats.write_failures % 100 == 0:
                log.error("historian write failed (%s); the bus keeps the backlog", exc)
            # forget the runs written in this batch: their rows must be written again
            self.rows.known_runs.clear()
            return False
        self.stats.connected = True
        return True

    async def close(self) -> None:
        """Stop reading, close the bus parts and the database, each wait bounded (a part
        that does not close in time is logged and counted in ``stats.close_timeouts``)."""
        self._closing = True
        stuck = await stop_tasks([self._task, self._kv_task, self._poll], "sink close")
        self.stats.close_timeouts += len(stuck)
        if self._feed is not None and not await close_step(self._feed.close(),
                                                           "sink close: pull feed"):
            self.stats.close_timeouts += 1
        if not await close_connection(self.nc, "sink close: connection"):
            self.stats.close_timeouts += 1
        # bounded: a write stuck behind a dead link must not hold the shutdown forever
        # (the backend's own socket timeouts end it; the thread is not waited for)
        with contextlib.suppress(TimeoutError, HistorianError):
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self._db, self.backend.close), self.write_timeout_s)
        self._db.shutdown(wait=False, cancel_futures=True)

    def _connect(self) -> None:
        self.backend.connect()
        self.backend.ensure_schema()
