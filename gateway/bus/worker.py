"""``gridtwin worker``: an estimator for any feeder of the fleet, pulling from JetStream.

Workers share the ``workers`` pull consumer, so JetStream spreads snapshots over however
many workers run, on however many machines. Per fetched batch:

1. messages that do not follow the layout are terminated (never redelivered) and counted;
2. **newest wins per feeder**: of several snapshots of one feeder in the batch only the
   newest is estimated; the older ones are acknowledged as *superseded* (counted), as in
   the single-box twin;
3. the feeder's estimator comes from a cache keyed by (feeder, config revision), and
   within it by the snapshot's topology (the switch states the edge's tracker stamped
   it with; :class:`gateway.estimator_worker.SolverCache`, the estimator process's own
   cache): the measurement model is built and factorised once per config and
   topology, so any worker serves any feeder and a busy one pays the set-up once;
   the state names the topology it used (``states.topology`` at the sink);
4. the state goes to ``gridtwin.<twin>.state`` (with its de-duplication id) and only then
   is the snapshot acknowledged: a worker killed between the two leaves the snapshot
   unacknowledged, and JetStream redelivers it to another worker after ``ack_wait``.

A state whose snapshot waited longer than the feeder's ``estimator.deadline_s`` (publish
at the edge → state done) counts as a deadline miss; it is still published (the edge and
the sink want it; dropping it would lose data that was accepted).

Feeder configs come from the ``gridtwin_feeders`` bucket and are watched: a new revision is
validated like a file; an invalid one is reported as an event and the previous revision
stays in force.

The pure part (:class:`BatchPlan`) decides what to do with a batch; :class:`Worker` only
talks to the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.bus import wire
from gateway.bus.conn import (
    BUCKET,
    STREAM,
    WORKERS,
    BusOptions,
    close_connection,
    close_step,
    connect,
    ensure_fleet,
    stop_tasks,
)
from gateway.bus.pub import AckedPublisher
from gateway.bus.pull import PullFeed, ack_all, delivery
from gateway.errors import GatewayError

log = logging.getLogger("gridtwin.worker")

#: a stored state's snapshot is acknowledged at most this late (with the next batch's
#: states when one comes sooner): far inside any ack wait, one write for many
ACK_DELAY_S = 0.02
#: within a long batch, states leave at least this often (not all after the last solve)
FLUSH_EVERY_S = 0.004

#: solve(values, flags, pv_mw, pv_sigma) -> (vm, va, chi2, chi2_thr, iterations, converged)
SolveFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   tuple[np.ndarray, np.ndarray, float, float, int, bool]]


@dataclass
class WorkerStats:
    solved: int = 0
    superseded: int = 0
    bad: int = 0
    unknown_feeder: int = 0
    failed: int = 0
    redelivered: int = 0
    deadline_misses: int = 0
    publish_failures: int = 0  # states not stored: their snapshots left for redelivery
    config_loads: int = 0
    config_rejected: int = 0
    close_timeouts: int = 0  # tasks or bus parts that did not close in time (given up)
    per_feeder: dict[str, int] = field(default_factory=dict)
    superseded_per_feeder: dict[str, int] = field(default_factory=dict)
    failed_per_feeder: dict[str, int] = field(default_factory=dict)
    #: of ``per_feeder``, states the stream already held (its de-duplication id): per
    #: feeder, ``per_feeder - duplicates_per_feeder`` states were stored by this worker
    duplicates_per_feeder: dict[str, int] = field(default_factory=dict)
    fail_reasons: list[str] = field(default_factory=list)  # the first estimates failed


@dataclass
class Planned:
    twin: str
    snap: wire.BusSnapshot
    msg: Any


@dataclass
class BatchPlan:
    """What to do with one fetched batch: estimate ``keep``, ack ``superseded``,
    terminate ``bad`` (each with the reason)."""

    keep: list[Planned] = field(default_factory=list)
    superseded: list[Any] = field(default_factory=list)
    bad: list[tuple[Any, str]] = field(default_factory=list)

    @classmethod
    def of(cls, msgs: list[Any]) -> BatchPlan:
        plan = cls()
        newest: dict[str, Planned] = {}
        for m in msgs:
            parts = m.subject.split(".")
            if len(parts) != 3 or parts[2] != "snapshot":
                plan.bad.append((m, f"subject {m.subject!r} is not gridtwin.<twin>.snapshot"))
                continue
            try:
                snap = wire.decode(m.data)
            except wire.BusMessageError as exc:
                plan.bad.append((m, f"{m.subject}: {exc}"))
                continue
            if not isinstance(snap, wire.BusSnapshot):
                plan.bad.append((m, f"{m.subject}: not a snapshot message"))
                continue
            twin = parts[1]
            old = newest.get(twin)
            if old is None or snap.seq > old.snap.seq:
                if old is not None:
                    plan.superseded.append(old.msg)
                newest[twin] = Planned(twin, snap, m)
            else:
                plan.superseded.append(m)
        plan.keep = list(newest.values())
        return plan


async def poll_pending(js: Any, durable: str, owner: Any, every_s: float = 2.0) -> None:
    """Keep ``owner.pending`` at the consumer's backlog (for the lag metric)."""
    while True:
        with contextlib.suppress(Exception):  # the bus may be down: keep the last value
            info = await js.consumer_info(STREAM, durable)
            owner.pending = int(info.num_pending)
        await asyncio.sleep(every_s)


