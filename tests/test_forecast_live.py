"""``GET /forecast`` from a real running Gateway (estimator process, UDP transports)
fed by the emulator on loopback. Waits on conditions with their own deadline; asserts no
rate or duration."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import load_config, resolve

WAIT_S = 90.0  # deadline of the wait for the first forecast (not a timing claim)
FORECAST = """
[forecast]
every_s = 0.5
resolution_s = 1.0
history_days = 0.01
sample_s = 0.1
scenarios = 4
horizons_min = [5, 15, 60]
"""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


async def test_forecast_is_served_by_a_running_gateway(tmp_path: Path) -> None:
    from gateway.app import Gateway, GatewayOptions
    from hil.emulator import Emulator, EmulatorRunner, retarget, run_in_thread
    from hil.scenario import ScenarioSpec, make_trace

    text, _ = resolve("ieee33")
    path = tmp_path / "twin.toml"
    path.write_text(text + FORECAST, encoding="utf-8")
    cfg = load_config(path)
    streams = [s.name for s in cfg.enabled_streams]
    gw = Gateway(cfg, GatewayOptions(
        config_ref=str(path), historian_url="none", metrics_bind="127.0.0.1:0",
        quality=False, spare=False,
        url_overrides={n: "udp://127.0.0.1:0" for n in streams}))
    trace = make_trace(ScenarioSpec(config="ieee33", start="1990-06-01T10:00",
                                    hours=40 / 3600, step_s=0.02, missing_pct=0.0))
    runner = th = None
    try:
        await gw.start()
        assert gw.server is not None and gw.server.address is not None
        host, port = gw.server.address
        base = f"http://{host}:{port}"
        status, body = await asyncio.to_thread(_get, base + "/forecast")
        assert status == 503 and b"no forecast yet" in body
        bound = {n: gw.transports[n].local_address for n in streams}
        urls = {n: f"udp://127.0.0.1:{a[1]}" for n, a in bound.items() if a is not None}
        assert len(urls) == len(streams)
        runner = EmulatorRunner(Emulator(retarget(cfg, urls), trace, rate_hz=50.0),
                                steps=trace.time.size)
        th, result = run_in_thread(runner)
        doc: dict[str, Any] | None = None
        deadline = time.monotonic() + WAIT_S
        while doc is None or doc["history_rows"] < 3:
            assert time.monotonic() < deadline, f"no forecast by the deadline: {result}"
            await asyncio.sleep(0.2)  # polling interval, not synchronisation
            status, body = await asyncio.to_thread(_get, base + "/forecast")
            if status == 200:
                doc = json.loads(body)
        state = json.loads((await asyncio.to_thread(_get, base + "/state"))[1])
        _, metrics = await asyncio.to_thread(_get, base + "/metrics")
    finally:
        if runner is not None:
            runner.stop()
        if th is not None:
            th.join(10)
        await gw.close()
    # the forecast ran in a worker process, and closing the gateway stopped it
    assert gw.forecast is not None and gw.forecast.fc.forecasts >= 1
    assert not multiprocessing.active_children()
    net = cfg.network
    assert doc["bus"] == [int(b) for b in net.bus_ids]
    assert [h["horizon"] for h in doc["horizons"]] == ["5m", "15m", "60m"]
    assert doc["load_method"] == "persistence"  # seconds of history: it says so
    t_lo, t_hi = float(trace.time[0]), float(trace.time[-1])
    assert t_lo <= doc["issued_at"] <= t_hi + 1.0  # the states' own (trace) time
    for h in doc["horizons"]:
        vm = np.array(h["vm_pu"])
        assert vm.shape == (net.n_bus,)
        assert np.all(np.array(h["vm_lo_pu"]) <= vm) and np.all(vm <= np.array(h["vm_hi_pu"]))
        assert h["at"] == doc["issued_at"] + h["horizon_s"]
        assert set(h["pv_mw"]) == {p.name for p in cfg.plants}
        # seconds ahead of a steady late morning: close to the estimate, and to the truth
        np.testing.assert_allclose(vm, state["vm_pu"], atol=0.01)
        np.testing.assert_allclose(vm, np.abs(trace.v[-1]), atol=0.01)
        assert h["min_vm_pu"] == pytest.approx(min(h["vm_pu"]), abs=1e-6)
    text_m = metrics.decode()
    for label in ("5m", "15m", "60m"):
        assert f'gridtwin_forecast_min_vm_pu{{horizon="{label}"}}' in text_m
        assert f'gridtwin_forecast_violations{{horizon="{label}"}}' in text_m
