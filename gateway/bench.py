"""Benchmark registry behind ``gridtwin bench`` (contract: docs/measured.md).

Each area owns a module with ``benchmarks(quick: bool) -> list[BenchResult]``; this module
only lists them, filters by name prefix and prints. A benchmark that measures a peer does
so in the same run, on the same input, and fills ``peer``/``peer_value``.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# "module" or "module:function" providing ``(quick) -> list[BenchResult]`` (the function
# defaults to ``benchmarks``); each entry's names start with the given prefix so ``--only``
# can skip whole modules without importing them
BENCH_MODULES: tuple[tuple[str, str], ...] = (
    ("decode.", "gateway.codecs.bench"),
    ("se.", "gateway.bench_se"),
    ("se.", "gateway.bench_worker"),  # the estimator worker's solve path at 1 kHz
    ("quality.", "models.bench"),
    ("historian.", "gateway.historian.bench"),
    ("emulator.", "hil.bench"),
    ("scenario.", "hil.bench_scenario"),
    ("ingest.", "gateway.bench_e2e:benchmarks_ingest"),
    ("gateway.", "gateway.bench_e2e:benchmarks_ingest"),  # cpu_per_frame_us, same run
    ("gateway.", "gateway.bench_e2e:e2e"),  # cpu_per_snapshot_us: the 1 kHz e2e run
    ("e2e.", "gateway.bench_e2e:e2e"),
    ("handoff.", "gateway.bench_e2e:e2e"),  # measured in the same demo runs as e2e.
    ("live.", "gateway.bench_live"),
    ("bus.", "gateway.bench_fleet:benchmarks_bus"),
    ("fleet.", "gateway.bench_fleet:benchmarks_fleet"),
)


@dataclass(frozen=True)
class BenchResult:
    """One figure: ``ratio = value / peer_value`` when a peer was measured beside it."""

    name: str
    value: float
    unit: str
    peer: str | None = None
    peer_value: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.peer_value is None or self.peer_value == 0:
            return None
        return self.value / self.peer_value

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "peer": self.peer,
            "peer_value": self.peer_value,
            "ratio": self.ratio,
        }


def time_call_us(fn: Callable[[], object], *, repeat: int, warmup: int = 10) -> list[float]:
    """Wall time of ``fn()`` per call in µs, ``repeat`` samples after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(repeat):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1e3)
    return out


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def p99(xs: Iterable[float]) -> float:
    data = sorted(xs)
    if not data:
        raise ValueError("p99 of no samples")
    k = min(len(data) - 1, round(0.99 * (len(data) - 1)))
    return float(data[k])


def selected_modules(only: str | None) -> list[str]:
    """The bench modules whose prefix could match ``only`` (all when None), deduplicated."""
    seen: list[str] = []
    for prefix, module in BENCH_MODULES:
        if only is not None and not (prefix.startswith(only) or only.startswith(prefix)):
            continue
        if module not in seen:
            seen.append(module)
    return seen


def run(only: str | None, quick: bool, progress: Callable[[str], None] | None = None
        ) -> list[BenchResult]:
    results: list[BenchResult] = []
    for target in selected_modules(only):
        path, _, func = target.partition(":")
        module = importlib.import_module(path)
        if progress:
            progress(f"bench: {target}")
        fn = getattr(module, func or "benchmarks")
        # figures measured in the same runs as the selected ones come along
        along = getattr(fn, "companions", ())
        for res in fn(quick):
            if only is None or res.name.startswith(only) or res.name in along:
                results.append(res)
                if progress:
                    progress(f"  {res.name} = {res.value:.4g} {res.unit}")
    return results
