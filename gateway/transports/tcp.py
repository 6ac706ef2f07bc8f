"""``tcp://HOST:PORT``: GTNET-SKT over TCP with the gateway as the client.

The GTNET-SKT card is the TCP *server* in its TCP mode, so the gateway connects to it,
reads fixed-size frames (the point list's size) and reconnects with exponential backoff
(0.1 s doubling to 5 s, reset after a successful frame) when the connection drops. The
peer address is checked against the allowlist once per connection.

Liveness: a read that brings nothing for the spec's read timeout (a silent card, a
half-open connection after a cable pull or a peer that froze) is a ``silent`` event and
a :class:`SilentPeer` error, so the connection is dropped and made again like any other
failure; TCP itself would wait for hours before noticing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib

from gateway.errors import TransportError
from gateway.transports.base import TransportBase, register

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
CONNECT_TIMEOUT_S = 3.0


class Backoff:
    """Exponential backoff delays: start, doubling, capped; ``reset`` after success."""

    def __init__(self, start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S) -> None:
        self.start = start
        self.cap = cap
        self.delay = start

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return d

    def reset(self) -> None:
        self.delay = self.start


class SilentPeer(TransportError):
    """Nothing arrived within the read timeout: the peer is silent or the connection
    half-open."""


class StreamClientBase(TransportBase, abc.ABC):
    """A reconnecting TCP client; subclasses implement :meth:`session`."""

    _writer: asyncio.StreamWriter | None = None
    connected = False
    connects = 0
    failures = 0  # sessions ended by an error (disconnect, silence, lost framing)
    silences = 0  # of which by the read timeout

    async def start(self) -> None:
        if self.spec.port == 0:
            raise TransportError(f"stream {self.spec.name}: {self.spec.url} needs a port")
        self.backoff = Backoff(float(self.spec.options.get("backoff_start_s", BACKOFF_START_S)),
                               float(self.spec.options.get("backoff_max_s", BACKOFF_MAX_S)))
        self._task = asyncio.create_task(self._run(), name=f"tcp-{self.spec.name}")

    async def _run(self) -> None:
        spec = self.spec
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
            except (OSError, TimeoutError) as exc:
                delay = self.backoff.next()
                self.on_event(spec.name, "connect_failed", {"url": spec.url, "error": str(exc),
                                                             "retry_s": delay})
                await asyncio.sleep(delay)
                continue
            peer = writer.get_extra_info("peername")
            host = str(peer[0]) if peer else ""
            if not self.allowed(host):
                self.on_drop(spec.name, host)
                writer.close()
                await asyncio.sleep(self.backoff.next())
                continue
            self._writer = writer
            self.connected = True
            self.connects += 1
            self.on_event(spec.name, "connected", {"url": spec.url, "peer": host})
            try:
                await self.session(reader, writer, host)
            except (OSError, asyncio.IncompleteReadError, TransportError) as exc:
                self.failures += 1
                self.on_event(spec.name, "disconnected", {"url": spec.url, "error": str(exc)})
            finally:
                self.connected = False
                self._writer = None
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(self.backoff.next())

    def silent(self, silent_s: float) -> SilentPeer:
        """Report a silent peer (event) and return the error that ends the session."""
        spec = self.spec
        self.silences += 1
        self.on_event(spec.name, "silent", {"url": spec.url, "silent_s": round(silent_s, 3),
                                            "timeout_s": spec.read_timeout})
        return SilentPeer(f"stream {spec.name}: nothing received for {silent_s:.1f} s "
                          f"(read timeout {spec.read_timeout:g} s)")

    async def read_exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        """``readexactly`` bounded by the read timeout (:meth:`silent` when it expires)."""
        timeout = self.spec.read_timeout
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the task's
            # cancellation when the read completes at the same moment (close() would hang)
            async with asyncio.timeout(timeout):
                return await reader.readexactly(n)
        except TimeoutError:
            raise self.silent(timeout) from None

    @abc.abstractmethod
    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str) -> None:
        """Talk to the connected peer until the connection fails (raise) or is cancelled."""

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._writer is None:
            return None
        host, port = self._writer.get_extra_info("sockname")[:2]
        return str(host), int(port)


@register("tcp")
class TcpSktTransport(StreamClientBase):
    """Fixed-size GTNET-SKT frames on a TCP connection to the card."""

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str) -> None:
        size = self.spec.frame_size
        if size <= 0:
            raise TransportError(f"stream {self.spec.name}: TCP framing needs the frame size")
        name, sink, clock = self.spec.name, self.sink, self.clock
        first = True
        while True:
            data = await self.read_exactly(reader, size)
            sink(name, data, host, clock())
            if first:
                self.backoff.reset()
                first = False
