"""IEEE C37.118.2 over TCP and UDP (``format = "c37.118"``): thin I/O around the PDC session.

All protocol decisions (framing a TCP byte stream, asking for CFG-2 and repeating the
request, *turn on transmission* after a configuration, *turn off* on close, noticing a
silent peer) are :class:`gateway.codecs.c37session.C37Session`'s; these classes only move
bytes between a socket and the session, arm its timer, hand every complete frame to the
sink and pass its other events to the event sink (``c37_started``, ``c37_config``,
``c37_config_change``, ``c37_frame_error``, ``c37_resync``, ``silent``, ...).

TCP (``tcp://PMU:4712``): connect, run the session; on disconnect or silence reconnect
with exponential backoff and start the handshake again.

UDP (``udp://HOST:PORT``, the convention of docs/c37-conventions.md): the gateway
listens; the PMU sends CFG-2 and data spontaneously; commands go back to the datagrams'
source (``?pmu=HOST:PORT`` names a commanded PMU to ask from the start). After a silence
the handshake starts again when data comes back.

Decoding values, including the CFG-2 that maps them, is the stream decoder's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import parse_qs, urlsplit

from gateway.codecs.c37session import C37Session, Event, FrameReceived, Silent, Started
from gateway.errors import TransportError
from gateway.transports.base import (
    EventSink,
    FrameSink,
    TransportBase,
    TransportSpec,
    register,
)
from gateway.transports.tcp import StreamClientBase

READ_CHUNK = 65536


class _SessionEvents:
    """Dispatch of session events, shared by both transports."""

    spec: TransportSpec
    sink: FrameSink
    on_event: EventSink
    handshakes = 0

    def _dispatch(self, events: list[Event], host: str | None, now: float) -> Silent | None:
        """Frames to the sink, the rest to the event sink except a silence, which is
        returned: the transport reports it as it reacts to it."""
        name, url = self.spec.name, self.spec.url
        silent = None
        for ev in events:
            if type(ev) is FrameReceived:
                self.sink(name, ev.frame, host, now)
            elif type(ev) is Silent:
                silent = ev
            else:
                if type(ev) is Started:
                    self.handshakes += 1
                self.on_event(name, ev.kind, {"url": url, **ev.detail()})
        return silent


@register("c37+tcp")
class C37TcpTransport(_SessionEvents, StreamClientBase):
    """C37.118 over TCP with the gateway as the client (the PMU/PDC listens)."""

    c37: C37Session | None = None

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str) -> None:
        spec, clock = self.spec, self.clock
        s = self.c37 = C37Session(idcode=spec.idcode, rate_hz=spec.rate_hz, tcp=True,
                                  silence_s=spec.read_timeout)
        s.connection_made(clock())
        try:
            while True:
                await self._send(writer, s)
                due = s.next_deadline()
                wait = None if due is None else max(0.0, due - clock())
                try:
                    async with asyncio.timeout(wait):  # not wait_for (see read_exactly)
                        data = await reader.read(READ_CHUNK)
                except TimeoutError:
                    data = None
                now = clock()
                if data == b"":
                    raise asyncio.IncompleteReadError(b"", None)
                events = s.receive_data(data, now) if data else []
                if any(type(e) is Started for e in events):
                    self.backoff.reset()
                silent = self._dispatch(events + s.tick(now), host, now)
                if silent is not None:
                    raise self.silent(silent.silent_s)
        finally:
            s.connection_lost()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, s: C37Session) -> None:
        out = s.data_to_send()
        if out:
            writer.write(b"".join(out))
            await writer.drain()

    async def close(self) -> None:
        w, s = self._writer, self.c37
        if w is not None and s is not None:
            s.close(self.clock())
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                w.write(b"".join(s.data_to_send()))
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
class C37UdpTransport(_SessionEvents, TransportBase):
    """C37.118 over UDP: the gateway listens on the URL's address (the PMU sends to it,
    spontaneous mode, as GTNET-PMU does); commands go back to the datagrams' source."""

    _transport: asyncio.DatagramTransport | None = None
    _timer: asyncio.TimerHandle | None = None
    _timer_at = float("inf")
    peer: tuple[str, int] | None = None

    async def start(self) -> None:
        spec = self.spec
        self.c37 = C37Session(idcode=spec.idcode, rate_hz=spec.rate_hz, tcp=False,
                              silence_s=spec.read_timeout)
        q = parse_qs(urlsplit(spec.url).query)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProto(self), local_addr=(spec.host, spec.port), family=family)
        except OSError as exc:
            raise TransportError(f"stream {spec.name}: cannot bind {spec.url}: {exc}") from exc
        if "pmu" in q:
            host, _, port = q["pmu"][0].rpartition(":")
            self.peer = (host, int(port))
            self.c37.connection_made(self.clock())
            self._flush()

    def _flush(self) -> None:
        """Send what the session queued (to the last peer; nothing when none is known)
        and arm the timer for its next deadline."""
        out = self.c37.data_to_send()
        if self._transport is not None and self.peer is not None:
            for frame in out:
                with contextlib.suppress(OSError):
                    self._transport.sendto(frame, self.peer)
        due = self.c37.next_deadline()
        if due is not None and due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self.clock()
        silent = self._dispatch(self.c37.tick(now), None, now)
        if silent is not None:  # the handshake starts again when data comes back
            self.on_event(self.spec.name, silent.kind, {"url": self.spec.url,
                                                        **silent.detail()})
        self._flush()

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        host = addr[0]
        if not self.allowed(host):
            self.on_drop(self.spec.name, host)
            return
        now = self.clock()
        self.peer = (host, addr[1])
        self._dispatch(self.c37.receive_data(data, now), host, now)
        self._flush()

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def close(self) -> None:
        await super().close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self.c37.close(self.clock())
            out = self.c37.data_to_send()
            if self.peer is not None:
                for frame in out:
                    with contextlib.suppress(OSError):
                        self._transport.sendto(frame, self.peer)
            self._transport.close()
            self._transport = None
