"""The ingest path (the C37.118 TCP transport, the stream decoder, the aligner, wired as
the runner wires them) against a PMU that lists its PMUs in another order and changes its
configuration mid-stream, over a real loopback TCP connection: every value lands on its
own channel (PMU identity, not position), before and after the change."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.aligner import Aligner
from gateway.codecs.decoders import C37Decoder
from gateway.config import load_config
from gateway.errors import FrameError
from gateway.snapshot import Flag, Snapshot
from gateway.transports.base import TransportSpec, open_transport
from hil.c37server import C37Stream, PmuSession

DEADLINE_S = 60.0


async def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    """Wait on the loop for ``cond`` with its own deadline (a hang fails the test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Ingest:
    """Transport frames -> decoder -> aligner, as the runner does it."""

    def __init__(self, dec: C37Decoder, n_channels: int) -> None:
        self.dec = dec
        self.aligner = Aligner(n_channels, [dec.layout], rate_hz=50.0, lag_s=0.1)
        self.snaps: list[Snapshot] = []
        self.errors: list[FrameError] = []

    def __call__(self, stream: str, data: bytes, host: str | None, now: float) -> None:
        try:
            out = self.dec.decode(data, now)
        except FrameError as exc:
            self.errors.append(exc)
            return
        if out is not None:
            seq, ts, values = out
            self.snaps += self.aligner.feed(stream, values, now, ts=ts, seq=seq,
                                            flags=self.dec.flags)


async def test_reordered_and_changing_pmus_land_on_their_channels() -> None:
    cfg = load_config("ieee33")
    stream = cfg.stream("pmu-c37")
    src = C37Stream(stream, 50.0, order=[6, 5, 4, 3, 2, 1, 0])
    session = PmuSession(src)
    writers: list[asyncio.StreamWriter] = []

    async def pmu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while chunk := await reader.read(65536):
            for reply in session.receive(chunk, 0.0):
                writer.write(reply)
            await writer.drain()

    server = await asyncio.start_server(pmu, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dec = C37Decoder(stream)
    ingest = Ingest(dec, len(cfg.channels))
    events: list[str] = []
    t = open_transport(TransportSpec(stream.name, f"tcp://127.0.0.1:{port}", stream.format,
                                     0, stream.idcode, rate_hz=50.0,
                                     read_timeout_s=DEADLINE_S), ingest,  # not tested here
                       on_event=lambda s, kind, d: events.append(kind))
    n = len(cfg.channels)
    rows = [1.0 + 0.01 * np.arange(n) + 0.001 * k for k in range(8)]
    t0 = 1_700_000_000.0

    def send(k: int) -> None:
        writers[-1].write(src.data_frame(rows[k], t0 + k / 50))

    await t.start()
    try:
        await until(lambda: session.streaming, "START from the transport")
        src.set_stat(0x2000, "PMU6")  # PMU6 lost its time sync
        for k in range(3):
            send(k)
        await until(lambda: len(ingest.snaps) >= 3, "three snapshots")
        # a configuration change: announced (STAT bit 10), then in force with the PMUs in
        # yet another order; the transport asks for the new CFG-2, the decoder remaps
        src.announce_config_change()
        send(3)
        await until(lambda: session.commands.get("cfg2", 0) >= 2, "CFG-2 asked again")
        src.change_config(order=[3, 1, 5, 0, 6, 2, 4])
        send(4)  # held back until the new CFG-2 is in
        await until(lambda: dec.receiver.stats.changes == 1, "the new configuration taken")
        for k in (5, 6, 7):
            send(k)
        await until(lambda: len(ingest.snaps) >= 7, "snapshots after the change")
    finally:
        await t.close()
        server.close()
        await server.wait_closed()
    names = [c.name for c in cfg.channels]
    chans = np.array(stream.channels)
    got = {round((s.source_time - t0) * 50): s for s in ingest.snaps}
    assert sorted(got) == [0, 1, 2, 3, 5, 6, 7]  # step 4 held back, never misplaced
    assert len(ingest.errors) == 1 and "held back" in str(ingest.errors[0])
    for k, s in got.items():
        np.testing.assert_allclose(s.values[chans], rows[k][chans], rtol=1e-6)
        pmu6 = [names.index("pmu6.vm"), names.index("pmu6.va")]
        assert all(s.flags[i] == Flag.TIME_SUSPECT for i in pmu6)
        assert not s.flags[names.index("pmu1.vm")]
    # the transport's session reported its own doings (the handshake, the announced
    # change it asked CFG-2 for); what the frames say is the decoder's to report
    assert events == ["connected", "c37_started", "c37_config_change"]
    dec_kinds = [e.kind for e in dec.take_events()]
    assert dec_kinds.count("c37_config") == 3  # first, answer to the announce, new one
    assert dec_kinds.count("c37_config_changed") == 1 and "c37_stat" in dec_kinds


def test_pipeline_takes_stat_flags_and_raises_the_decoders_events() -> None:
    """Sans-IO, no sockets: C37.118 frames fed to the pipeline; STAT flags reach the
    handed-off snapshot on that PMU's channels; identity events become stream events."""
    from gateway.pipeline import Event, Handoff, Pipeline
    from gateway.telemetry import Telemetry
    from hil.emulator import retarget

    base = load_config("ieee33")
    cfg = retarget(base, {}, enable=("pmu-c37",), disable=("pmu", "scada", "weather"))
    stream = cfg.stream("pmu-c37")
    p = Pipeline(cfg, Telemetry(cfg, clock=lambda: 0.0), perf=lambda: 0.0)
    src = C37Stream(stream, 50.0, order=[6, 5, 4, 3, 2, 1, 0])
    out = list(p.feed_frame(stream.name, src.cfg2.build(), 10.0))
    (ev,) = [o for o in out if isinstance(o, Event)]
    assert ev.kind == "stream_c37_config" and ev.source == "pmu-c37"
    assert ev.detail["remapped"] is True
    src.set_stat(0x8000, "PMU3")  # PMU3 reports a data error
    values = 1.0 + 0.01 * np.arange(len(cfg.channels))
    out = list(p.feed_frame(stream.name, src.data_frame(values, 1e9), 10.02))
    (stat,) = [o for o in out if isinstance(o, Event)]
    assert stat.kind == "stream_c37_stat" and stat.detail["station"] == "PMU3"
    (h,) = [o for o in out if isinstance(o, Handoff)]
    names = [c.name for c in cfg.channels]
    bad = {i for i, f in enumerate(h.snapshot.flags) if f & Flag.BAD}
    assert bad == {names.index(n) for n in names if n.startswith("pmu3.")}
    np.testing.assert_allclose(h.snapshot.values[list(stream.channels)],
                               values[list(stream.channels)], rtol=1e-6)
    # a refused CFG-2 names both lists in its event, and no data is taken from it
    wrong = C37Stream(stream, 50.0)
    wrong.cfg2.pmus[0].station = "ELSEWHERE"
    out = list(p.feed_frame(stream.name, wrong.cfg2.build(), 10.04))
    evs = {o.kind: o for o in out if isinstance(o, Event)}
    assert set(evs) == {"stream_c37_config_changed", "stream_c37_config_refused"}
    ref = evs["stream_c37_config_refused"]
    assert "PMU1#1" in str(ref.detail["configured"])
    assert "ELSEWHERE#1" in str(ref.detail["received"])
    assert p.stats[stream.name].decode_errors == 1
