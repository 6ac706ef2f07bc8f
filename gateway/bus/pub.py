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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from gateway.bus.conn import BusError

__all__ = ["AckedPublisher", "PublishRejected", "PublishTimeout"]


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
        self._sub: Any = None
        self._sweep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack)
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

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

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
        hit = self._waiting.pop(m.subject[len(self._prefix):], None)
        if hit is None or hit[0].done():
            return  # after its timeout: the message is being sent again
        fut = hit[0]
        status = m.headers.get("Status") if m.headers else None
        if status is not None:  # e.g. 503: no stream listens on the subject
            fut.set_exception(PublishRejected(f"status {status} "
                                              f"{m.headers.get('Description', '')}"))
            return
        data = m.data
        # the PubAck of a stored message is {"stream":"S", "seq":N[,"duplicate": true]}
        # (nats-server's spacing): no JSON parse for it (one per message); anything else
        # is parsed to say why
        if data.startswith(b'{"stream"') and b'"error"' not in data:
            fut.set_result(b'"duplicate"' in data and b'true' in data[data.index(
                b'"duplicate"'):])
            return
        try:
            body = json.loads(data)
        except ValueError:
            fut.set_exception(PublishRejected(f"PubAck not JSON: {m.data[:80]!r}"))
            return
        if not isinstance(body, dict) or "error" in body:
            fut.set_exception(PublishRejected(f"PubAck: {body}"))
            return
        fut.set_result(bool(body.get("duplicate", False)))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            now = time.monotonic()
            late = [t for t, (_, end) in self._waiting.items() if end <= now]
            for t in late:
                fut = self._waiting.pop(t)[0]
                if not fut.done():
                    fut.set_exception(PublishTimeout(f"no PubAck in {self.timeout_s:g} s"))