class Solvers(Protocol):
    """One feeder's solvers per topology (:class:`gateway.estimator_worker.SolverCache`)."""

    def solver(self, topology: tuple[bool, ...] | None) -> tuple[SolveFn, str]: ...


class FeederCache:
    """Estimators per (feeder, config revision), built from the config bucket's text;
    each revision's :class:`Solvers` keeps one solver per topology met."""

    def __init__(self, build: Callable[[str], tuple[Solvers, float]]) -> None:
        self._build = build
        self._solvers: dict[str, tuple[int, Solvers, float]] = {}
        self.errors: dict[str, str] = {}

    def update(self, twin: str, revision: int, text: str) -> str | None:
        """Install a config revision; the error (old revision kept) or None."""
        try:
            solve, deadline = self._build(text)
        except (GatewayError, ValueError, OSError) as exc:
            self.errors[twin] = f"revision {revision}: {exc}"
            return self.errors[twin]
        self._solvers[twin] = (revision, solve, deadline)
        self.errors.pop(twin, None)
        return None

    def get(self, twin: str) -> tuple[Solvers, float] | None:
        hit = self._solvers.get(twin)
        return None if hit is None else (hit[1], hit[2])

    def revision(self, twin: str) -> int | None:
        hit = self._solvers.get(twin)
        return None if hit is None else hit[0]

    @property
    def feeders(self) -> list[str]:
        return sorted(self._solvers)


def config_from_text(text: str) -> Any:
    """A validated twin config from its TOML text (as the config bucket holds it). A
    network case it names must be bundled or at an absolute path on this machine."""
    from gateway.config import load_config

    with tempfile.TemporaryDirectory(prefix="gridtwin-feeder-") as d:
        path = Path(d) / "twin.toml"
        path.write_text(text)
        return load_config(str(path))


def build_from_text(text: str) -> tuple[Solvers, float]:
    """(solvers per topology, deadline_s) for a twin config given as TOML text (validated
    like a file); the config's own topology is built at once."""
    from gateway.estimator_worker import SolverCache

    cfg = config_from_text(text)
    return SolverCache(cfg, cfg.estimator.method), float(cfg.estimator.deadline_s)


