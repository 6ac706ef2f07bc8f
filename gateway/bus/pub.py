"""JetStream publishes without a round trip each.

``JetStreamContext.publish`` of the client library sends one message and waits for its
acknowledgement (PubAck) before it returns; a sender that awaits every publish makes one
round trip per message, and one that gathers windows waits for the slowest of each
window before sending more. :class:`AckedPublisher` sends at once and hands back a
future per message, resolved when its PubAck arrives on one wildcard inbox subscription
(matched by a token in the reply subject). Messages published together leave in one
socket write; the caller decides what to do when each is stored (a worker acknowledges
the snapshot it answered, an edge frees a slot of its window).

A future with no PubAck after ``timeout_s`` (the server or the connection went away)
fails with :class:`PublishTimeout`; a negative PubAck fails with :class:`PublishRejected`.

The edges use the synchronous path instead (:meth:`AckedPublisher.send` then
:meth:`AckedPublisher.write`): ``publish`` goes through the client library's publish
(subject and header validation, a future and a flusher-queue entry per message) and its
flusher task, one more loop turn before the bytes leave. ``send`` builds the ``HPUB``
frame itself (the subject, reply prefix and header prefix are fixed per edge; the
de-duplication id is the only header) and ``write`` hands every frame built in this loop
turn to the connection's socket in one write, after whatever the client library had
queued (so its own commands keep their order). The PubAck reaches a plain callback, not
a future (no future and no scheduled callback per message). Back-pressure is the
caller's window: an edge keeps at most ``window`` messages awaiting their PubAck.

Incoming messages that arrive at the rate of the snapshots (the PubAcks, an edge's
states) can skip the client library's delivery (:func:`route_direct`): it builds a
message object per message, queues it for the subscription's task and runs the callback
on a later loop turn; routed, the raw subject and payload reach a plain function from
the connection's reader itself, one loop turn earlier. A PubAck with headers (a negative
one's status) still takes the library's path; an edge's states carry their
de-duplication id as a header, which the edge does not need, and are routed with
``headers=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.bus.conn import BusError

__all__ = ["Acked", "AckedPublisher", "PublishRejected", "PublishTimeout", "hpub_frame",
           "route_direct", "unroute"]

log = logging.getLogger("gridtwin.bus")

#: ``send``'s callback: (the caller's context, the error or None, duplicate)
Acked = Callable[[Any, BaseException | None, bool], None]


def hpub_frame(subject: bytes, reply: bytes, msg_id: bytes, data: bytes) -> bytes:
    """The NATS protocol's ``HPUB`` command for ``data`` with one header,
    ``Nats-Msg-Id`` (what the client library sends for ``publish(..., headers={...})``,
    without its per-call validation: the edge's subjects and ids are checked once)."""
    hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
    return b"".join((b"HPUB ", subject, b" ", reply, b" %d %d\r\n" % (
        len(hdr), len(hdr) + len(data)), hdr, data, b"\r\n"))


class PublishTimeout(BusError):
    """No PubAck in time: the message may or may not be stored (send it again; the
    de-duplication id keeps it once)."""


class PublishRejected(BusError):
    """The server answered with an error (no stream for the subject, limits, ...)."""


class AckedPublisher:
    """Pipelined JetStream publishes on a connected client ``nc`` (see module doc)."""

    def __init__(self, nc: Any, *, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._prefix = ""
        self._n = 0
        #: token -> (future, deadline)
        self._waiting: dict[str, tuple[asyncio.Future[bool], float]] = {}
        #: token -> (callback, context, deadline): the synchronous path (:meth:`send`)
        self._calls: dict[bytes, tuple[Acked, Any, float]] = {}
        self._reply = b""
        self._out: list[bytes] = []
        self._out_tokens: list[bytes] = []
        self._sub: Any = None
        self._sweep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._reply = self._prefix.encode()
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)
        route_direct(self.nc, self._sub, self._on_ack_raw)
        self._sweep = asyncio.create_task(self._sweeper())

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweep
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(PublishTimeout("publisher closed before the PubAck"))
        self._waiting.clear()
        self._out.clear()
        self._out_tokens.clear()
        calls, self._calls = self._calls, {}
        for cb, ctx, _ in calls.values():
            cb(ctx, PublishTimeout("publisher closed before the PubAck"), False)

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._calls)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    def send(self, subject: bytes, data: bytes, msg_id: bytes, cb: Acked, ctx: Any) -> None:
        """Queue ``data`` for :meth:`write` (this loop turn); ``cb(ctx, error, duplicate)``
        runs once: on its PubAck, on a negative one, after ``timeout_s`` without one, or
        when the publisher closes, or at :meth:`write` if there is no connection then."""
        self._n += 1
        token = b"%d" % self._n
        self._calls[token] = (cb, ctx, time.monotonic() + self.timeout_s)
        self._out.append(hpub_frame(subject, self._reply + token, msg_id, data))
        self._out_tokens.append(token)

    def write(self) -> None:
        """Everything :meth:`send` queued, in one socket write, behind what the client
        library has queued itself (its flusher then finds nothing left to write). With
        no connection their callbacks get :class:`PublishRejected` now (the caller
        sends them again); a connection lost after the write shows as the timeout."""
        out, self._out = self._out, []
        tokens, self._out_tokens = self._out_tokens, []
        if not out:
            return
        nc = self.nc
        transport = getattr(nc, "_transport", None)
        if not nc.is_connected or transport is None:
            for t in tokens:
                call = self._calls.pop(t, None)
                if call is not None:
                    call[0](call[1], PublishRejected("not connected"), False)
            return
        pending = nc._pending
        if pending:  # the library's own commands first, in their order
            out = pending + out
            nc._pending = []
            nc._pending_data_size = 0
        try:
            transport.writelines(out)
        except Exception:  # the connection went away under us
            return  # the PubAcks do not come: the timeout reports every frame

    async def publish(self, subject: str, data: bytes, msg_id: str) -> asyncio.Future[bool]:
        """Send now; the future resolves to ``duplicate`` (True: it was stored before)."""
        self._n += 1
        token = str(self._n)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (fut, time.monotonic() + self.timeout_s)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token,
                                  headers={"Nats-Msg-Id": msg_id})
        except Exception as exc:  # not connected, buffer full: the caller retries
            del self._waiting[token]
            fut.set_exception(PublishRejected(f"publish on {subject}: {exc}"))
        return fut

    async def _on_ack(self, m: Any) -> None:
        """A PubAck through the client library (one with headers, or when
        :func:`route_direct` could not route)."""
        token = m.subject[len(self._prefix):]
        try:
            dup, exc = _ack_result(m.data, m.headers), None
        except PublishRejected as e:
            dup, exc = False, e
        self._resolve(token.encode(), dup, exc)

    def _on_ack_raw(self, subject: bytes, data: bytes) -> None:
        """A PubAck without headers, straight from the connection's reader."""
        try:
            dup, exc = _ack_result(data, None), None
        except PublishRejected as e:
            dup, exc = False, e
        self._resolve(subject[len(self._reply):], dup, exc)

    def _resolve(self, token: bytes, dup: bool, exc: PublishRejected | None) -> None:
        call = self._calls.pop(token, None)
        if call is not None:
            call[0](call[1], exc, dup)
            return
        hit = self._waiting.pop(token.decode(), None)
        if hit is None or hit[0].done():
            return  # after its timeout: the message is being sent again
        if exc is not None:
            hit[0].set_exception(exc)
        else:
            hit[0].set_result(dup)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            now = time.monotonic()
            late = [t for t, (_, end) in self._waiting.items() if end <= now]
            for t in late:
                fut = self._waiting.pop(t)[0]
                if not fut.done():
                    fut.set_exception(PublishTimeout(f"no PubAck in {self.timeout_s:g} s"))
            for tok in [t for t, (_, _, end) in self._calls.items() if end <= now]:
                cb, ctx, _ = self._calls.pop(tok)
                cb(ctx, PublishTimeout(f"no PubAck in {self.timeout_s:g} s"), False)


