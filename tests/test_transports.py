"""Transports on real loopback sockets (port 0): UDP, GTNET-SKT over TCP, C37.118 over TCP
and UDP (command handshake), file replay (raw frames, pcap), allowlists, the registry."""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest

from gateway.codecs import c37118 as c37
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.errors import TransportError
from gateway.transports.base import Allowlist, TransportSpec, open_transport, transport_class
from gateway.transports.file import read_pcap, write_pcap
from gateway.transports.tcp import Backoff


class Sink:
    def __init__(self, want: int) -> None:
        self.frames: list[tuple[str, bytes, str | None, float]] = []
        self.drops: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, dict[str, object]]] = []
        self.want = want
        self.done = asyncio.Event()

    def __call__(self, stream: str, data: bytes, host: str | None, now: float) -> None:
        self.frames.append((stream, data, host, now))
        if len(self.frames) >= self.want:
            self.done.set()

    def drop(self, stream: str, host: str) -> None:
        self.drops.append((stream, host))

    def event(self, stream: str, kind: str, detail: dict[str, object]) -> None:
        self.events.append((stream, kind, detail))


def open_with(spec: TransportSpec, sink: Sink):  # type: ignore[no-untyped-def]
    return open_transport(spec, sink, on_drop=sink.drop, on_event=sink.event)


async def test_udp_receives_and_enforces_allowlist() -> None:
    sink = Sink(5)
    t = open_with(TransportSpec("s", "udp://127.0.0.1:0", allow=("127.0.0.1",)), sink)
    await t.start()
    port = t.local_address[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))  # a loopback source outside the allowlist
    try:
        for i in range(5):
            other.sendto(b"x%d" % i, ("127.0.0.1", port))
            tx.sendto(b"frame%d" % i, ("127.0.0.1", port))
        await asyncio.wait_for(sink.done.wait(), 5)
    finally:
        tx.close()
        other.close()
        await t.close()
    assert [f[1] for f in sink.frames] == [b"frame%d" % i for i in range(5)]
    assert all(f[2] == "127.0.0.1" for f in sink.frames)
    assert len(sink.drops) == 5 and sink.drops[0] == ("s", "127.0.0.2")


