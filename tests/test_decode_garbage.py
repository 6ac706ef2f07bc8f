"""``gridtwin decode`` on what does not match (issue 16, item 7): random bytes end with the
implausible-values summary, a capture of garbage records and a directory are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli_decode import implausible, point_ranges
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def decode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "decode", "--config", "ieee33",
                           *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120, check=False)


def test_random_bytes_end_with_the_implausible_summary() -> None:
    res = decode("--stream", "weather", str(DATA / "random_5k.bin"))
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    n = int(last.split()[0])
    assert last == f"{n} implausible values: the point list or the byte order may not match"
    assert n > 0 and res.stdout.count("(implausible)") == n
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr


def test_json_lists_the_implausible_points() -> None:
    res = decode("--stream", "weather", "--format", "json", str(DATA / "random_5k.bin"))
    frames = [json.loads(ln) for ln in res.stdout.splitlines()]
    flagged = [f for f in frames if f.get("implausible")]
    assert flagged and all(set(f["implausible"]) <= set(f["values"]) for f in flagged)


def test_frames_the_twin_would_send_are_plausible(tmp_path: Path) -> None:
    """Nominal values of every channel of the pmu stream decode without a mark."""
    cfg = load_config("ieee33")
    s = cfg.stream("pmu")
    net = cfg.network
    vals = []
    for pt in s.points:
        ch = cfg.channels[pt.channel] if pt.channel is not None else None
        if ch is None:
            vals.append(0.0)
        elif ch.quantity == "vm" and ch.bus is not None:
            vals.append(float(net.base_kv[net.index_of(ch.bus)]) * 0.97)
        elif ch.quantity == "im":
            vals.append(0.05)
        else:
            vals.append(-0.02)
    codec = GtnetSktCodec([p.type for p in s.points], header=s.header)
    raw = tmp_path / "good.bin"
    raw.write_bytes(b"".join(codec.build(vals, seq=i, ts=1.7e9 + i) for i in range(3)))
    res = decode("--stream", "pmu", str(raw))
    assert res.returncode == 0, res.stderr
    assert "implausible" not in res.stdout + res.stderr


def test_ranges_follow_the_units() -> None:
    cfg = load_config("ieee33")
    s = cfg.stream("scada")
    ranges = point_ranges(cfg, s)
    names = [p.name for p in s.points]
    vals = [0.1] * len(names)
    assert not any(implausible(vals, ranges))
    k = names.index("flow.1-2.p")
    vals[k] = 5.98e28
    assert implausible(vals, ranges) == [i == k for i in range(len(names))]
    vals[k] = float("nan")
    assert implausible(vals, ranges)[k]


@pytest.mark.parametrize("stream", ["pmu", "pmu-c37"])
def test_capture_of_garbage_records_says_so(stream: str) -> None:
    res = decode("--stream", stream, str(DATA / "garbage_records.pcap"))
    assert res.returncode == 1
    assert "no " in res.stderr and "packet to or from port" in res.stderr
    assert "Traceback" not in res.stderr


def test_directory_is_named_as_one() -> None:
    res = decode("--stream", "pmu", str(DATA))
    assert res.returncode == 2 and "is a directory" in res.stderr
