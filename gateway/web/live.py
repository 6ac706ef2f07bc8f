"""Live updates for the operator's page: a throttled broadcaster with bounded client queues.

The pipeline may produce a state every millisecond; a browser needs a few per second and
must never slow the pipeline down. So:

* the runner calls :meth:`LiveFeed.offer` once per new state (cheap: it only marks the
  feed dirty) and builds the update payload only when :meth:`LiveFeed.due` says a send
  is due — at most ``max_rate_hz`` times per second (default 10); a state that arrives
  while the feed waits for its next slot is sent at :meth:`next_deadline`;
* every connected client has its own bounded queue (``queue_len`` updates). A client that
  does not read (a stalled tab, a slow link) loses its *oldest* queued updates, counted in
  :attr:`LiveClient.dropped`; nothing it does blocks the broadcaster or another client.

Sans-IO: time is passed in; the asyncio part (one writer coroutine per client, Server-Sent
Events framing) is :func:`serve_events`, a thin loop over :meth:`LiveClient.get`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Any

__all__ = ["LiveClient", "LiveFeed", "serve_events", "sse_frame"]

#: Server-Sent Events keep-alive comment interval: proxies close idle connections
KEEPALIVE_S = 15.0


def sse_frame(payload: dict[str, Any], *, event: str = "state") -> bytes:
    """One SSE message (``event:`` and one ``data:`` line; JSON has no raw newlines)."""
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class LiveClient:
    """One browser connection: a bounded queue of encoded updates."""

    def __init__(self, queue_len: int) -> None:
        self._q: deque[bytes] = deque(maxlen=queue_len)
        self._ready = asyncio.Event()
        self.sent = 0
        self.dropped = 0  # oldest updates discarded because the client did not keep up
        self.closed = False

    def push(self, data: bytes) -> None:
        if len(self._q) == self._q.maxlen:
            self.dropped += 1  # deque drops the oldest itself
        self._q.append(data)
        self._ready.set()

    async def get(self, timeout: float) -> bytes | None:
        """The next update, or None after ``timeout`` seconds without one."""
        if not self._q:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        if not self._q:
            return None
        self.sent += 1
        return self._q.popleft()


class LiveFeed:
    """Throttle (at most ``max_rate_hz`` updates/s) and fan-out to :class:`LiveClient`."""

    def __init__(self, *, max_rate_hz: float = 10.0, queue_len: int = 8,
                 max_clients: int = 32) -> None:
        if max_rate_hz <= 0:
            raise ValueError("max_rate_hz must be positive")
        self.period = 1.0 / max_rate_hz
        self.queue_len = queue_len
        self.max_clients = max_clients
        self.clients: list[LiveClient] = []
        self._dirty = False
        self._last_sent = -float("inf")
        self.updates = 0  # payloads built and broadcast
        self.offered = 0  # states offered (most are folded into a later update)
        self.refused = 0  # connections refused because max_clients were connected

    # ------------------------------------------------------------------ throttle
    def offer(self, now: float) -> bool:
        """A new state exists; True when an update should be built and sent now."""
        self.offered += 1
        self._dirty = True
        return self.due(now)

    def due(self, now: float) -> bool:
        return self._dirty and bool(self.clients) and now - self._last_sent >= self.period

    def next_deadline(self) -> float | None:
        """When the pending (throttled) update is due; None when nothing waits."""
        if not self._dirty or not self.clients:
            return None
        return self._last_sent + self.period

    def broadcast(self, payload: dict[str, Any], now: float) -> None:
        """Send ``payload`` to every client (call when :meth:`due`)."""
        data = sse_frame(payload)
        for c in self.clients:
            c.push(data)
        self._dirty = False
        self._last_sent = now
        self.updates += 1

    # ------------------------------------------------------------------ clients
    def connect(self) -> LiveClient | None:
        """A new client, or None when ``max_clients`` are connected already."""
        if len(self.clients) >= self.max_clients:
            self.refused += 1
            return None
        c = LiveClient(self.queue_len)
        self.clients.append(c)
        self._dirty = True  # a new client gets the current state at the next slot
        return c

    def disconnect(self, c: LiveClient) -> None:
        c.closed = True
        with contextlib.suppress(ValueError):
            self.clients.remove(c)

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.clients)


async def serve_events(feed: LiveFeed, writer: asyncio.StreamWriter,
                       first: dict[str, Any] | None) -> None:
    """Stream ``feed`` to one HTTP client as ``text/event-stream`` until it goes away.

    ``first`` (the current state, if any) is sent at once so a new page is not blank until
    the next update. A write that cannot drain only holds this coroutine; the client's
    queue keeps dropping its oldest updates meanwhile."""
    client = feed.connect()
    if client is None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 22\r\nConnection: close\r\n\r\ntoo many live clients\n")
        return
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\nretry: 2000\n\n")
    if first is not None:
        client.push(sse_frame(first))
    try:
        while not writer.is_closing():
            data = await client.get(KEEPALIVE_S)
            writer.write(data if data is not None else b": keep-alive\n\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        feed.disconnect(client)
