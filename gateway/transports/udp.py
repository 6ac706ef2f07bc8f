"""``udp://HOST:PORT``: the gateway listens; every datagram is one frame.

Each readiness callback drains the socket: it reads datagrams with ``recvfrom`` in a loop
(no protocol object, no awaiting ``recv`` wrapper such as asyncio-dgram) until the socket
is empty or :data:`BURST` were read, then yields so the other streams' sockets are read in
turn. A wake-up of the event loop costs more than reading a datagram, so under load one
wake-up takes many frames; the cap keeps a backlog worked off in step across streams.
With a batch sink (``sink_many``, what the gateway gives) the wake-up's datagrams go on
in one call, each with its own arrival time, so the receiver decodes and aligns them in
one go; without one, each datagram goes to ``sink`` as it is read.
The receive buffer is enlarged so bursts do not overflow it. Datagrams from sources
outside the stream's allowlist are dropped and counted.
"""

from __future__ import annotations

import asyncio
import socket

from gateway.errors import TransportError
from gateway.transports.base import BatchSink, TransportBase, register

RCVBUF_BYTES = 8 * 1024 * 1024
MAX_DATAGRAM = 65535
#: datagrams read per wake-up at most before yielding to the other streams. A snapshot
#: needs one frame of every stream; the streams' callbacks all run in the same turn of
#: the loop, so a slot opened by one stream's burst is completed by the others' in that
#: turn, as long as a burst stays well below the aligner's pending-slot limit (64), past
#: which the oldest slot would be published incomplete
BURST = 32


@register("udp")
class UdpTransport(TransportBase):
    sock: socket.socket | None = None
    #: the batch sink (see the module docstring); None: one ``sink`` call per datagram
    sink_many: BatchSink | None = None

    async def start(self) -> None:
        spec = self.spec
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((spec.host, spec.port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"stream {spec.name}: cannot bind {spec.url}: {exc}") from exc
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.on_event(spec.name, "listening", {"url": spec.url, "port": self.local_address[1]
                                               if self.local_address else 0})

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        recv = sock.recvfrom
        name = self.spec.name
        allowed = self.allowed
        clock = self.clock
        many = self.sink_many
        frames: list[bytes] = []
        nows: list[float] = []
        ok_host = None  # the last source allowed: most bursts come from one sender
        for _ in range(BURST):
            try:
                data, addr = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. ICMP port unreachable echoes; keep listening
                break
            host = addr[0]
            if host != ok_host:
                if not allowed(host):
                    self.on_drop(name, host)
                    continue
                ok_host = host
            if many is None:
                self.sink(name, data, host, clock())  # a closed socket raises OSError next
            else:
                frames.append(data)
                nows.append(clock())
        if frames and many is not None:
            many(name, frames, nows)

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self.sock is None:
            return None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