async def test_udp_batch_sink_gets_every_allowed_datagram_in_order() -> None:
    """With a batch sink the transport hands over what each wake-up read: every allowed
    datagram once, in order, each with its own arrival time, never more than BURST at
    a time; sources outside the allowlist are dropped as with the one-frame sink."""
    from gateway.transports.udp import BURST

    sink = Sink(0)
    got: list[tuple[str, list[bytes], list[float]]] = []
    n = 3 * BURST + 5
    done = asyncio.Event()

    def many(stream: str, frames: list[bytes], nows: list[float]) -> None:
        got.append((stream, list(frames), list(nows)))
        if sum(len(f) for _, f, _ in got) >= n:
            done.set()

    t = open_transport(TransportSpec("s", "udp://127.0.0.1:0", allow=("127.0.0.1",)), sink,
                       on_drop=sink.drop, on_event=sink.event, sink_many=many)
    await t.start()
    addr = t.local_address
    assert addr is not None
    port = addr[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.2", 0))
    try:
        for i in range(n):  # sent before the loop reads: wake-ups find many queued
            tx.sendto(b"frame%d" % i, ("127.0.0.1", port))
            if i % 10 == 0:
                other.sendto(b"x", ("127.0.0.1", port))
        await asyncio.wait_for(done.wait(), 5)
    finally:
        tx.close()
        other.close()
        await t.close()
    assert sink.frames == []  # nothing went to the one-frame sink
    assert [d for _, f, _ in got for d in f] == [b"frame%d" % i for i in range(n)]
    assert all(s == "s" and 0 < len(f) <= BURST and len(f) == len(t_) for s, f, t_ in got)
    assert any(len(f) > 1 for _, f, _ in got)  # a wake-up took several
    nows = [x for _, _, t_ in got for x in t_]
    assert nows == sorted(nows)
    assert len(sink.drops) == len(range(0, n, 10))


async def test_udp_bind_error_is_a_transport_error() -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        t = open_with(TransportSpec("s", f"udp://127.0.0.1:{port}"), Sink(1))
        with pytest.raises(TransportError, match="cannot bind"):
            await t.start()
    finally:
        blocker.close()


async def test_tcp_skt_client_frames_and_reconnects() -> None:
    codec = GtnetSktCodec(["float32", "float32", "int32"], header=True)
    frames = [codec.build([1.0 * i, 2.0, i], seq=i, ts=1000.0 + i) for i in range(6)]
    conns = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        chunk = frames[:3] if conns == 1 else frames[3:]
        data = b"".join(chunk)
        # split across writes so the client must reassemble fixed-size frames
        writer.write(data[:7])
        await writer.drain()
        writer.write(data[7:])
        await writer.drain()
        writer.close()  # the card drops the connection; the gateway reconnects

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink(6)
    spec = TransportSpec("skt", f"tcp://127.0.0.1:{port}", frame_size=codec.size,
                         options={"backoff_start_s": 0.01})
    t = open_with(spec, sink)
    await t.start()
    try:
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        await t.close()
        server.close()
        await server.wait_closed()
    assert [f[1] for f in sink.frames] == frames
    assert conns >= 2
    kinds = [e[1] for e in sink.events]
    assert kinds.count("connected") >= 2 and "disconnected" in kinds


def _pmu_config() -> c37.ConfigFrame:
    return c37.make_config(7, [("PMU1", 7, ["VA", "IA"])], data_rate=50)


def _data(cfg: c37.ConfigFrame, k: int) -> bytes:
    soc, frac = c37.split_time(1_000_000.0 + k / 50, cfg.time_base)
    f = c37.DataFrame(7, soc, frac, np.zeros(1, np.uint16),
                      np.array([7000 + k + 0j, 100 * np.exp(0.5j)]), np.array([50.0]),
                      np.zeros(1), np.zeros(0), np.zeros(0, np.uint16))
    return f.build(cfg)


async def test_c37_tcp_handshake_and_framing() -> None:
    cfg = _pmu_config()
    commands: list[int] = []

    async def pmu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = struct.unpack_from(">H", head, 2)
                frame = c37.parse(head + await reader.readexactly(size - 4), 0.0)
                assert isinstance(frame, c37.CommandFrame)
                commands.append(frame.cmd)
                if frame.cmd == c37.CMD_CFG2:
                    writer.write(cfg.build())
                elif frame.cmd == c37.CMD_START:
                    writer.write(b"".join(_data(cfg, k) for k in range(4)))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(pmu, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink(5)  # CFG-2 + 4 data frames
    t = open_with(TransportSpec("pmu", f"tcp://127.0.0.1:{port}", format="c37.118",
                                idcode=7), sink)
    await t.start()
    try:
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        await t.close()
        server.close()
        await server.wait_closed()
    assert commands[:2] == [c37.CMD_CFG2, c37.CMD_START]
    types = [c37.frame_type_of(f[1]) for f in sink.frames]
    assert types == [c37.FRAME_CFG2] + [c37.FRAME_DATA] * 4
    got = c37.parse(sink.frames[1][1], 0.0, c37.parse(sink.frames[0][1], 0.0))
    assert abs(got.phasors[0]) == pytest.approx(7000.0)


async def test_c37_udp_listens_asks_for_config_and_starts() -> None:
    cfg = _pmu_config()
    loop = asyncio.get_running_loop()
    commands: list[int] = []
    stopped = asyncio.Event()  # the PMU received a STOP
    sink = Sink(4)  # 1 data frame before the config, the CFG-2, 2 data frames
    t = open_with(TransportSpec("pmu", "udp://127.0.0.1:0", format="c37.118", idcode=7),
                  sink)
    await t.start()
    gw_addr = ("127.0.0.1", t.local_address[1])

    class Pmu(asyncio.DatagramProtocol):  # spontaneous PMU: data first, then answers
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.t = transport
            transport.sendto(_data(cfg, 0), gw_addr)

        def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
            frame = c37.parse(data, 0.0)
            commands.append(frame.cmd)
            if frame.cmd == c37.CMD_STOP:
                stopped.set()
            if frame.cmd == c37.CMD_CFG2:
                self.t.sendto(cfg.build(), addr)
            elif frame.cmd == c37.CMD_START:
                for k in range(1, 3):
                    self.t.sendto(_data(cfg, k), addr)

    tr, _ = await loop.create_datagram_endpoint(Pmu, local_addr=("127.0.0.1", 0))
    try:
        await asyncio.wait_for(sink.done.wait(), 10)
    finally:
        await t.close()
    try:
        await asyncio.wait_for(stopped.wait(), 10)  # close() tells the PMU to stop
    finally:
        tr.close()
    assert commands[:2] == [c37.CMD_CFG2, c37.CMD_START]
    assert commands[-1] == c37.CMD_STOP and commands.count(c37.CMD_STOP) == 1
    types = [c37.frame_type_of(f[1]) for f in sink.frames]
    assert types == [c37.FRAME_DATA, c37.FRAME_CFG2, c37.FRAME_DATA, c37.FRAME_DATA]


async def test_file_replay_raw_frames(tmp_path) -> None:  # type: ignore[no-untyped-def]
    codec = GtnetSktCodec(["float32"] * 2, header=True)
    frames = [codec.build([i, -i], seq=i, ts=10.0 + i) for i in range(20)]
    path = tmp_path / "cap.bin"
    path.write_bytes(b"".join(frames))
    sink = Sink(20)
    t = open_with(TransportSpec("s", f"file://{path}?speed=0", frame_size=codec.size), sink)
    await t.start()
    try:
        await asyncio.wait_for(t.done.wait(), 10)  # type: ignore[attr-defined]
    finally:
        await t.close()
    assert [f[1] for f in sink.frames] == frames
    assert any(e[1] == "replay_done" for e in sink.events)


async def test_file_replay_pcap_with_allowlist_and_port_filter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pkts = [(100.0 + i * 0.001, "127.0.0.1" if i % 2 == 0 else "10.9.9.9", "127.0.0.1",
             5000, 7100 if i < 8 else 7200, b"p%d" % i) for i in range(10)]
    path = tmp_path / "cap.pcap"
    write_pcap(path, pkts)
    assert [p[2] for p in read_pcap(path.read_bytes(), 7100)] == [b"p%d" % i for i in range(8)]
    sink = Sink(4)
    t = open_with(TransportSpec("s", f"file://{path}?port=7100&speed=0",
                                allow=("127.0.0.0/8",)), sink)
    await t.start()
    try:
        await asyncio.wait_for(t.done.wait(), 10)  # type: ignore[attr-defined]
    finally:
        await t.close()
    assert [f[1] for f in sink.frames] == [b"p0", b"p2", b"p4", b"p6"]
    assert len(sink.drops) == 4 and sink.drops[0][1] == "10.9.9.9"


def test_registry_and_allowlist() -> None:
    with pytest.raises(TransportError, match="no transport for 'sctp'"):
        transport_class("sctp")
    assert transport_class("udp").__name__ == "UdpTransport"
    assert transport_class("c37+tcp").__name__ == "C37TcpTransport"
    allow = Allowlist(["192.168.1.0/24", "127.0.0.1"])
    assert allow("192.168.1.77") and allow("127.0.0.1") and allow("::ffff:127.0.0.1")
    assert not allow("127.0.0.2") and not allow("not-an-ip")
    b = Backoff(0.1, 0.5)
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next() == 0.1


def test_c37_decoder_maps_phasors_to_channels() -> None:
    from gateway.codecs.decoders import C37Decoder
    from gateway.config import load_config

    cfg = load_config("ieee33")
    stream = cfg.stream("pmu-c37")
    dec = C37Decoder(stream)
    pmus = [(p.station, p.idcode, [ph.name for ph in p.phasors]) for p in stream.pmus]
    ccfg = c37.make_config(stream.idcode, pmus, data_rate=50)
    for p, conf in zip(ccfg.pmus, stream.pmus, strict=True):  # PHUNIT: 0 voltage, 1 current
        p.phunit = [(1 if ph.kind == "i" else 0, 1) for ph in conf.phasors]
    with pytest.raises(Exception, match="before the configuration"):
        dec.decode(b"\xaa\x01" + bytes(20), 0.0)
    assert dec.decode(ccfg.build(), 0.0) is None
    n = dec.n_phasors
    mags = np.arange(1, n + 1) * 1000.0
    angs = np.linspace(-0.5, 0.5, n)
    soc, frac = c37.split_time(2_000_000.0, ccfg.time_base)
    f = c37.DataFrame(stream.idcode, soc, frac, np.zeros(len(pmus), np.uint16),
                      mags * np.exp(1j * angs), np.full(len(pmus), 50.0),
                      np.zeros(len(pmus)), np.zeros(0), np.zeros(0, np.uint16))
    _seq, ts, values = dec.decode(f.build(ccfg), 1.0)  # type: ignore[misc]
    assert ts == pytest.approx(2_000_000.0)
    # per-phase volts -> line-to-line kV; amperes -> kA (C37.118.1 per-phase RMS phasors)
    kinds = [ph.kind for p in stream.pmus for ph in p.phasors]
    want = np.where(np.array(kinds) == "v", mags * np.sqrt(3.0), mags) / 1000.0
    assert "v" in kinds and "i" in kinds
    np.testing.assert_allclose(values[0::2], want, rtol=1e-6)
    np.testing.assert_allclose(values[1::2], angs, atol=1e-6)
    assert dec.layout.channels.size == 2 * n


async def test_c37_udp_silence_then_handshake_again() -> None:
    """A UDP PMU that stops is a ``silent`` event after the read timeout; when its data
    comes back the transport asks for CFG-2 and starts it again."""
    cfg = _pmu_config()
    loop = asyncio.get_running_loop()
    commands: list[int] = []
    sink = Sink(1)
    silent = asyncio.Event()
    restarted = asyncio.Event()

    def event(stream: str, kind: str, detail: dict[str, object]) -> None:
        sink.event(stream, kind, detail)
        if kind == "silent":
            silent.set()

    t = open_transport(TransportSpec("pmu", "udp://127.0.0.1:0", format="c37.118",
                                     idcode=7, read_timeout_s=1.0), sink, on_event=event)
    await t.start()
    bound = t.local_address
    assert bound is not None
    gw_addr = ("127.0.0.1", bound[1])

    class Pmu(asyncio.DatagramProtocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.t = transport
            transport.sendto(cfg.build(), gw_addr)  # spontaneous CFG-2 first

        def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
            frame = c37.parse(data, 0.0)
            commands.append(frame.cmd)
            if frame.cmd == c37.CMD_CFG2:
                self.t.sendto(cfg.build(), addr)
            elif frame.cmd == c37.CMD_START:
                self.t.sendto(_data(cfg, len(commands)), addr)
                if commands.count(c37.CMD_START) == 2:
                    restarted.set()

    tr, pmu = await loop.create_datagram_endpoint(Pmu, local_addr=("127.0.0.1", 0))
    try:
        await asyncio.wait_for(silent.wait(), 20)  # the PMU sent one frame and stopped
        assert commands == [c37.CMD_START]  # a spontaneous CFG-2 needs no request
        pmu.t.sendto(_data(cfg, 9), gw_addr)  # data again: CFG-2 asked, then START
        await asyncio.wait_for(restarted.wait(), 20)
    finally:
        await t.close()
        tr.close()
    assert commands[:3] == [c37.CMD_START, c37.CMD_CFG2, c37.CMD_START]
    kinds = [e[1] for e in sink.events]
    assert kinds.count("c37_started") == 2 and kinds.index("silent") < len(kinds) - 1
    (detail,) = [e[2] for e in sink.events if e[1] == "silent"]
    assert detail["timeout_s"] == 1.0
