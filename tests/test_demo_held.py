"""The demo's report counts the held states (the 1 kHz kalman worker's flagged
predictions, ``gateway.estimator_worker``) from what the historian stored: not converged
with 0 iterations; a real non-convergence (its iterations spent) is not one of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.cli_demo import _held_states
from gateway.historian import ChannelInfo, HistorianReader, HistorianWriter, RunInfo


def test_held_states_are_counted_from_the_historian(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    with HistorianWriter(url, spool_dir=tmp_path / "spool") as w:
        w.start_run(RunInfo(name="ieee33", config_digest="d", config_toml="[x]\ny=1",
                            version="0.1.0", channels=[ChannelInfo(0, "pmu1.vm", "pmu1",
                                                                   "pmu", "vm", "kV", bus=1)],
                            meters=[], bus_ids=[1, 2], base_kv=[12.66] * 2, note=""),
                    started=1.0)
        kinds = [(3, True), (0, False), (2, True), (0, False), (20, False), (0, False)]
        for k, (iters, ok) in enumerate(kinds):
            w.put_state(k, 2.0 + k, np.array([1.0, 0.99]), np.array([0.0, -0.01]),
                        chi2=400.0, iterations=iters, converged=ok)
        assert w.flush(30)
    with HistorianReader(url) as rd:
        assert _held_states(rd, rd.latest_run()) == 3
