"""IEEE C37.118.2 over TCP and UDP (``format = "c37.118"``): the PDC side of the handshake.

TCP (``tcp://PMU:4712``): connect, send *send CFG-2*, wait for the CFG-2 frame, send
*turn on transmission*, then read frames framed by their FRAMESIZE word (bytes 2..3);
on disconnect reconnect with exponential backoff and repeat the handshake. On close the
transport sends *turn off transmission*.

UDP (``udp://HOST:PORT``, the convention of docs/c37-conventions.md): the gateway
listens; the PMU sends CFG-2 and data spontaneously; commands go back to the datagrams'
source (CFG-2 when data arrives before any configuration, START after a configuration,
STOP on close); the request is repeated every :data:`CFG_RETRY_S` and the handshake
restarts when data stops for :data:`SILENCE_S`.

Every received frame (configuration and data) goes to the sink: decoding, including the
CFG-2 that builds the data decoder, is the codec's job, not the transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from urllib.parse import parse_qs, urlsplit

from gateway.codecs.c37118 import (
    CMD_CFG2,
    CMD_START,
    CMD_STOP,
    FRAME_CFG2,
    FRAME_CFG3,
    command,
    frame_type_of,
)
from gateway.errors import TransportError
from gateway.transports.base import TransportBase, register
from gateway.transports.tcp import StreamClientBase

_SIZE = struct.Struct(">H")
SILENCE_S = 5.0
CFG_RETRY_S = 1.0


@register("c37+tcp")
class C37TcpTransport(StreamClientBase):
    handshakes = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str) -> None:
        spec, sink, clock = self.spec, self.sink, self.clock
        writer.write(command(spec.idcode, CMD_CFG2, now=clock()))
        await writer.drain()
        started = False
        while True:
            head = await reader.readexactly(4)
            if head[0] != 0xAA:
                raise TransportError(f"stream {spec.name}: lost C37.118 framing "
                                     f"(byte 0x{head[0]:02X}, expected SYNC 0xAA)")
            (size,) = _SIZE.unpack_from(head, 2)
            if size < 16:
                raise TransportError(f"stream {spec.name}: FRAMESIZE {size} too small")
            data = head + await reader.readexactly(size - 4)
            sink(spec.name, data, host, clock())
            if not started and frame_type_of(data) in (FRAME_CFG2, FRAME_CFG3):
                writer.write(command(spec.idcode, CMD_START, now=clock()))
                await writer.drain()
                started = True
                self.handshakes += 1
                self.backoff.reset()
                self.on_event(spec.name, "c37_started", {"url": spec.url})

    async def close(self) -> None:
        w = self._writer
        if w is not None:
            with contextlib.suppress(OSError, RuntimeError):
                w.write(command(self.spec.idcode, CMD_STOP, now=self.clock()))
                await asyncio.wait_for(w.drain(), 0.5)
        await super().close()


class _UdpProto(asyncio.DatagramProtocol):
    def __init__(self, owner: C37UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.on_event(self.owner.spec.name, "udp_error", {"error": str(exc)})


@register("c37+udp")
class C37UdpTransport(TransportBase):
    """C37.118 over UDP: the gateway listens on the URL's address (the PMU sends to it,
    spontaneous mode, as GTNET-PMU does); commands go back to the datagrams' source.

    A data frame before any configuration makes the transport ask for CFG-2 (at most
    once per :data:`CFG_RETRY_S`), a configuration is answered with *turn on
    transmission*; ``?pmu=HOST:PORT`` names a commanded PMU to ask from the start.
    """

    _transport: asyncio.DatagramTransport | None = None
    have_cfg = False
    last_rx = 0.0
    last_ask = -1e9
    handshakes = 0
    peer: tuple[str, int] | None = None

    async def start(self) -> None:
        spec = self.spec
        q = parse_qs(urlsplit(spec.url).query)
        if "pmu" in q:
            host, _, port = q["pmu"][0].rpartition(":")
            self.peer = (host, int(port))
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProto(self), local_addr=(spec.host, spec.port), family=family)
        except OSError as exc:
            raise TransportError(f"stream {spec.name}: cannot bind {spec.url}: {exc}") from exc
        self._task = asyncio.create_task(self._watch(), name=f"c37udp-{spec.name}")

    def _send(self, cmd: int, addr: tuple[str, int] | None) -> None:
        if self._transport is not None and addr is not None:
            self._transport.sendto(command(self.spec.idcode, cmd, now=self.clock()), addr)

    def _ask_cfg(self, addr: tuple[str, int] | None) -> None:
        now = self.clock()
        if now - self.last_ask >= CFG_RETRY_S:
            self.last_ask = now
            self._send(CMD_CFG2, addr)

    async def _watch(self) -> None:
        while True:
            if not self.have_cfg:
                self._ask_cfg(self.peer)
            elif self.clock() - self.last_rx > SILENCE_S:
                self.have_cfg = False  # ask again when data comes back
                self.on_event(self.spec.name, "c37_silent", {"url": self.spec.url})
            await asyncio.sleep(CFG_RETRY_S)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        host = addr[0]
        if not self.allowed(host):
            self.on_drop(self.spec.name, host)
            return
        now = self.clock()
        self.last_rx = now
        self.peer = (host, addr[1])
        self.sink(self.spec.name, data, host, now)
        if len(data) < 2:
            return
        ftype = frame_type_of(data)
        if ftype in (FRAME_CFG2, FRAME_CFG3):
            if not self.have_cfg:
                self.have_cfg = True
                self.handshakes += 1
                self._send(CMD_START, self.peer)
                self.on_event(self.spec.name, "c37_started", {"url": self.spec.url})
        elif not self.have_cfg:
            self._ask_cfg(self.peer)

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def close(self) -> None:
        await super().close()  # the watchdog task first, then STOP and the socket
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._send(CMD_STOP, self.peer)
            self._transport.close()
            self._transport = None
