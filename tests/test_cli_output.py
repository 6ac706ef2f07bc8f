"""What the CLI prints for people: `--version`, `bench --markdown`, the demo summary."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import pytest

from gateway.bench import BenchResult
from gateway.cli import main
from gateway.cli_bench import markdown_table


def test_version_prints_the_installed_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gridtwin {metadata.version('gridtwin')}"


def _rows(table: str) -> list[list[str]]:
    lines = table.strip().splitlines()
    assert lines[0] == "| name | value | unit | peer | peer value | ratio |"
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    # split on the column bars, not on an escaped ``\|`` inside a cell
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]


def test_markdown_table_rows() -> None:
    results = [
        BenchResult("decode.x", 3.0, "us", "construct | parse", 600.0),
        BenchResult("ingest.udp", 30000.0, "frames/s"),
    ]
    rows = _rows(markdown_table(results))
    assert rows[0] == ["`decode.x`", "3", "us", "construct \\| parse", "600", "0.005"]
    # no peer: the peer columns stay empty, never a placeholder that reads like a figure
    assert rows[1][:3] == ["`ingest.udp`", "3e+04", "frames/s"]
    assert rows[1][3:] == ["", "", ""]


def test_bench_markdown_from_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--only", "decode.", "--markdown"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["`decode.gtnet_skt_300`", "`decode.c37118_data_8pmu`"]
    for name, value, unit, peer, peer_value, ratio in rows:
        assert unit == "us" and peer, name
        assert float(ratio) == pytest.approx(float(value) / float(peer_value), rel=2e-3)


def test_bench_json_and_markdown_exclude_each_other(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--json", "--markdown"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def _demo_result(**over: object) -> dict[str, object]:
    r: dict[str, object] = {
        "seconds": 30.0, "rate_hz": 50.0, "frames_sent": 4500, "frames_received": 4500,
        "frames_lost": 0, "snapshots": 1500, "states": 1497, "deadline_misses": 2,
        "skipped_snapshots": {"superseded": 3, "stale": 0, "no_estimator": 0},
        "se_vm_mape_pct": 0.0122, "se_va_rmse_rad": 0.00173, "bad_data_missed_pct": 0.36,
        "bad_data_false_pct": 0.0156, "pv_mape_pct": 4.11, "pv_forecasts_scored": 52,
        "e2e_latency_ms": {"p50": 1.77, "p99": 4.76, "max": 14.6}, "historian_rows": 24467,
        "quality": "QualityStage", "restart": None,
        "streams": [{"stream": "pmu", "received": 1500, "lost": 0, "late": 1,
                     "rate_hz": 50.0}],
    }
    r.update(over)
    return r


def test_demo_summary_is_words_not_python() -> None:
    from gateway.cli_demo import human

    text = human(_demo_result())
    # no dict or class names leak into what a person reads
    assert "{" not in text and "QualityStage" not in text and "quality stage" not in text
    assert "deadline misses 2, skipped 3 superseded (newest wins)" in text
    assert "over 52 forecasts" in text
    assert "10 weather samples 2 s apart" in text
    assert "pmu 1500 frames received; 1 late" in text
    # the trace's 1990 timestamps make a one-way delay meaningless: never a figure
    assert "One-way delay is not shown" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_demo_summary_names_a_stage_that_is_off() -> None:
    from gateway.cli_demo import human

    text = human(_demo_result(quality="PassThroughQuality",
                              skipped_snapshots={"superseded": 0, "stale": 0}))
    assert "quality stage off: values passed through unchecked" in text
    assert "none skipped" in text


def test_emulate_help_shows_no_default_for_the_required_scenario(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["emulate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    block = text[text.index("  --scenario TRACE"):]
    block = block[:block.index("\n  --", 1)]
    assert "trace .npz" in block and "default" not in block
