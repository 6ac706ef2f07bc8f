"""`gridtwin fleet demo`: the whole fleet on this machine (private nats-server, emulated
feeders, edge gateways, worker processes, sink) accounts for every snapshot."""

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
                        "2", "--workers", "2", "--seconds", "4", "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    t = res["total"]
    assert res["feeders"] == 2 and len(res["per_feeder"]) == 2
    assert t["frames_lost"] == 0 and t["frames_received"] == t["frames_sent"] > 0
    assert t["lost"] == 0  # every snapshot estimated or superseded by a newer one
    assert t["states"] + t["superseded"] == t["snapshots"] > 0
    for row in res["per_feeder"]:
        assert row["states"] > 0 and row["vm_mape_pct"] is not None
        assert row["vm_mape_pct"] < 0.05  # every feeder tracked within 0.05 % |V| MAPE
    sink = res["sink"]
    assert sink is not None and sink["rows"]["states"] == t["states"]
    assert sink["rows"]["corrected"] == t["snapshots"]
