"""The snapshot's topology on the fleet bus, with a real nats-server: the edge publishes
the switch states its tracker stamped, a worker estimates on a solver cached per
(feeder, topology), and the sink writes the topology label into ``states.topology``.

No sleeps as synchronisation: every wait is for a condition, with its own deadline.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from estimator.topology import SwitchSet
from gateway.bus import wire
from gateway.bus.conn import BusOptions
from gateway.bus.edge import EdgeBus
from gateway.bus.fleet import register_config
from gateway.bus.sink import Sink
from gateway.bus.worker import Worker
from gateway.config import load_config
from gateway.estimator_worker import SolverCache
from hil.reconfigure import Switching, reconfigure
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import until

N = 24
AT = 10  # the switching's row
NEW = "sw_7_8=open,sw_8_21=closed"


@pytest.fixture(scope="module")
def switched():  # type: ignore[no-untyped-def]
    """(the reconfigured trace, the switched topology's switch states)."""
    cfg = load_config("ieee33")
    base = make_trace(ScenarioSpec(config="ieee33", hours=N / 3600, step_s=1.0,
                                   missing_pct=0.0, seed=11))
    trace = reconfigure(base, cfg, [Switching.of(AT, sw_8_21=True, sw_7_8=False)], seed=2)
    sw = SwitchSet.of(cfg.network)
    return trace, sw.with_states(sw.normal, {"sw_8_21": True, "sw_7_8": False})


def _mape(vm: np.ndarray, v: np.ndarray) -> float:
    return float(np.mean(np.abs(vm - np.abs(v)) / np.abs(v)) * 100)


async def test_workers_estimate_on_the_snapshots_topology(nats, switched,  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    trace, new = switched
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name="f1")
    worker = Worker(opts)
    await worker.start()
    db = tmp_path / "fleet.db"
    sink = Sink(opts, f"sqlite:///{db}")
    await sink.start()
    states: dict[int, wire.BusState] = {}
    edge = EdgeBus("f1", opts, on_state=lambda s, rtt: states.__setitem__(s.seq, s))
    await edge.start()
    m, n = trace.measured.shape[1], trace.pv_mw.shape[1]
    try:
        # one at a time (each estimated before the next: none superseded)
        for k in range(N):
            edge.offer_snapshot(k, float(trace.time[k]), float(trace.time[k]),
                                trace.measured[k], np.zeros(m, np.uint32), trace.pv_mw[k],
                                np.full(n, 0.01), None if k < AT else new)
            await until(lambda k=k: k in states, f"the state of snapshot {k}", 60)
        await until(lambda: sink.stats.messages >= 2 * N, "the sink caught up")
    finally:
        await edge.close()
        await worker.close()
        await sink.close()
    assert worker.stats.failed == 0 and worker.stats.bad == 0
    labels = {k: s.topology for k, s in states.items()}
    assert labels == {k: "normal" if k < AT else NEW for k in range(N)}
    # the worker built one solver for the new topology, not one per snapshot
    solvers, _ = worker.cache.get("f1")  # type: ignore[misc]
    assert isinstance(solvers, SolverCache) and solvers.builds == 2
    after = [k for k in range(AT, N)]
    vm = np.array([states[k].vm_pu for k in after])
    err = _mape(vm, trace.v[after])
    before = _mape(np.array([states[k].vm_pu for k in range(AT)]), trace.v[:AT])
    assert err < 2 * before + 0.01, (err, before)
    # on the config's network the same snapshots are far off: what the workers did before
    normal = SolverCache(load_config("ieee33"), "linear").solver(None)[0]
    old = np.array([normal(trace.measured[k], np.zeros(m, np.uint32), trace.pv_mw[k],
                           np.full(n, 0.01))[0] for k in after])
    assert _mape(old, trace.v[after]) > 3 * err
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, topology FROM states ORDER BY seq").fetchall()
    assert rows == [(k, "normal" if k < AT else NEW) for k in range(N)]


STEPS = 40
AT_GW = 20


async def test_gateway_switching_reaches_the_workers(nats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A real gateway (``estimate = "workers"``) receives the switch statuses on its scada
    stream; the switching snapshot and every one after it are estimated by a worker on
    the new topology, and the states that come back name it."""
    import dataclasses

    from gateway.app import Gateway, GatewayOptions
    from gateway.config import BusConfig
    from hil.emulator import retarget
    from hil.reconfigure import with_statuses
    from tests.fleethelpers import play_into

    root = Path(__file__).resolve().parents[1]
    text = (root / "gateway" / "configs" / "ieee33.toml").read_text("utf-8")
    old = 'points = ["flow.*", "inj.*", "scada_status:int32"]'
    assert old in text
    text = text.replace(old, old[:-1] + ', "sw_8_21:int32", "sw_7_8:int32"]')
    path = tmp_path / "twin.toml"
    path.write_text(text + "\n[topology]\nidentify = false\n", "utf-8")
    base = load_config(path)
    plan = [Switching.of(AT_GW, sw_8_21=True, sw_7_8=False)]
    normal = make_trace(ScenarioSpec(config="ieee33", hours=STEPS / 50 / 3600, step_s=0.02,
                                     missing_pct=0.0, seed=3))
    trace = with_statuses(reconfigure(normal, base, plan, seed=1), base, plan, "sent")
    cfg = dataclasses.replace(
        retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams}),
        bus=BusConfig(url=nats.url, estimate="workers"))
    opts = BusOptions(url=nats.url)
    await register_config(opts, str(path), name=cfg.name)
    worker = Worker(opts)
    await worker.start()
    gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="", quality=False))
    got: dict[float, str] = {}
    try:
        await gw.start()
        assert gw.supervisor is None and gw.bus is not None and gw.topology is not None
        gw.on_new_state.append(lambda st, rec: got.__setitem__(st.source_time, st.topology))
        await play_into(gw, base, trace, STEPS, counter="snapshots")
        await until(lambda: worker.stats.solved + worker.stats.superseded == gw.snapshots,
                    "every snapshot estimated or superseded")
        await until(lambda: gw.states == worker.stats.solved, "the states back at the edge")
        last = gw.latest_state
    finally:
        await gw.close()
        await worker.close()
    assert worker.stats.failed == 0 and got
    t_sw = float(trace.time[AT_GW])
    assert {lab for t, lab in got.items() if t < t_sw - 1e-6} <= {"normal"}
    assert {lab for t, lab in got.items() if t >= t_sw - 1e-6} == {NEW}
    assert last is not None and last["topology"] == NEW
