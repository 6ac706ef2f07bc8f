"""Edge publishing: a twin's snapshots, events and health onto the bus, never blocking ingest.

The gateway calls :meth:`EdgeBus.offer_snapshot` (and ``offer_event``/``offer_health``)
on its hot path; that only encodes the message and appends it to a bounded buffer. A
publisher task sends the buffer to JetStream as soon as it can, up to ``window`` messages
awaiting their acknowledgement (PubAck) at a time, pipelined (:mod:`gateway.bus.pub`);
a message whose PubAck fails or does not come is sent again first:

* while the bus is down the buffer is the spool: nothing is sent, the twin keeps
  estimating locally; on reconnect the spool is sent in order (catch-up), newest last;
* the buffer is bounded (``buffer`` messages): when it is full the *oldest* message is
  dropped and counted (``dropped``); the de-duplication ids make a message that was sent
  but whose acknowledgement was lost harmless to send again;
* states coming back from the workers (core subscription on ``gridtwin.<twin>.state``)
  are handed to ``on_state`` with the round-trip time (publish at the edge → state back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gateway.bus import wire
from gateway.bus.conn import BusOptions, connect, ensure_fleet
from gateway.bus.pub import AckedPublisher

log = logging.getLogger("gridtwin.bus")


@dataclass
class EdgeStats:
    offered: int = 0
    published: int = 0  # acknowledged by JetStream
    duplicates: int = 0  # acknowledged as duplicates (sent twice, stored once)
    dropped: int = 0  # oldest messages dropped because the buffer was full
    errors: int = 0  # publish attempts that failed (retried)
    states: int = 0  # states received back
    bad_states: int = 0
    connected: bool = False
    reconnects: int = 0


class EdgeBus:
    """The publishing side of one twin (see the module docstring)."""

    def __init__(self, twin: str, opts: BusOptions, *, buffer: int = 50_000, window: int = 64,
                 clock: Callable[[], float] = time.time,
                 on_state: Callable[[wire.BusState, float], None] | None = None,
                 shared: bool = False) -> None:
        self.twin = twin
        self.shared = shared
        self.opts = opts
        self.window = window
        self.clock = clock
        self.on_state = on_state
        self.stats = EdgeStats()
        #: this edge run's id (µs since the epoch at construction): part of every message
        #: id, so a twin restarted from step 0 is a new run, not a repetition
        self.run = int(clock() * 1e6)
        self._buf: deque[tuple[str, bytes, str]] = deque(maxlen=buffer)
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._inflight: dict[asyncio.Future[bool], tuple[str, bytes, str]] = {}
        self._pub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.nc: Any = None
        self.js: Any = None
        self._conn: _Shared | None = None
        self._sub: Any = None

    # ------------------------------------------------------------------ hot path
    def offer_snapshot(self, seq: int, source_time: float, arrival_time: float,
                       values: np.ndarray, flags: np.ndarray, pv_mw: np.ndarray,
                       pv_sigma_mw: np.ndarray, topology: tuple[bool, ...] | None = None
                       ) -> None:
        """Publish one cleaned snapshot; ``topology``: the switch states to estimate it on
        (the gateway's tracker stamped it; None: the config's network)."""
        msg = wire.encode_snapshot(wire.BusSnapshot(
            self.run, seq, source_time, arrival_time, self.clock(), values, flags, pv_mw,
            pv_sigma_mw, topology))
        self._offer(wire.SNAPSHOT, seq, msg)

    def offer_event(self, seq: int, body: dict[str, Any]) -> None:
        self._offer(wire.EVENT, seq, wire.encode_json(wire.EVENT, body))

    def offer_health(self, seq: int, body: dict[str, Any]) -> None:
        self._offer(wire.HEALTH, seq, wire.encode_json(wire.HEALTH, body))

    def offer(self, kind: int, seq: int, msg: bytes) -> None:
        """Publish an encoded message of ``kind`` (e.g. a state) with its sequence."""
        self._offer(kind, seq, msg)

    def _offer(self, kind: int, seq: int, msg: bytes) -> None:
        self.stats.offered += 1
        if len(self._buf) == self._buf.maxlen:
            self.stats.dropped += 1  # the deque drops the oldest
        self._buf.append((wire.subject(self.twin, kind), msg,
                          wire.msg_id(self.twin, self.run, kind, seq)))
        self._wake.set()

    @property
    def pending(self) -> int:
        """Messages waiting (the spool while the bus is down) or awaiting their PubAck."""
        return len(self._buf) + len(self._inflight)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.shared:
            self._conn = await _Shared.join(self)
            self.nc, self._pub = self._conn.nc, self._conn.pub
        else:
            self.nc = await connect(self.opts, disconnected_cb=self._down,
                                    reconnected_cb=self._again)
            self._pub = AckedPublisher(self.nc)
            await self._pub.start()
        self.js = self.nc.jetstream()
        await ensure_fleet(self.js, self.opts)
        self._sub = await self.nc.subscribe(wire.subject(self.twin, wire.STATE),
                                            cb=self._state)
        self.stats.connected = True
        self._up.set()
        self._task = asyncio.create_task(self._publish_loop())

    async def _down(self) -> None:
        self.stats.connected = False
        self._up.clear()
        if self._closing:
            return
        log.warning("bus %s: disconnected; spooling (%d waiting)", self.opts.redacted(),
                    self.pending)

    async def _again(self) -> None:
        self.stats.connected = True
        self.stats.reconnects += 1
        self._up.set()
        self._wake.set()
        log.warning("bus %s: reconnected; catching up %d messages", self.opts.redacted(),
                    self.pending)

    async def _state(self, m: Any) -> None:
        try:
            st = wire.decode(m.data)
        except wire.BusMessageError:
            self.stats.bad_states += 1
            return
        if not isinstance(st, wire.BusState):
            self.stats.bad_states += 1
            return
        self.stats.states += 1
        if self.on_state is not None:
            self.on_state(st, self.clock() - st.publish_time)

    async def _publish_loop(self) -> None:
        """Send what is buffered while fewer than ``window`` wait for their PubAck: no
        round trip per message, and a snapshot offered while others are in flight
        leaves at once."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buf and len(self._inflight) < self.window and self._up.is_set():
                item = self._buf.popleft()
                fut = await self._pub.publish(*item)
                self._inflight[fut] = item
                fut.add_done_callback(self._acked)

    def _acked(self, fut: asyncio.Future[bool]) -> None:
        item = self._inflight.pop(fut, None)
        if item is None:
            return
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            # not stored (or not known to be): again, first; the de-duplication id makes
            # a second copy of a stored one harmless
            self.stats.errors += 1
            if len(self._buf) == self._buf.maxlen:
                self.stats.dropped += 1  # the oldest message: it goes, as on overflow
            else:
                self._buf.appendleft(item)
            asyncio.get_running_loop().call_later(0.1, self._wake.set)
            return
        self.stats.published += 1
        self.stats.duplicates += int(fut.result())
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far is acknowledged (True) or ``timeout``."""
        end = time.monotonic() + timeout
        while self.pending and time.monotonic() < end:
            self._wake.set()
            await asyncio.sleep(0.01)
        return not self.pending

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            conn, self._conn = self._conn, None  # closing twice leaves once
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            await conn.leave(self)
            return
        if self.shared:
            return
        if self._pub is not None:
            await self._pub.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()


class _Shared:
    """One bus connection for the edges of one process that use the same bus (the fleet
    demo's feeders, several twins on one box): their publishes leave in one socket
    write per event-loop turn instead of one per feeder, for this process and for the
    server. Disconnects and reconnects reach every edge on it."""

    _open: ClassVar[dict[tuple[int, BusOptions], asyncio.Future[_Shared]]] = {}

    def __init__(self, key: tuple[int, BusOptions]) -> None:
        self.key = key
        self.edges: list[EdgeBus] = []
        self.nc: Any = None
        self.pub: Any = None

    @classmethod
    async def join(cls, edge: EdgeBus) -> _Shared:
        opts = dataclasses.replace(edge.opts, name="gridtwin-edges")
        key = (id(asyncio.get_running_loop()), opts)
        fut = cls._open.get(key)
        if fut is None:
            fut = cls._open[key] = asyncio.get_running_loop().create_future()
            conn = cls(key)
            try:
                conn.nc = await connect(opts, disconnected_cb=conn._down,
                                        reconnected_cb=conn._again)
                conn.pub = AckedPublisher(conn.nc)
                await conn.pub.start()
            except BaseException as exc:
                del cls._open[key]
                fut.set_exception(exc)
                raise
            fut.set_result(conn)
        conn = await asyncio.shield(fut)
        conn.edges.append(edge)
        return conn

    async def leave(self, edge: EdgeBus) -> None:
        self.edges.remove(edge)
        if self.edges:
            return
        self._open.pop(self.key, None)
        await self.pub.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()

    async def _down(self) -> None:
        for e in list(self.edges):
            await e._down()

    async def _again(self) -> None:
        for e in list(self.edges):
            await e._again()
