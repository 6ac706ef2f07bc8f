"""``gridtwin --version`` and ``gridtwin bench --markdown`` (the table docs/measured.md pastes)."""

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
