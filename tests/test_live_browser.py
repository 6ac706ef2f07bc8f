"""The operator's live page in a real browser (Debian's headless Chromium via chromedriver).

A gateway fed by the emulator over loopback UDP serves the page; Chromium opens it and
follows the live updates. Checked: one bus element per network bus; each bus's colour is
the band of its |V| in /state; a gross error the test injects into one PMU's voltage shows
on that meter as flagged; a screenshot is saved. No sleeps: every wait is on a condition.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.app import Gateway, GatewayOptions
from gateway.config import load_config
from gateway.web.page import BAND_COLOURS, VoltageLimits, voltage_band
from hil.emulator import retarget
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import play_into, until

STEPS = 60
BAD_STEP = 40  # after the quality stage's 10-sample window has filled
BAD_METER = "pmu6"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser(profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-quic",
              f"--user-data-dir={profile}", "--window-size=1600,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


async def until_async(cond: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Like :func:`until` for a blocking check (the browser, HTTP): run off the loop,
    which keeps serving the page meanwhile."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await asyncio.to_thread(cond):
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _get(port: int, path: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.mark.skipif(not Path(CHROMEDRIVER).exists(), reason="Debian's chromium-driver is "
                    "not installed (.ci/run installs it)")
async def test_live_page_in_chromium(tmp_path: Path) -> None:
    base = load_config("ieee33")
    trace = make_trace(ScenarioSpec(config="ieee33", hours=STEPS / 50 / 3600, step_s=0.02,
                                    missing_pct=0.0, seed=11))
    ch = base.channel_index[f"{BAD_METER}.vm"]
    trace.measured[BAD_STEP, ch] *= 1.5  # a gross error on one PMU's voltage
    cfg = retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams})
    gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="127.0.0.1:0",
                                     spare=False))
    driver = None
    try:
        await gw.start()
        assert gw.server is not None and gw.server.address is not None
        port = gw.server.address[1]
        driver = await asyncio.to_thread(_browser, tmp_path / "profile")
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{port}/")
        await until(lambda: gw.live.feed.clients, "the page's live connection")
        await play_into(gw, base, trace, STEPS, counter="states")

        def page(js: str) -> object:
            return driver.execute_script(js)  # type: ignore[union-attr]

        state = await asyncio.to_thread(_get, port, "/state")
        await until_async(lambda: page("return document.getElementById('diagram')"
                                       ".getAttribute('data-seq')") == str(state["seq"]),
                          "the page showing the last estimate")
        buses = await asyncio.to_thread(
            page, "return Array.from(document.querySelectorAll('circle.bus')).map("
            "e => [e.dataset.bus, e.getAttribute('fill'), e.dataset.vm])")
        flagged = await asyncio.to_thread(
            page, f"return document.getElementById('meter-{BAD_METER}').dataset.badCount")
        await asyncio.to_thread(driver.save_screenshot, str(tmp_path / "live.png"))
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        await gw.close()
    assert [int(b) for b, _, _ in buses] == [int(b) for b in cfg.network.bus_ids]
    lim = VoltageLimits()
    for (bus, fill, vm_page), vm in zip(buses, state["vm_pu"], strict=True):
        assert float(vm_page) == pytest.approx(vm, abs=1e-12), bus
        assert fill == BAND_COLOURS[voltage_band(vm, lim)], (bus, vm)
    assert int(flagged) >= 1, "the injected gross error never showed on its meter"
    assert (tmp_path / "live.png").stat().st_size > 10_000
    assert np.isfinite(state["vm_pu"]).all()
