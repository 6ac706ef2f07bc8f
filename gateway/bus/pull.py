"""A JetStream pull consumer that always has a request waiting at the server.

``PullSubscription.fetch(batch, timeout)`` of the client library asks for messages once
per call: between two calls nothing is asked for, and a call made when the queue is empty
first probes (``no_wait``) and then waits on a second request. At a steady 50 Hz per
feeder that is two round trips and a JSON request per batch, and a snapshot that arrives
between two fetches waits for the next one.

:class:`PullFeed` instead keeps *credit* outstanding: pull requests of ``credit`` messages
that expire after ``expires_s``, renewed before they run out (half the credit used, or
the newest request past half its life). The server pushes each message to the inbox as
soon as it is stored, so a snapshot reaches a worker one hop after the edge published it,
and :meth:`next_batch` returns whatever has arrived (one message or many) the moment the
first one is there. Acknowledgements are plain publishes to the message's reply subject,
written together with the batch's other output (one socket write, no round trip each).

Credit bounds what a consumer holds unacknowledged: a slow worker is not sent more than
``credit`` messages ahead, so messages do not sit in its queue past the ack wait.
Requests lost with a server (a restart, a failover) are replaced within ``expires_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import Any

from gateway.bus.conn import close_step, stop_tasks

__all__ = ["PullFeed", "ack_all", "delivery"]

#: tokens of a JetStream reply subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
#: seq>.<consumer seq>.<time>.<pending>`` (9), or with ``<domain>.<account hash>`` after
#: ``ACK`` and a random token at the end (11 or more)
_V1, _V2 = 9, 11


def delivery(reply: str) -> tuple[int, int]:
    """(times delivered, stream sequence) from a JetStream message's reply subject.

    ``Msg.metadata`` of the client library parses the whole subject into dataclasses and
    a datetime on every access; a worker and the sink need two integers per message.
    ValueError when ``reply`` is not a JetStream reply subject."""
    t = reply.split(".")
    if len(t) >= 2 and t[0] == "$JS" and t[1] == "ACK":
        if len(t) == _V1:
            return int(t[4]), int(t[5])
        if len(t) >= _V2:
            return int(t[6]), int(t[7])
    raise ValueError(f"not a JetStream reply subject: {reply!r}")


async def ack_all(nc: Any, msgs: list[Any]) -> None:
    """Acknowledge JetStream messages ``msgs`` of the connected client ``nc`` in one write.

    ``Msg.ack`` publishes each acknowledgement on its own: subject checks, a future and a
    wake-up of the client's writer per message, thousands a second in a worker or the
    sink. Here the ``PUB <reply> 0`` commands go to the client's outgoing buffer together
    (the client's own command format and buffer, so they leave in order with everything
    else, also across a reconnect, as its publishes do) and the writer is woken once.
    A client without that buffer (another nats-py) acknowledges one by one."""
    if not msgs:
        return
    send = getattr(nc, "_send_command", None)
    flush = getattr(nc, "_flush_pending", None)
    if send is None or flush is None or nc.is_closed or nc.is_draining_pubs:
        for m in msgs:
            await m.ack()
        return
    await send(b"".join([b"PUB " + m.reply.encode() + b" 0\r\n\r\n" for m in msgs]))
    await flush()


class PullFeed:
    """Long-poll pull requests on ``stream``/``durable``; batches as they arrive."""

    def __init__(self, nc: Any, stream: str, durable: str, *, credit: int = 128,
                 expires_s: float = 2.0) -> None:
        self.nc = nc
        self.credit = credit
        self.expires_s = expires_s
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._queue: deque[Any] = deque()
        #: the future :meth:`next_batch` waits on while the queue is empty (one future
        #: and one timer handle per wait: no task, unlike ``wait_for(Event.wait())``)
        self._waiter: asyncio.Future[None] | None = None
        #: outstanding requests: [deadline (monotonic), messages still owed]
        self._requests: deque[list[float]] = deque()
        self._inbox = ""
        self._sub: Any = None
        self._tick: asyncio.Task[None] | None = None
        self.requests_sent = 0

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        await self._top_up()
        self._tick = asyncio.create_task(self._ticker(), name="pull-feed-ticker")

    async def close(self) -> bool:
        """Stop asking for messages and unsubscribe, bounded (each step at most
        :data:`~gateway.bus.conn.CLOSE_TIMEOUT_S`); False when a step did not end."""
        ok = not await stop_tasks([self._tick], "pull feed close")
        if self._sub is not None:
            ok = await close_step(self._sub.unsubscribe(), "pull feed close: unsubscribe") \
                and ok
        return ok

    async def _on_msg(self, m: Any) -> None:
        status = m.headers.get("Status") if m.headers else None
        if status is not None:  # 100 heartbeat; 408 a request expired; 409 one ended
            if status not in ("100", "408") and self._requests:
                self._requests.popleft()
            await self._top_up()  # an expired request leaves by its deadline
            return
        for r in self._requests:  # the server fills a client's requests in order
            if r[1] > 0:
                r[1] -= 1
                break
        self._queue.append(m)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_batch(self, most: int, timeout: float, linger_s: float = 0.0) -> list[Any]:
        """Up to ``most`` messages, as soon as at least one is there (or, with
        ``linger_s``, that much later unless ``most`` came first: fewer, larger batches
        for a consumer that is not latency-bound); [] after ``timeout`` s without any."""
        if not self._queue:
            loop = asyncio.get_running_loop()
            w = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, w)
            try:
                await w
            finally:
                timer.cancel()
                self._waiter = None
        q = self._queue
        if q and linger_s > 0 and len(q) < most:
            await asyncio.sleep(linger_s)
        out = [q.popleft() for _ in range(min(most, len(q)))]
        await self._top_up()
        return out

    async def _top_up(self) -> None:
        """Ask for more when less than half the credit is owed, or when the newest
        request is past half its life (it would expire with nothing behind it)."""
        now = time.monotonic()
        reqs = self._requests
        while reqs and reqs[0][0] <= now:
            reqs.popleft()
        owed = sum(r[1] for r in reqs) + len(self._queue)
        fresh = bool(reqs) and reqs[-1][0] - now > self.expires_s / 2
        if owed >= self.credit / 2 and fresh:
            return
        n = max(1, self.credit - int(owed))
        body = json.dumps({"batch": n, "expires": int(self.expires_s * 1e9)}).encode()
        with contextlib.suppress(Exception):  # disconnected: the ticker asks again
            await self.nc.publish(self._next, body, reply=self._inbox)
            reqs.append([now + self.expires_s, float(n)])
            self.requests_sent += 1

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.expires_s / 4)
            await self._top_up()


def _wake(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)
