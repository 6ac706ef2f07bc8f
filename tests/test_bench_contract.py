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