def _ack_result(data: bytes, headers: dict[str, str] | None) -> bool:
    """A PubAck's ``duplicate`` (True: stored before); :class:`PublishRejected` when it
    says the message was not stored."""
    status = headers.get("Status") if headers else None
    if status is not None:  # e.g. 503: no stream listens on the subject
        raise PublishRejected(f"status {status} {headers.get('Description', '')}")  # type: ignore[union-attr]
    # the PubAck of a stored message is {"stream":"S", "seq":N[,"duplicate": true]}
    # (nats-server's spacing): no JSON parse for it (one per message); anything else
    # is parsed to say why
    if data.startswith(b'{"stream"') and b'"error"' not in data:
        return b'"duplicate"' in data and b'true' in data[data.index(b'"duplicate"'):]
    try:
        body = json.loads(data)
    except ValueError:
        raise PublishRejected(f"PubAck not JSON: {data[:80]!r}") from None
    if not isinstance(body, dict) or "error" in body:
        raise PublishRejected(f"PubAck: {body}")
    return bool(body.get("duplicate", False))


class _Direct:
    """The connection's message dispatch with some subscriptions routed to plain
    functions (see the module docstring)."""

    def __init__(self, nc: Any) -> None:
        #: subscription id -> (handler, also the messages with headers)
        self.routes: dict[int, tuple[Callable[[bytes, bytes], None], bool]] = {}
        self._library = nc._process_msg

    async def process(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                      headers: bytes | None) -> None:
        route = self.routes.get(sid)
        if route is None or (headers and not route[1]):
            await self._library(sid, subject, reply, data, headers)
            return
        try:
            route[0](subject, data)
        except Exception:  # the reader must go on: one bad handler call is logged
            log.exception("bus: handling a message on %r failed", subject)


def route_direct(nc: Any, sub: Any, handler: Callable[[bytes, bytes], None], *,
                 headers: bool = False) -> bool:
    """Hand the messages of ``sub`` (subscribed on ``nc``) to ``handler(subject,
    payload)`` from the connection's reader, not through the subscription's task; those
    with headers too when ``headers`` (their headers are not passed on), else they take
    the library's path. This reaches into the client library (nats-py's
    ``Client._process_msg``, called by its protocol parser with the subscription id):
    False, and the library's delivery as before, where that is not there."""
    sid = getattr(sub, "_id", None)
    if not isinstance(sid, int):
        return False
    d = getattr(nc, "_gridtwin_direct", None)
    if d is None:
        if not callable(getattr(nc, "_process_msg", None)):
            return False
        d = _Direct(nc)
        nc._gridtwin_direct = d
        nc._process_msg = d.process
    d.routes[sid] = (handler, headers)
    return True


def unroute(nc: Any, sub: Any) -> None:
    """Undo :func:`route_direct` for ``sub`` (before unsubscribing it)."""
    d = getattr(nc, "_gridtwin_direct", None)
    if d is not None:
        d.routes.pop(getattr(sub, "_id", -1), None)
