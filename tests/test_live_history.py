"""`/history` of the live page: recent minutes from memory, longer ranges from the twin's
own database (read off the event loop), on a real gateway fed by the emulator."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from gateway.app import Gateway, GatewayOptions
from gateway.config import load_config
from hil.emulator import retarget
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import play_into, until

STEPS = 30


def _get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_history_from_memory_and_from_the_historian(tmp_path: Path) -> None:
    base = load_config("ieee33")
    trace = make_trace(ScenarioSpec(config="ieee33", hours=STEPS / 50 / 3600, step_s=0.02,
                                    missing_pct=0.0, seed=2))
    cfg = retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams})
    gw = Gateway(cfg, GatewayOptions(historian_url=f"sqlite:///{tmp_path / 'twin.db'}",
                                     metrics_bind="127.0.0.1:0", quality=False, spare=False,
                                     forecast=False))
    try:
        await gw.start()
        assert gw.server is not None and gw.server.address is not None
        port = gw.server.address[1]
        # the page's feed keeps memory only while a browser listens: one listens here
        gw.live.feed.connect()
        await play_into(gw, base, trace, STEPS, counter="states")
        await until(lambda: gw.historian.stats().committed > 0, "rows in the database")
        gw.historian.flush(10)
        mem = await asyncio.to_thread(_get, port, "/history?bus=6")
        stored = await asyncio.to_thread(_get, port, "/history?bus=6&minutes=120")
        bad = await asyncio.to_thread(_get, port, "/history?bus=999")
        junk = await asyncio.to_thread(_get, port, "/history?bus=six")
    finally:
        await gw.close()
    assert mem[0] == 200 and mem[1]["source"] == "memory" and mem[1]["bus"] == 6
    assert stored[0] == 200 and stored[1]["source"] == "historian"
    assert len(stored[1]["t"]) == gw.states  # every stored estimate (fewer than 2000)
    assert all(0.9 < v < 1.1 for v in stored[1]["vm"])
    assert stored[1]["t"] == sorted(stored[1]["t"])
    assert bad[0] == 404 and junk[0] == 400
