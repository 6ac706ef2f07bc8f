"""The gateway against a PMU that lists its PMUs in another order and changes its
configuration mid-stream, over a real loopback TCP connection: every value lands on its
own channel (PMU identity, not position), before and after the change."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.codecs.decoders import C37Decoder
from gateway.config import load_config
from gateway.snapshot import Snapshot
from hil.c37server import C37Stream, PmuSession
from hil.emulator import retarget

DEADLINE_S = 60.0


async def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    """Wait on the loop for ``cond`` with its own deadline (a hang fails the test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def test_reordered_and_changing_pmus_land_on_their_channels() -> None:
    from gateway.app import Gateway, GatewayOptions

    base = load_config("ieee33")
    stream = base.stream("pmu-c37")
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
    cfg = retarget(base, {"pmu-c37": f"tcp://127.0.0.1:{port}"}, enable=("pmu-c37",),
                   disable=("pmu", "scada", "weather"))
    gw = Gateway(cfg, GatewayOptions(config_ref="ieee33", historian_url="none",
                                     metrics_bind="", quality=False, estimator=False))
    snaps: list[Snapshot] = []
    on_snapshot = gw.on_snapshot

    def record(snap: Snapshot) -> None:
        snaps.append(snap)
        on_snapshot(snap)

    gw.on_snapshot = record  # type: ignore[method-assign]
    n = len(cfg.channels)
    rows = [1.0 + 0.01 * np.arange(n) + 0.001 * k for k in range(8)]
    t0 = 1_700_000_000.0
    try:
        await gw.start()
        await until(lambda: session.streaming, "START from the gateway")

        def send(k: int) -> None:
            writers[-1].write(src.data_frame(rows[k], t0 + k / 50))

        for k in range(3):
            send(k)
        await until(lambda: len(snaps) >= 3, "three snapshots")
        # a configuration change: announced (STAT bit 10), then in force with the PMUs in
        # yet another order; the gateway asks for the new CFG-2 and remaps
        src.announce_config_change()
        send(3)
        await until(lambda: session.commands.get("cfg2", 0) >= 2, "CFG-2 asked again")
        src.change_config(order=[3, 1, 5, 0, 6, 2, 4])
        send(4)  # held back until the new CFG-2 is in
        await until(lambda: session.commands.get("cfg2", 0) >= 3, "CFG-2 after the change")
        dec = gw.decoders["pmu-c37"]
        assert isinstance(dec, C37Decoder)
        await until(lambda: dec.receiver.stats.changes == 1, "the new configuration taken")
        for k in (5, 6, 7):
            send(k)
        await until(lambda: len(snaps) >= 7, "snapshots after the change")
    finally:
        await gw.close()
        server.close()
        await server.wait_closed()
    names = [c.name for c in cfg.channels]
    chans = np.array(cfg.stream("pmu-c37").channels)
    got = {round((s.source_time - t0) * 50): s for s in snaps}
    assert sorted(got) == [0, 1, 2, 3, 5, 6, 7]  # step 4 held back, never misplaced
    assert gw.stats["pmu-c37"].decode_errors == 1  # ... and counted
    for k, s in got.items():
        np.testing.assert_allclose(s.values[chans], rows[k][chans], rtol=1e-6)
    assert names.index("pmu6.vm") in chans and names.index("pmu1.vm") in chans
