"""`gridtwin fleet demo`: the whole fleet on this machine (private nats-server, emulated
feeders, edge gateways in their processes, worker processes, sink) accounts for every
snapshot, and counts only once every straggler is answered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hil.natsserver import nats_server_binary


@pytest.mark.skipif(nats_server_binary() is None, reason="Debian's nats-server is not "
                    "installed (.ci/run installs it)")
def test_fleet_demo_loses_nothing_and_estimates_every_feeder() -> None:
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "fleet", "demo", "--feeders",
                        "2", "--workers", "2", "--seconds", "4", "--edge-processes", "2",
                        "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    t = res["total"]
    assert res["feeders"] == 2 and len(res["per_feeder"]) == 2
    assert res["edge_processes"] == 2  # one feeder in each: both processes' rows merged
    assert res["settled"] is True  # counted after every snapshot had its answer
    assert res["worker_faults"] == {"bad": 0, "unknown_feeder": 0, "failed": 0,
                                    "publish_failures": 0}
    assert t["frames_lost"] == 0 and t["frames_received"] == t["frames_sent"] > 0
    assert t["lost"] == 0  # every snapshot estimated or superseded by a newer one
    # estimated: the states the workers stored (one may reach its edge after the count);
    # a snapshot redelivered (its worker stalled past the ack wait) may be answered twice
    answered = t["estimated"] + t["superseded"] + t["failed"]
    assert answered == t["snapshots"] > 0 if res["redelivered"] == 0 else \
        answered >= t["snapshots"] > 0
    assert t["estimated"] - t["states_after_count"] == t["states"]
    for row in res["per_feeder"]:
        assert row["states"] > 0 and row["vm_mape_pct"] is not None
        assert row["vm_mape_pct"] < 0.05  # every feeder tracked within 0.05 % |V| MAPE
    sink = res["sink"]
    assert sink is not None and sink["rows"]["states"] == t["estimated"]
    assert sink["rows"]["corrected"] == t["snapshots"]


async def test_demo_counts_only_after_every_straggler_is_answered(nats) -> None:  # type: ignore[no-untyped-def]
    """Frames sent in the last moments are still in the socket, the aligner holds a slot
    whose streams did not all come (its weather frame is missing), and no worker is up
    yet: ``settle`` returns only once all of them were read, handed on and answered, so
    none is counted as lost (the demo used to count after a fixed 1.5 s grace, and took
    the gateways' summaries after closing them, when the aligner's last slot had been
    handed on with nobody left to wait for its state)."""
    import asyncio
    import dataclasses
    import socket

    from gateway.app import Gateway, GatewayOptions
    from gateway.bus.conn import BusOptions
    from gateway.bus.fleet import register_config
    from gateway.bus.worker import Worker
    from gateway.cli_fleet_edges import Feeder, settle
    from gateway.config import BusConfig, load_config
    from hil.emulator import Emulator, retarget
    from hil.scenario import ScenarioSpec, make_trace
    from tests.fleethelpers import until

    steps = 12
    trace = make_trace(ScenarioSpec(config="ieee33", hours=steps / 50 / 3600, step_s=0.02,
                                    missing_pct=0.0, seed=5))
    base = load_config("ieee33")
    cfg = dataclasses.replace(
        retarget(base, {s.name: "udp://127.0.0.1:0" for s in base.streams}),
        name="feeder-01", bus=BusConfig(url=nats.url, estimate="workers"))
    opts = BusOptions(url=nats.url)
    await register_config(opts, "ieee33", name=cfg.name)
    gw = Gateway(cfg, GatewayOptions(historian_url="none", metrics_bind="", quality=False))
    worker = Worker(opts)
    try:
        await gw.start()
        f = Feeder(cfg.name, trace, gateway=gw)
        ports = {n: t.local_address for n, t in gw.transports.items()}
        em = Emulator(retarget(base, {n: f"udp://{a[0]}:{a[1]}" for n, a in ports.items()
                                      if a}), trace, rate_hz=50.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for k in range(steps):  # all in one go: nothing read yet when settle starts
                frames = em.frames(k)
                # the last step without its weather frame: the aligner holds the slot
                for out in frames[:-1] if k == steps - 1 else frames:
                    tx.sendto(out.emission.data, (out.plan.stream.host, out.plan.stream.port))
                    f.sent += 1
        task = asyncio.create_task(settle([f], timeout=60.0))
        await until(lambda: gw.snapshots == steps, "every snapshot handed to the bus")
        assert not task.done()  # no worker yet: nothing is answered, so nothing counted
        await worker.start()
        assert await task
        s = gw.summary()
    finally:
        await gw.close()
        await worker.close()
    assert s["frames_received"] == f.sent
    assert s["snapshots"] == steps  # the held slot was handed on too
    assert s["states"] + worker.stats.superseded == s["snapshots"]
    assert s["states"] == worker.stats.solved > 0


def test_edge_processes_take_turns_within_one_frame_period() -> None:
    from gateway.cli_fleet_demo import phase

    starts = [phase(i, 4, 50.0) for i in range(4)]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert len(set(starts)) == 4  # no two processes burst on the same instant
    assert max(starts) < 1 / 50.0  # all within the first frame period, evenly spread
    assert starts[1] - starts[0] == pytest.approx(1 / 200.0)
