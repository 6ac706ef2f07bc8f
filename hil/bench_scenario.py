"""``gridtwin bench`` entry ``scenario.ieee33.24h_1s``: seconds to generate and write a
24 h, 1 s trace of the bundled ieee33 config (10 % bad data, seed 1).

Both modes first generate 36 s untimed (imports, config and TMY file caches: one-off costs of
the process, not of the trace). Full mode then times the real 24 h. ``--quick`` times 2 h
and reports 12x that: generation is linear in the number of steps (vectorised stages and
a chunked batch power flow) plus a small per-trace cost, so the quick figure slightly
overestimates the full one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from gateway.bench import BenchResult


def _generate_seconds(hours: float) -> float:
    from hil.scenario import ScenarioSpec, make_scenario

    spec = ScenarioSpec(config="ieee33", start="1990-06-01", hours=hours, step_s=1.0,
                        bad_pct=10.0, missing_pct=0.5, seed=1)
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-") as tmp:
        t0 = time.perf_counter()
        make_scenario(spec, Path(tmp) / "bench.npz", progress=False)
        return time.perf_counter() - t0


def benchmarks(quick: bool) -> list[BenchResult]:
    hours = 2.0 if quick else 24.0
    _generate_seconds(0.01)  # warm-up: imports and caches
    seconds = _generate_seconds(hours) * (24.0 / hours)
    return [BenchResult("scenario.ieee33.24h_1s", seconds, "s")]
