"""``gridtwin bench --json``: one JSON list of {name, value, unit, peer, peer_value, ratio}."""

from __future__ import annotations

import importlib
import json

import pytest

from gateway import bench
from gateway.cli import main


def test_every_registered_bench_target_exists() -> None:
    for prefix, target in bench.BENCH_MODULES:
        path, _, func = target.partition(":")
        module = importlib.import_module(path)
        assert callable(getattr(module, func or "benchmarks")), target
        assert prefix.endswith(".")


def test_bench_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--only", "decode.", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out] == ["decode.gtnet_skt_300", "decode.c37118_data_8pmu"]
    for r in out:
        assert set(r) == {"name", "value", "unit", "peer", "peer_value", "ratio"}
        assert r["value"] > 0 and r["unit"] == "us"
        # the peer was measured beside it, so the ratio is exactly value / peer_value
        assert r["peer"] and r["ratio"] == pytest.approx(r["value"] / r["peer_value"])


def test_bench_only_that_matches_nothing_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "nosuch.", "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == []


def _same_run(quick: bool) -> list[bench.BenchResult]:
    """A bench function whose run also measures a figure named outside its prefix."""
    return [bench.BenchResult("x.latency", 1.0, "ms"),
            bench.BenchResult("y.cpu_us", 2.0, "us"),
            bench.BenchResult("y.other", 3.0, "us")]


_same_run.companions = ("y.cpu_us",)  # type: ignore[attr-defined]


def test_figures_of_the_same_run_come_along(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--only x`` keeps what the selected run declares as measured with it (the 1 kHz
    e2e run's CPU per snapshot), and nothing else of other prefixes."""
    monkeypatch.setattr(bench, "BENCH_MODULES", (("x.", "test_bench_contract:_same_run"),))
    assert [r.name for r in bench.run("x", quick=True)] == ["x.latency", "y.cpu_us"]
    assert [r.name for r in bench.run(None, quick=True)] == ["x.latency", "y.cpu_us",
                                                            "y.other"]
