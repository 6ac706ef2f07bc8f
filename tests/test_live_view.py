"""The live view's sans-IO parts: the one-line layout, the throttle, the client queues."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from estimator.layout import one_line
from estimator.network import load_case
from estimator.synthetic import radial_feeder
from gateway.config import load_config
from gateway.web.live import LiveFeed
from gateway.web.page import BAND_COLOURS, LiveView, VoltageLimits, asset, voltage_band


@pytest.mark.parametrize("net", [load_case("ieee33"), radial_feeder(300, seed=3)],
                         ids=["ieee33", "radial300"])
def test_layout_places_every_bus_once_and_keeps_branches_on_lanes(net) -> None:
    ol = one_line(net)
    assert [b.id for b in ol.buses] == [int(b) for b in net.bus_ids]
    spots = {(b.x, b.y) for b in ol.buses}
    assert len(spots) == net.n_bus  # no two buses drawn on top of each other
    by = {b.id: b for b in ol.buses}
    tree = [r for r in ol.branches if r.tree]
    assert len(tree) == net.n_bus - 1  # a spanning tree of a connected feeder
    for r in tree:  # a tree branch goes one step right, to the same or a lower lane
        f, t = by[r.f], by[r.t]
        a, b = (f, t) if f.depth < t.depth else (t, f)
        assert b.x == a.x + 1 and b.y >= a.y and b.depth == a.depth + 1
    slack = by[int(net.bus_ids[net.slack])]
    assert (slack.x, slack.y, slack.depth) == (0, 0, 0)


def test_ieee33_ties_are_open_chords_and_laterals_hang_below() -> None:
    ol = one_line(load_case("ieee33"))
    ties = {r.name for r in ol.branches if not r.closed}
    assert ties == {"8-21", "9-15", "12-22", "18-33", "25-29"}
    assert all(not r.tree for r in ol.branches if not r.closed)
    by = {b.id: b for b in ol.buses}
    assert {by[i].y for i in range(1, 19)} == {0}  # the main feeder 1..18 on one lane
    assert by[19].y > 0 and by[23].y > 0 and by[26].y > 0


def test_voltage_band_rule() -> None:
    lim = VoltageLimits(0.95, 1.05, 0.25)
    assert [voltage_band(v, lim) for v in (0.94, 0.96, 1.0, 1.04, 1.06, float("nan"))] == [
        "under", "low", "ok", "high", "over", "unknown"]
    assert set(BAND_COLOURS) >= {"under", "low", "ok", "high", "over", "unknown"}


def test_throttle_folds_states_into_at_most_one_update_per_period() -> None:
    feed = LiveFeed(max_rate_hz=10.0)
    assert not feed.offer(0.0)  # nobody listens: nothing to build
    feed.connect()
    sent: list[float] = []
    for k in range(1000):  # 1 kHz of states for one second
        now = k * 1e-3
        if feed.offer(now):
            feed.broadcast({"seq": k}, now)
            sent.append(now)
    assert len(sent) == 10
    assert all(b - a >= 0.1 - 1e-12 for a, b in itertools.pairwise(sent))
    assert feed.offered == 1001
    assert feed.next_deadline() == pytest.approx(sent[-1] + 0.1)


def test_a_stalled_client_loses_its_oldest_updates_and_holds_no_one_up() -> None:
    feed = LiveFeed(max_rate_hz=1000.0, queue_len=4)
    slow, fast = feed.connect(), feed.connect()
    assert slow is not None and fast is not None

    async def drain() -> list[bytes]:
        got = []
        while (d := await fast.get(0.0)) is not None:
            got.append(d)
        return got

    got: list[bytes] = []
    for k in range(20):
        feed.broadcast({"seq": k}, float(k))
        got += asyncio.run(drain())
    assert len(got) == 20 and fast.dropped == 0
    assert slow.dropped == 16  # four kept: the newest
    left = asyncio.run(_take_all(slow))
    assert [b'"seq":16' in d or b'"seq":17' in d or b'"seq":18' in d or b'"seq":19' in d
            for d in left] == [True] * 4


async def _take_all(c) -> list[bytes]:
    out = []
    while (d := await c.get(0.0)) is not None:
        out.append(d)
    return out


def test_too_many_clients_are_refused() -> None:
    feed = LiveFeed(max_clients=2)
    assert feed.connect() and feed.connect()
    assert feed.connect() is None and feed.refused == 1


def test_payload_flows_flags_and_history() -> None:
    cfg = load_config("ieee33")
    view = LiveView(cfg)
    n = len(view.bus_ids)
    flags = np.zeros(len(cfg.channels), np.uint32)
    bad = cfg.channel_index["pmu6.vm"]
    flags[bad] = 1
    view.note_flags(flags)
    values = np.zeros(len(cfg.channels))
    values[bad] = 12.66 * 0.97
    state = {"seq": 5, "source_time": 100.0, "vm_pu": [1.0] * n,
             "va_rad": [0.0] * (n - 1) + [-0.01], "chi2": 3.0, "chi2_threshold": 9.0}
    p = view.payload(state, values=values, pv_mw=np.ones(len(cfg.plants)), extras={})
    assert p["meter_flags"]["pmu6"] == 1
    assert all(v == 0 for k, v in p["meter_flags"].items() if k != "pmu6")
    # flat voltages but bus 33 lagging: power flows only on branches toward it
    assert any(abs(x) > 1e-6 for x in p["branch_p_mw"])
    again = view.payload(state, values=values, pv_mw=None, extras={})
    assert again["meter_flags"]["pmu6"] == 0  # flags are per update, not sticky
    h = view.bus_history(6)
    assert h is not None and h["t"] == [100.0, 100.0]
    assert h["meter_vm"] == [pytest.approx(0.97)] * 2
    assert view.bus_history(999) is None


def test_assets_are_shipped() -> None:
    for path in ("/", "/assets/app.js", "/assets/style.css"):
        got = asset(path)
        assert got is not None and len(got[0]) > 500
    assert asset("/etc/passwd") is None
