"""Edge publishing: a twin's snapshots, events and health onto the bus, never blocking ingest.

The gateway calls :meth:`EdgeBus.offer_snapshot` (and ``offer_event``/``offer_health``)
on its hot path; that only encodes the message, appends it to a bounded buffer and asks
for one send at the end of the current event-loop turn (``loop.call_soon``, once per turn
for every edge on the connection): there the buffer goes to JetStream, up to ``window``
messages awaiting their acknowledgement (PubAck) at a time, pipelined, in one socket
write for all the edges of the process (:meth:`gateway.bus.pub.AckedPublisher.send`). No
publisher task and no flusher task stand between the offer and the socket: a snapshot
leaves right after the loop turn that offered it (before: a turn for the publisher task,
then one for the client library's flusher). A message whose PubAck fails or does not
come is sent again first:

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
from gateway.bus.conn import BusOptions, close_connection, connect, ensure_fleet
from gateway.bus.pub import AckedPublisher, route_direct, unroute

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
        # per kind: the subject and the de-duplication id up to its sequence number, as
        # the bytes of the frame (wire.subject, wire.msg_id)
        self._subjects = {k: wire.subject(twin, k).encode() for k in wire.KIND_NAMES}
        self._ids = {k: wire.msg_id(twin, self.run, k, 0)[:-1].encode()
                     for k in wire.KIND_NAMES}
        #: (subject, message, de-duplication id), oldest first
        self._buf: deque[tuple[bytes, bytes, bytes]] = deque(maxlen=buffer)
        self._up = False
        self._inflight = 0  # sent, awaiting the PubAck
        self._scheduled = False  # a send is asked for at the end of this loop turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pub: Any = None
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
        self._buf.append((self._subjects[kind], msg, self._ids[kind] + b"%d" % seq))
        self._kick()

    @property
    def pending(self) -> int:
        """Messages waiting (the spool while the bus is down) or awaiting their PubAck."""
        return len(self._buf) + self._inflight

    # ------------------------------------------------------------------ sending
    def _kick(self) -> None:
        """Ask for a send at the end of this loop turn (once, whatever the offers)."""
        if self._closing or self._loop is None:
            return  # not started: start() sends what was offered before
        if self._conn is not None:
            self._conn.kick(self)
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        if self._closing:
            return
        self._fill()
        self._pub.write()

    def _fill(self) -> None:
        """Hand the publisher what is buffered while fewer than ``window`` wait for their
        PubAck and the bus is up (else it stays: the spool)."""
        buf, pub, acked = self._buf, self._pub, self._acked
        while buf and self._inflight < self.window and self._up:
            item = buf.popleft()
            self._inflight += 1
            pub.send(item[0], item[1], item[2], acked, item)

    def _acked(self, item: tuple[bytes, bytes, bytes], exc: BaseException | None,
               duplicate: bool) -> None:
        self._inflight -= 1
        if exc is not None:
            # not stored (or not known to be): again, first; the de-duplication id makes
            # a second copy of a stored one harmless
            self.stats.errors += 1
            if len(self._buf) == self._buf.maxlen:
                self.stats.dropped += 1  # the oldest message: it goes, as on overflow
            else:
                self._buf.appendleft(item)
            if self._loop is not None and not self._closing:
                self._loop.call_later(0.1, self._kick)
            return
        self.stats.published += 1
        self.stats.duplicates += int(duplicate)
        if self._buf:
            self._kick()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
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
        # the states straight from the connection's reader, a loop turn earlier (their
        # one header, the worker's de-duplication id, is not needed here)
        route_direct(self.nc, self._sub, self._state_raw, headers=True)
        self.stats.connected = True
        self._up = True
        self._kick()

    async def _down(self) -> None:
        self.stats.connected = False
        self._up = False
        if self._closing:
            return
        log.warning("bus %s: disconnected; spooling (%d waiting)", self.opts.redacted(),
                    self.pending)

    async def _again(self) -> None:
        self.stats.connected = True
        self.stats.reconnects += 1
        self._up = True
        self._kick()
        log.warning("bus %s: reconnected; catching up %d messages", self.opts.redacted(),
                    self.pending)

    async def _state(self, m: Any) -> None:
        self._state_raw(b"", m.data)

    def _state_raw(self, subject: bytes, data: bytes) -> None:
        try:
            st = wire.decode(data)
        except wire.BusMessageError:
            self.stats.bad_states += 1
            return
        if not isinstance(st, wire.BusState):
            self.stats.bad_states += 1
            return
        self.stats.states += 1
        if self.on_state is not None:
            self.on_state(st, self.clock() - st.publish_time)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far is acknowledged (True) or ``timeout``."""
        end = time.monotonic() + timeout
        while self.pending and time.monotonic() < end:
            self._kick()
            await asyncio.sleep(0.01)
        return not self.pending

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            conn, self._conn = self._conn, None  # closing twice leaves once
            unroute(self.nc, self._sub)
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            await conn.leave(self)
            return
        if self.shared:
            return
        if self._pub is not None:
            await self._pub.close()
        if self.nc is not None:  # bounded: a hung server must not hang the edge's exit
            await close_connection(self.nc, "edge bus connection", drain=True)


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
        self._dirty: dict[EdgeBus, None] = {}  # edges with something to send, in order
        self._scheduled = False

    def kick(self, edge: EdgeBus) -> None:
        """``edge`` has something to send: one send for all of them at the end of this
        loop turn."""
        self._dirty[edge] = None
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        for e in dirty:
            if not e._closing:
                e._fill()
        self.pub.write()

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
        await close_connection(self.nc, "shared edge bus connection", drain=True)

    async def _down(self) -> None:
        for e in list(self.edges):
            await e._down()

    async def _again(self) -> None:
        for e in list(self.edges):
            await e._again()
