"""Metrics: Prometheus names, the HTTP endpoint (/metrics, /state, /summary) on a real
socket, and ``promtool check metrics`` on the real endpoint's output."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest

from gateway.metrics import METRICS, Metrics, MetricsServer, metric_names
from gateway.stats import StreamStats


async def http_get(port: int, path: str, *, keep_alive: bool = False) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = "keep-alive" if keep_alive else "close"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length")))
    body = await reader.readexactly(length)
    writer.close()
    return status, body


def populated() -> tuple[Metrics, list[StreamStats]]:
    s1, s2 = StreamStats("pmu"), StreamStats("scada")
    for k in range(5):
        s1.frame(k, 100.0 + k * 0.02, 100.001 + k * 0.02, 192)
    s2.frame(1, None, 1.0, 336)
    s2.frame(4, None, 1.02, 336)
    s2.decode_error()
    m = Metrics(streams=lambda: [s1, s2], channel_kinds={"pmu": 44, "scada": 80})
    m.info.info({"version": "0", "config": "ieee33", "digest": "abc"})
    m.decode.labels("pmu").observe(4e-6)
    for h in (m.quality, m.handoff, m.estimate, m.e2e):
        h.observe(0.0005)
    m.count_flags(1, [3, 0, 3, 1, 0, 0, 0, 0, 0])
    m.deadline_misses.inc()
    m.restarts.inc()
    m.skipped.labels("superseded").inc(2)
    return m, [s1, s2]


async def test_endpoint_serves_metrics_state_and_summary() -> None:
    m, _ = populated()
    state: dict[str, object] | None = None
    srv = MetricsServer(m, state=lambda: state, summary=lambda: {"snapshots": 3})
    host, port = await srv.start("127.0.0.1:0")
    assert host == "127.0.0.1"
    try:
        status, body = await http_get(port, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'gridtwin_frames_total{stream="pmu"} 5.0' in text
        assert 'gridtwin_frame_gaps_total{stream="scada"} 2.0' in text
        assert 'gridtwin_decode_errors_total{stream="scada"} 1.0' in text
        assert 'gridtwin_flags_total{flag="bad",kind="scada"} 3.0' in text
        assert 'gridtwin_flags_total{flag="bad",kind="pmu"} 0.0' in text  # pre-initialised
        assert 'gridtwin_channels{kind="scada"} 80.0' in text
        assert "gridtwin_e2e_latency_seconds_bucket" in text
        assert "gridtwin_estimator_restarts_total 1.0" in text
        assert (await http_get(port, "/state"))[0] == 503
        state = {"seq": 1, "vm_pu": [1.0]}
        status, body = await http_get(port, "/state")
        assert status == 200 and json.loads(body) == state
        status, body = await http_get(port, "/summary")
        assert json.loads(body) == {"snapshots": 3}
        assert (await http_get(port, "/nope"))[0] == 404
        # keep-alive: two requests on one connection
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(3) == b"ok\n"
        writer.close()
    finally:
        await srv.close()


def test_every_declared_name_is_exported_and_conventional() -> None:
    m, _ = populated()
    text = m.exposition().decode()
    families = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}
    for name, kind, _labels, _doc in METRICS:
        assert name in families, name
        assert name.startswith("gridtwin_")
        if kind == "counter":
            assert name.endswith("_total")
        if kind == "histogram":
            assert name.endswith("_seconds")
    assert len(set(metric_names())) == len(METRICS)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus)")
async def test_promtool_accepts_the_real_endpoint_output() -> None:
    m, _ = populated()
    srv = MetricsServer(m, state=lambda: None)
    _, port = await srv.start("127.0.0.1:0")
    try:
        status, body = await http_get(port, "/metrics")
    finally:
        await srv.close()
    assert status == 200
    res = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_observe_many_matches_observe_one_by_one() -> None:
    """The gateway's batched latency flush gives the same exposition as observe()."""
    from gateway.metrics import observe_many

    xs = [0.0, 1e-5, 1.5e-5, 2.5e-5, 3e-4, 1e-3, 0.7, 1.0, 3.0, 5e-6, 2e-3]
    a, b = Metrics(), Metrics()
    for x in xs:
        a.e2e.observe(x)
        a.decode.labels("pmu").observe(x)
    observe_many(b.e2e, xs)
    observe_many(b.decode.labels("pmu"), xs)
    observe_many(b.quality, [])

    def samples(m: Metrics) -> list[str]:
        return [ln for ln in m.exposition().decode().splitlines() if "_created" not in ln]
    assert samples(a) == samples(b)


def test_scrape_hooks_run_before_the_exposition() -> None:
    m = Metrics()
    m.before_scrape.append(lambda: m.states.inc(3))
    assert "gridtwin_states_total 3.0" in m.exposition().decode()
