"""The estimator worker's compute per snapshot at 1 kHz (``gridtwin bench --only se.``).

* ``se.ieee33.worker_1khz`` / ``se.ieee33.worker_1khz_p99`` (µs, median / p99): the solve
  function the estimator process runs per snapshot (measurement vector, usable values,
  sigmas and factors, the linear solve, the chi-square test, the gross-error fallback),
  with its deferred work between snapshots as the worker makes it, on what the gateway
  hands it in ``gridtwin demo --rate 1000 --seconds 20``: the first 4000 snapshots of
  that demo's scenario (10 % of the electrical values corrupted; ``--quick``: 1500 of a
  2 s one), cleaned by the quality stage, with the PV forecasts and their sigmas.
  No sockets and no other process: the figure the e2e run's ``solve`` stage holds
  when the machine is quiet, without the run-to-run spread of a live 1 kHz run. No peer.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.bench import BenchResult, median, p99

RATE_HZ = 1000.0
WARM = 300  # snapshots before timing: the detector's rings, the estimator's weights


def _inputs(cfg: Any, rows: int, seconds: float
            ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(values, flags, pv, pv sigma) per snapshot, as the gateway hands them over: the
    first ``rows`` of the 1 kHz demo scenario of ``seconds`` (generated once, cached)."""
    from gateway.cli_demo import cache_dir, ensure_scenario
    from gateway.quality import QualityStage
    from hil.trace import load_trace

    path, _ = ensure_scenario(cache_dir(None), seconds=seconds, rate=RATE_HZ, bad_pct=10.0,
                              seed=1, log=lambda _msg: None)
    trace = load_trace(path)
    cols = [trace.channel(c.name) for c in cfg.channels]
    stage = QualityStage(cfg)
    zero = np.zeros(len(cols), np.uint32)
    out = []
    for k in range(min(rows, trace.n_steps)):
        r = stage.process(trace.measured[k, cols], zero, float(trace.time[k]))
        stage.lookahead()
        out.append((r.values, r.flags, r.pv_mw, r.pv_sigma_mw))
    return out


def benchmarks(quick: bool) -> list[BenchResult]:
    from gateway.cli_demo import write_config
    from gateway.config import load_config
    from gateway.estimator_worker import solver_for

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(write_config(Path(tmp) / "twin.toml", rate=RATE_HZ,
                                       db=Path(tmp) / "twin.db", ports=None,
                                       metrics_port=0))
    # the full run: the scenario of `gridtwin demo --rate 1000 --seconds 20` and of the
    # e2e bench's 1 kHz run; --quick: a 2 s one (quicker to make the first time)
    snaps = _inputs(cfg, 1500, 2.0) if quick else _inputs(cfg, 4000, 20.0)
    _, solve = solver_for(cfg, cfg.estimator.method, clean=True)
    idle = getattr(solve, "idle", None)
    times = []
    clock = time.perf_counter_ns
    for k, snap in enumerate(snaps):
        t0 = clock()
        # a FAIL answer (the first, gross snapshots) is timed too
        with contextlib.suppress(Exception):
            solve(*snap)
        if k >= WARM:
            times.append((clock() - t0) / 1e3)
        while idle is not None and idle():
            pass
    return [BenchResult("se.ieee33.worker_1khz", median(times), "us"),
            BenchResult("se.ieee33.worker_1khz_p99", p99(times), "us")]
