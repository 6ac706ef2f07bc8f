"""Liveness of the TCP transports on real loopback sockets: a peer that stops sending while
its connection stays open (silent, or half-open after a cable pull) is noticed by the
read timeout, reported as a ``silent`` event, and the transport reconnects."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import load_config
from gateway.transports.base import TransportSpec, open_transport
from hil.c37server import C37Stream, PmuSession

DEADLINE_S = 30.0  # each wait's own deadline (a condition, not a measured duration)
READ_TIMEOUT_S = 2.0  # generous: the burst before the silence must never look silent


class Log:
    """Frames and events in arrival order; ``wake`` is set on each entry."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, object]] = []
        self.wake = asyncio.Event()

    def frame(self, stream: str, data: bytes, host: str | None, now: float) -> None:
        self.entries.append(("frame", data))
        self.wake.set()

    def event(self, stream: str, kind: str, detail: dict[str, object]) -> None:
        self.entries.append((kind, detail))
        self.wake.set()

    def drop(self, stream: str, host: str) -> None:
        self.entries.append(("drop", host))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.entries]

    async def until(self, cond: str, check) -> None:  # type: ignore[no-untyped-def]
        async def loop() -> None:
            while not check(self):
                self.wake.clear()
                await self.wake.wait()

        try:
            await asyncio.wait_for(loop(), DEADLINE_S)
        except TimeoutError:
            pytest.fail(f"not reached within {DEADLINE_S} s: {cond}; log: {self.kinds()}")


async def test_silent_c37_pmu_on_an_open_connection_is_noticed_and_reconnected() -> None:
    stream = load_config("ieee33").stream("pmu-c37")
    src = C37Stream(stream, 50.0)
    n = len(load_config("ieee33").channels)
    sessions: list[PmuSession] = []
    eof = asyncio.Event()

    async def pmu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        s = PmuSession(src)
        sessions.append(s)
        first = len(sessions) == 1
        while chunk := await reader.read(65536):
            for reply in s.receive(chunk, 0.0):
                writer.write(reply)
            if s.streaming:  # START: a burst of data, then (first connection) silence
                writer.write(b"".join(src.data_frame(np.ones(n), 1e6 + k / 50)
                                      for k in range(3)))
                if first:
                    s.go_silent()  # connection open, nothing sent or answered any more
            await writer.drain()
        if first:
            eof.set()  # the gateway hung up on the silent PMU
        writer.close()

    server = await asyncio.start_server(pmu, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = Log()
    spec = TransportSpec("pmu", f"tcp://127.0.0.1:{port}", format="c37.118",
                         idcode=stream.idcode, rate_hz=50.0, read_timeout_s=READ_TIMEOUT_S,
                         options={"backoff_start_s": 0.01})
    t = open_transport(spec, log.frame, on_drop=log.drop, on_event=log.event)
    await t.start()
    try:
        await log.until("a second handshake after the silence",
                        lambda lg: lg.kinds().count("c37_started") >= 2)
        await asyncio.wait_for(eof.wait(), DEADLINE_S)
    finally:
        await t.close()
        server.close()
        await server.wait_closed()
    kinds = log.kinds()
    i_silent = kinds.index("silent")
    # the whole burst came in before the silence was declared, then the connection was
    # dropped and made again with a new handshake
    assert kinds[:i_silent].count("frame") == 4  # CFG-2 + 3 data frames
    assert kinds[i_silent + 1] == "disconnected"
    assert kinds[i_silent:].count("connected") == 1
    detail = log.entries[i_silent][1]
    assert isinstance(detail, dict) and detail["timeout_s"] == READ_TIMEOUT_S
    assert "read timeout" in str(log.entries[i_silent + 1][1]["error"])  # type: ignore[index]
    assert sessions[0].commands == {"cfg2": 1, "start": 1}
    assert sessions[1].commands["cfg2"] >= 1 and sessions[1].commands["start"] == 1


async def test_silent_gtnet_skt_card_is_noticed_and_reconnected() -> None:
    codec = GtnetSktCodec(["float32", "int32"], header=True)
    frames = [codec.build([float(i), i], seq=i, ts=1000.0 + i) for i in range(6)]
    conns = 0

    async def card(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        writer.write(b"".join(frames[:3] if conns == 1 else frames[3:]))
        await writer.drain()
        await reader.read()  # then silent with the connection open, until the client goes
        writer.close()

    server = await asyncio.start_server(card, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = Log()
    spec = TransportSpec("skt", f"tcp://127.0.0.1:{port}", frame_size=codec.size,
                         read_timeout_s=READ_TIMEOUT_S, options={"backoff_start_s": 0.01})
    t = open_transport(spec, log.frame, on_drop=log.drop, on_event=log.event)
    await t.start()
    try:
        await log.until("six frames over two connections",
                        lambda lg: lg.kinds().count("frame") >= 6)
    finally:
        await t.close()
        server.close()
        await server.wait_closed()
    kinds = log.kinds()
    got = [d for k, d in log.entries if k == "frame"]
    assert got[:6] == frames
    # connected, 3 frames, silent, disconnected, connected, 3 frames
    assert kinds[:8] == ["connected", "frame", "frame", "frame", "silent", "disconnected",
                         "connected", "frame"]
    assert conns >= 2


def test_read_timeout_config_key() -> None:
    """``streams[].read_timeout_s``: default 0 (a few periods, at least 2 s), set per
    stream, a negative value refused naming the key."""
    from gateway.config import parse_config, resolve
    from gateway.errors import ConfigError

    text, _ = resolve("ieee33")
    old = 'url = "tcp://127.0.0.1:4712"'
    assert old in text
    assert parse_config(text).stream("pmu-c37").read_timeout_s == 0.0
    cfg = parse_config(text.replace(old, old + "\nread_timeout_s = 0.25"))
    s = cfg.stream("pmu-c37")
    assert s.read_timeout_s == 0.25
    spec = TransportSpec(s.name, s.url, s.format, rate_hz=s.rate_hz,
                         read_timeout_s=s.read_timeout_s)
    assert spec.read_timeout == 0.25
    assert TransportSpec("x", s.url, rate_hz=50.0).read_timeout == 2.0
    assert TransportSpec("x", s.url, rate_hz=0.5).read_timeout == 10.0  # 5 periods
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace(old, old + "\nread_timeout_s = -1"))
    assert "streams[3] (pmu-c37).read_timeout_s" in [p.key for p in info.value.problems]