class Worker:
    """One estimator worker process's bus side (see the module docstring)."""

    def __init__(self, opts: BusOptions, *, batch: int = 64, clock: Callable[[], float] =
                 time.time, build: Callable[[str], tuple[Solvers, float]] = build_from_text,
                 metrics_bind: str = "", credit: int = 16) -> None:
        self.opts = opts
        #: messages the server may push ahead of this worker's progress: small, so one
        #: worker the OS leaves waiting holds few snapshots while the others are free
        #: (a request per ~credit/2 messages, sent with the states)
        self.credit = credit
        self.metrics_bind = metrics_bind
        self.pending = 0  # the work queue's backlog at the last poll
        self.batch = batch
        self.clock = clock
        self.cache = FeederCache(build)
        self.stats = WorkerStats()
        self.nc: Any = None
        self.js: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: list[Any] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._pub: Any = None
        self._feed: Any = None

    async def start(self) -> None:
        self.nc = await connect(self.opts)
        self.js = self.nc.jetstream()
        await ensure_fleet(self.js, self.opts)
        kv = await self.js.key_value(BUCKET)
        await self._load_all(kv)
        # the feeders' models stay: keep them out of the collector's full passes
        gc.collect()
        gc.freeze()
        self._pub = AckedPublisher(self.nc)
        await self._pub.start()
        self._feed = PullFeed(self.nc, STREAM, WORKERS, credit=self.credit)
        await self._feed.start()
        # the watch is set up here, not in its task: its set-up is a series of requests
        # (asyncio.wait_for each), where a close's cancellation can be lost (Python 3.11);
        # the task then only waits on the watcher's queue
        watcher = await kv.watchall()
        self._tasks = [asyncio.create_task(self._watch(watcher), name="worker-config-watch"),
                       asyncio.create_task(self._loop(), name="worker-loop"),
                       asyncio.create_task(poll_pending(self.js, WORKERS, self),
                                           name="worker-poll-pending")]
        if self.metrics_bind:
            from gateway.bus.metrics import WorkerCollector, serve

            serve(WorkerCollector(self), self.metrics_bind)

    async def _load_all(self, kv: Any) -> None:
        from nats.js.errors import NoKeysError

        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        for k in keys:
            e = await kv.get(k)
            self._install(k, e.revision, e.value)

    def _install(self, twin: str, revision: int, value: bytes | None) -> None:
        if value is None or self.cache.revision(twin) == revision:
            return
        err = self.cache.update(twin, revision, value.decode("utf-8", "replace"))
        if err is None:
            self.stats.config_loads += 1
            log.info("feeder %s: config revision %d in force", twin, revision)
        else:
            self.stats.config_rejected += 1
            log.error("feeder %s: config %s; the previous revision stays", twin, err)
            asyncio.get_running_loop().create_task(self._event(
                twin, "config_rejected", {"error": err}))

    async def _watch(self, watcher: Any) -> None:
        async for e in watcher:
            if e is not None and e.value:
                self._install(e.key, e.revision, e.value)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = await self._feed.next_batch(self.batch, 0.5)
            except Exception as exc:  # bus trouble: retry, never die
                log.warning("receive failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            if msgs:
                await self.handle(msgs)

    async def handle(self, msgs: list[Any]) -> None:
        plan = BatchPlan.of(msgs)
        for m, why in plan.bad:
            self.stats.bad += 1
            if self.stats.bad <= 10:
                log.warning("dropped a bad bus message: %s", why)
            await m.term()
        for m in plan.superseded:
            self.stats.superseded += 1
            if delivery(m.reply)[0] > 1:  # it may have been answered before, too
                self.stats.redelivered += 1
            twin = m.subject.split(".")[1]
            per = self.stats.superseded_per_feeder
            per[twin] = per.get(twin, 0) + 1
        self._acks.extend(plan.superseded)
        await self._send_acks()  # those due leave in the same write as the states
        flushed = time.perf_counter()
        for p in plan.keep:
            if delivery(p.msg.reply)[0] > 1:
                self.stats.redelivered += 1
            state = await self._estimate(p)
            if state is not None:
                s = p.snap
                fut = await self._pub.publish(
                    wire.subject(p.twin, wire.STATE), wire.encode_state(state),
                    wire.msg_id(p.twin, s.run, wire.STATE, s.seq))
                # the snapshot is acknowledged once its state is stored, from the PubAck
                # itself (no task per batch), while the next batch is being estimated
                fut.add_done_callback(functools.partial(self._stored, p))
            if time.perf_counter() - flushed > FLUSH_EVERY_S:
                await asyncio.sleep(0)  # a long batch: let the states so far leave
                flushed = time.perf_counter()

    async def _estimate(self, p: Planned) -> wire.BusState | None:
        """Estimate one snapshot; its state (None when there is nothing to publish)."""
        hit = self.cache.get(p.twin)
        if hit is None:
            self.stats.unknown_feeder += 1
            await p.msg.ack()  # nobody can estimate it until it is registered
            return None
        solvers, deadline = hit
        s = p.snap
        t0 = time.perf_counter()
        try:  # a topology met for the first time builds its solver (counted in t_solve)
            solve, label = solvers.solver(s.topology)
            vm, va, chi2, thr, iters, conv = solve(s.values, s.flags, s.pv_mw, s.pv_sigma_mw)
        except Exception as exc:  # one feeder fails alone
            self.stats.failed += 1
            per = self.stats.failed_per_feeder
            per[p.twin] = per.get(p.twin, 0) + 1
            if len(self.stats.fail_reasons) < 10:  # what went wrong, in the exit report
                self.stats.fail_reasons.append(f"{p.twin} seq {s.seq}: "
                                               f"{type(exc).__name__}: {exc}")
            await self._event(p.twin, "estimate_failed", {"seq": s.seq, "error": str(exc)})
            await p.msg.ack()
            return None
        t_solve = time.perf_counter() - t0
        done = self.clock()
        if done - s.publish_time > deadline:
            self.stats.deadline_misses += 1
        return wire.BusState(s.run, s.seq, s.source_time, s.arrival_time, s.publish_time,
                             done, chi2, thr, t_solve, iters, conv, np.asarray(vm, float),
                             np.asarray(va, float), label)

    def _stored(self, p: Planned, fut: asyncio.Future[bool]) -> None:
        """A state's PubAck came (or its publish failed): acknowledge its snapshot. One
        whose state was not stored stays unacknowledged: JetStream gives it to a worker
        again after the ack wait (the state's de-duplication id keeps a second copy out)."""
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            self.stats.publish_failures += 1
            log.warning("state of %s not stored (%s): left for redelivery", p.twin, exc)
            return
        self._ack_later(p.msg)
        self.stats.solved += 1
        self.stats.per_feeder[p.twin] = self.stats.per_feeder.get(p.twin, 0) + 1
        if fut.result():  # stored before (a redelivered snapshot estimated twice)
            per = self.stats.duplicates_per_feeder
            per[p.twin] = per.get(p.twin, 0) + 1

    def _ack_later(self, m: Any) -> None:
        """Acknowledge ``m`` with the next batch's states, or in :data:`ACK_DELAY_S` (one
        socket write for many acknowledgements instead of one each)."""
        self._acks.append(m)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S,
                                                                    self._acks_due)

    def _acks_due(self) -> None:
        self._ack_timer = None
        self._ack_task = asyncio.create_task(self._send_acks())  # referenced: not collected

    async def _send_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        acks, self._acks = self._acks, []
        await ack_all(self.nc, acks)

    async def _event(self, twin: str, kind: str, detail: dict[str, Any]) -> None:
        body = {"time": self.clock(), "kind": kind, "source": "worker", "detail": detail}
        with contextlib.suppress(Exception):
            await self.js.publish(wire.subject(twin, wire.EVENT),
                                  wire.encode_json(wire.EVENT, body))

    async def close(self) -> None:
        """Stop, acknowledge what is stored, close the bus parts. Every wait is bounded
        (:data:`gateway.bus.conn.CLOSE_TIMEOUT_S` each): a part that does not close in
        time (a hung server, a task that swallowed its cancellation) is logged and
        counted in ``stats.close_timeouts``, never waited for forever."""
        self._stop.set()
        stuck = await stop_tasks([*self._tasks, self._ack_task], "worker close")
        self.stats.close_timeouts += len(stuck)
        end = time.monotonic() + 3.0  # states in flight: their snapshots acknowledged
        while self._pub is not None and self._pub.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)  # (if stored) by their PubAcks' callbacks
        if self.nc is not None:
            steps: list[tuple[str, Any]] = [("acknowledgements", self._flush_acks())]
            steps += [(name, part.close()) for name, part in
                      (("pull feed", self._feed), ("publisher", self._pub)) if part is not None]
            for name, step in steps:
                if not await close_step(step, f"worker close: {name}"):
                    self.stats.close_timeouts += 1
            if not await close_connection(self.nc, "worker close: connection"):
                self.stats.close_timeouts += 1

    async def _flush_acks(self) -> None:
        await self._send_acks()
        await self.nc.flush(2)
