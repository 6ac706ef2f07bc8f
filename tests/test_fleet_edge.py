"""A real gateway publishing on the bus, estimated by the fleet's workers.

The emulator's frames go over loopback UDP into `gateway.app.Gateway` with
``[bus] estimate = "workers"``: no estimator process of its own; every cleaned snapshot goes
to JetStream, a worker estimates it, the state comes back to the gateway's /state and
statistics. A real ``nats-server -js`` per test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gateway.app import Gateway, GatewayOptions
from gateway.bus.conn import BusOptions
from gateway.bus.fleet import register_config
from gateway.bus.worker import Worker
from gateway.config import BusConfig, load_config
from hil.emulator import retarget
from hil.natsserver import NatsServer
from hil.scenario import ScenarioSpec, make_trace
from tests.fleethelpers import play_into, until

STEPS = 40


async def test_gateway_estimated_by_fleet_workers(nats: NatsServer) -> None:
    trace = make_trace(ScenarioSpec(config="ieee33", hours=STEPS / 50 / 3600, step_s=0.02,
                                    missing_pct=0.0, seed=3))
    base = load_config("ieee33")
    cfg = dataclasses.replace(
        retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams}),
        bus=BusConfig(url=nats.url, estimate="workers"))
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name=cfg.name)
    worker = Worker(opts)
    await worker.start()
    gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="", quality=False))
    try:
        await gw.start()
        assert gw.supervisor is None and gw.bus is not None  # the workers estimate
        seen: dict[int, np.ndarray] = {}
        await play_into(gw, base, trace, STEPS, counter="snapshots")
        await until(lambda: worker.stats.solved + worker.stats.superseded == gw.snapshots,
                    "every snapshot estimated or superseded")
        await until(lambda: gw.states == worker.stats.solved, "the states back at the edge")
        st = gw.latest_state
        assert st is not None
        seen[int(st["seq"])] = np.array(st["vm_pu"])
        summary = gw.summary()
    finally:
        await gw.close()
        await worker.close()
    assert summary["bus"]["published"] >= STEPS and summary["bus"]["dropped"] == 0
    assert summary["states"] == worker.stats.solved > 0
    # the last estimate matches the emulated grid at the step it came from
    vm = next(iter(seen.values()))
    truth = np.abs(trace.v[STEPS - 1])
    assert np.mean(np.abs(vm - truth) / truth) < 1e-3
