"""Transports: the I/O edge of the gateway, chosen by URL scheme behind a small Protocol.

Modelled on aiohttp's ``web_runner`` (a *runner* owns the application, a *site* owns one
socket) and nats.py's ``client/connection.py`` (one class per scheme behind a tiny
interface). A transport owns a socket (or a file) and nothing else: it hands each
complete frame to a :data:`FrameSink` as ``(stream, data, peer, now)`` and never decodes
values. Framing is the only protocol knowledge a transport has (fixed-size GTNET-SKT
frames on TCP); the C37.118 transports drive a sans-IO session
(:mod:`gateway.codecs.c37session`) that frames, handshakes and keeps the timers.
Every TCP transport has a read timeout (:attr:`TransportSpec.read_timeout`): a silent or
half-open peer is a ``silent`` event, then a reconnect.

A new transport is one module that defines a class and decorates it with
:func:`register`; :func:`open_transport` picks it by the stream URL's scheme (and, for
C37.118 streams, by ``c37+<scheme>``). Modules listed in :data:`BUILTIN` are imported
lazily the first time their scheme is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.config import url_parts
from gateway.errors import TransportError

MIN_READ_TIMEOUT_S = 2.0
READ_TIMEOUT_PERIODS = 5.0

#: ``sink(stream, data, peer_host, now)``: one complete frame received at ``now``
FrameSink = Callable[[str, bytes, str | None, float], None]
#: ``sink_many(stream, frames, arrivals)``: the frames one read of a datagram socket
#: took, each with its arrival time (a transport that reads in batches calls it instead
#: of :data:`FrameSink` when given one: the receiver then decodes them in one go)
BatchSink = Callable[[str, list[bytes], list[float]], None]
#: ``on_drop(stream, peer_host)``: a frame from a source outside the allowlist
DropSink = Callable[[str, str], None]
#: ``on_event(stream, kind, detail)``: connected, disconnected, reconnect, ...
EventSink = Callable[[str, str, dict[str, object]], None]


@dataclass
class TransportSpec:
    """What a transport needs to know about its stream (built from the config Stream)."""

    name: str
    url: str
    format: str = "gtnet-skt"  # "gtnet-skt" or "c37.118"
    frame_size: int = 0  # GTNET-SKT: fixed frame size (framing on TCP)
    idcode: int = 1  # C37.118: the IDCODE commands are addressed to
    allow: tuple[str, ...] = ("127.0.0.1",)
    rate_hz: float = 50.0
    options: dict[str, float] = field(default_factory=dict)
    #: TCP: no byte for this long means a silent or half-open peer (0: a few periods,
    #: at least 2 s; see :func:`read_timeout`)
    read_timeout_s: float = 0.0

    @property
    def read_timeout(self) -> float:
        """The read/silence timeout in force: the configured one, else a few frame
        periods and never under 2 s."""
        if self.read_timeout_s > 0:
            return self.read_timeout_s
        return max(MIN_READ_TIMEOUT_S, READ_TIMEOUT_PERIODS / self.rate_hz) \
            if self.rate_hz > 0 else MIN_READ_TIMEOUT_S

    @property
    def scheme(self) -> str:
        return url_parts(self.url)[0]

    @property
    def host(self) -> str:
        return url_parts(self.url)[1]

    @property
    def port(self) -> int:
        try:
            return url_parts(self.url)[2]
        except ValueError as exc:
            raise TransportError(f"stream {self.name}: bad port in {self.url!r}") from exc

    @property
    def registry_key(self) -> str:
        return f"c37+{self.scheme}" if self.format == "c37.118" else self.scheme


class Allowlist:
    """Source addresses allowed to feed a stream (IP addresses or networks)."""

    def __init__(self, entries: tuple[str, ...] | list[str]) -> None:
        self._nets = [ipaddress.ip_network(str(e), strict=False) for e in entries]
        self._cache: dict[str, bool] = {}

    def __call__(self, host: str) -> bool:
        ok = self._cache.get(host)
        if ok is None:
            try:
                addr = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                ok = False
            else:
                if addr.version == 6 and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                ok = any(addr in n for n in self._nets)
            if len(self._cache) < 4096:
                self._cache[host] = ok
        return ok


@runtime_checkable
class Transport(Protocol):
    """One stream's socket or file. ``start`` returns once it is listening/connecting."""

    spec: TransportSpec

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def local_address(self) -> tuple[str, int] | None: ...


TransportFactory = Callable[..., Transport]

_REGISTRY: dict[str, type] = {}

#: scheme -> module that registers it (imported on first use)
BUILTIN: dict[str, str] = {
    "udp": "gateway.transports.udp",
    "tcp": "gateway.transports.tcp",
    "file": "gateway.transports.file",
    "c37+tcp": "gateway.transports.c37",
    "c37+udp": "gateway.transports.c37",
    "c37+file": "gateway.transports.file",
    "mqtt": "gateway.transports.mqtt",
    "mqtts": "gateway.transports.mqtt",
}


def register(key: str) -> Callable[[type], type]:
    """Class decorator: make ``key`` (a URL scheme or ``c37+scheme``) open this class."""

    def deco(cls: type) -> type:
        _REGISTRY[key] = cls
        return cls

    return deco


def transport_class(key: str) -> type:
    if key not in _REGISTRY and key in BUILTIN:
        importlib.import_module(BUILTIN[key])
    try:
        return _REGISTRY[key]
    except KeyError:
        known = sorted(set(_REGISTRY) | set(BUILTIN))
        raise TransportError(f"no transport for {key!r}; known: {', '.join(known)}") from None


def open_transport(spec: TransportSpec, sink: FrameSink, *, on_drop: DropSink | None = None,
                   on_event: EventSink | None = None,
                   clock: Callable[[], float] = time.time,
                   sink_many: BatchSink | None = None) -> Transport:
    """The transport for ``spec`` (not started yet: ``await t.start()``); ``sink_many``
    is used by the transports that read in batches (UDP), ``sink`` by the others."""
    cls = transport_class(spec.registry_key)
    t: Transport = cls(spec, sink, on_drop=on_drop, on_event=on_event, clock=clock)
    if sink_many is not None and hasattr(t, "sink_many"):
        t.sink_many = sink_many  # type: ignore[attr-defined]
    return t


def _noop_drop(stream: str, host: str) -> None:
    return None


def _noop_event(stream: str, kind: str, detail: dict[str, object]) -> None:
    return None


class TransportBase:
    """Shared plumbing: spec, sinks, allowlist, clock, and the transport's own task
    (``_task``, cancelled by the default :meth:`close`)."""

    _task: asyncio.Task[None] | None = None

    def __init__(self, spec: TransportSpec, sink: FrameSink, *, on_drop: DropSink | None = None,
                 on_event: EventSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.sink = sink
        self.on_drop = on_drop or _noop_drop
        self.on_event = on_event or _noop_event
        self.clock = clock
        self.allowed = Allowlist(spec.allow)

    @property
    def local_address(self) -> tuple[str, int] | None:
        return None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
