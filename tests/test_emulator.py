"""The software RTDS on real loopback sockets: count, order and content against the trace."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import TwinConfig, load_config
from hil.emulator import Emulator, EmulatorError, EmulatorRunner, retarget, run_in_thread
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace, save_trace

STEPS = 120
UDP_STREAMS = ("pmu", "scada", "weather")


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def trace() -> Trace:
    # late morning: PV producing; some bad and missing values so NaN goes on the wire
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=STEPS / 3600, step_s=1.0,
                                   bad_pct=5, missing_pct=2, seed=3))


def udp_sinks(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out


def drain(sock: socket.socket) -> list[tuple[bytes, tuple[str, int]]]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recvfrom(65536))
        except BlockingIOError:
            return out


def skt_codec(cfg: TwinConfig, name: str) -> GtnetSktCodec:
    s = cfg.stream(name)
    return GtnetSktCodec([p.type for p in s.points], header=s.header)


def expected_values(cfg: TwinConfig, name: str, row: np.ndarray, step: int) -> np.ndarray:
    """What the stream's points carry, as float32 on the wire (NaN stays NaN)."""
    out = []
    for p in cfg.stream(name).points:
        if p.channel is None:
            out.append(0.0)
        else:
            out.append(float(np.float32(row[p.channel] / p.scale)))
    return np.array(out)


def test_udp_streams_carry_the_trace(cfg: TwinConfig, trace: Trace) -> None:
    sinks = udp_sinks(3)
    urls = {n: f"udp://127.0.0.1:{s.getsockname()[1]}" for n, s in zip(UDP_STREAMS, sinks,
                                                                         strict=True)}
    c = retarget(cfg, urls)
    em = Emulator(c, trace, rate_hz=500.0)
    summary = EmulatorRunner(em, steps=STEPS).run()
    try:
        assert summary.steps == STEPS
        assert summary.faults == {} and summary.fault_log == []
        for name, sink in zip(UDP_STREAMS, sinks, strict=True):
            got = drain(sink)
            assert len(got) == STEPS == summary.streams[name].frames
            codec = skt_codec(cfg, name)
            for k, (data, addr) in enumerate(got):
                assert addr[0] == "127.0.0.1"
                f = codec.parse(data, 0.0)
                assert f.seq == k  # in order, none missing
                assert f.ts == pytest.approx(trace.time[k], abs=1e-6)
                want = expected_values(cfg, name, trace.measured[k], k)
                np.testing.assert_array_equal(f.values, want)  # NaN where missing
        assert np.isnan(trace.measured).any()
        assert set(summary.pacing_us) == {"p50", "p99", "max", "mean"}
        # the adaptive spin margin stays within its clamp (floor .. spin_s = 500 µs)
        assert summary.spin_us is not None and 0 < summary.spin_us <= 500
    finally:
        for s in sinks:
            s.close()


def test_start_step_and_lower_rate_stream(cfg: TwinConfig, trace: Trace) -> None:
    import dataclasses

    sinks = udp_sinks(3)
    urls = {n: f"udp://127.0.0.1:{s.getsockname()[1]}" for n, s in zip(UDP_STREAMS, sinks,
                                                                         strict=True)}
    c = retarget(cfg, urls)
    # the weather stream at a fifth of the rate: every 5th step
    c.streams = [dataclasses.replace(s, rate_hz=10.0) if s.name == "weather" else s
                 for s in c.streams]
    em = Emulator(c, trace, start_step=20)
    summary = EmulatorRunner(em, steps=30, fast=True).run()
    try:
        pmu = [skt_codec(cfg, "pmu").parse(d, 0.0).seq for d, _ in drain(sinks[0])]
        wx = [skt_codec(cfg, "weather").parse(d, 0.0).seq for d, _ in drain(sinks[2])]
        assert pmu == list(range(20, 50))
        assert wx == list(range(20, 50, 5))
        assert summary.streams["weather"].frames == 6
        assert summary.pacing_us == {}  # --fast: no schedule
        assert summary.spin_us is None
    finally:
        for s in sinks:
            s.close()


def test_gtnet_tcp_server(cfg: TwinConfig, trace: Trace) -> None:
    # the GTNET card is the TCP server: the gateway connects to it
    c = retarget(cfg, {"scada": "tcp://127.0.0.1:0"}, disable=("pmu", "weather"))
    em = Emulator(c, trace, rate_hz=500.0)
    runner = EmulatorRunner(em, steps=50, wait_clients_s=30.0)
    port = runner.open()["scada"][1]
    th, result = run_in_thread(runner)
    codec = skt_codec(cfg, "scada")
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as cl:
        while True:
            chunk = cl.recv(65536)
            if not chunk:  # the emulator closes the connection at the end of the run
                break
            buf += chunk
    th.join(30)
    assert "error" not in result, result.get("error")
    assert len(buf) == 50 * codec.size
    frames = [codec.parse(bytes(buf[i:i + codec.size]), 0.0)
              for i in range(0, len(buf), codec.size)]
    assert [f.seq for f in frames] == list(range(50))
    np.testing.assert_array_equal(frames[7].values,
                                  expected_values(cfg, "scada", trace.measured[7], 7))
    assert result["summary"].streams["scada"].clients == 1


def test_wait_clients_times_out_without_client(cfg: TwinConfig, trace: Trace) -> None:
    c = retarget(cfg, {"scada": "tcp://127.0.0.1:0"}, disable=("pmu", "weather"))
    runner = EmulatorRunner(Emulator(c, trace), steps=5, wait_clients_s=0.05)
    with pytest.raises(EmulatorError, match="no client"):
        runner.run()


def test_bad_inputs(cfg: TwinConfig, trace: Trace) -> None:
    with pytest.raises(EmulatorError, match="start step"):
        Emulator(cfg, trace, start_step=STEPS)
    with pytest.raises(EmulatorError, match="looping needs"):
        EmulatorRunner(Emulator(cfg, trace, loop=True))
    with pytest.raises(EmulatorError, match="timestamps"):
        Emulator(cfg, trace, timestamps="gps")
    short = Trace(**{**trace.__dict__, "measured": trace.measured[:, :10]})
    with pytest.raises(EmulatorError, match="channels"):
        Emulator(cfg, short)


def test_loop_wraps_rows_and_shifts_time(cfg: TwinConfig, trace: Trace) -> None:
    em = Emulator(cfg, trace, loop=True)
    codec = skt_codec(cfg, "pmu")
    plan = em.plans[0]
    f0 = codec.parse(em.clean_frame(plan, 3), 0.0)
    f1 = codec.parse(em.clean_frame(plan, STEPS + 3), 0.0)
    np.testing.assert_array_equal(f0.values, f1.values)
    assert f1.seq == STEPS + 3
    assert f0.ts is not None and f1.ts is not None
    assert f1.ts - f0.ts == pytest.approx(STEPS * trace.step_s)


def test_cli_emulate_json_and_fault_log(cfg: TwinConfig, trace: Trace, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    sinks = udp_sinks(3)
    text = cfg.text
    for i, s in enumerate(sinks):
        text = text.replace(f"udp://127.0.0.1:710{i}", f"udp://127.0.0.1:{s.getsockname()[1]}")
    conf = tmp_path / "twin.toml"
    conf.write_text(text)
    tpath = save_trace(trace, tmp_path / "t.npz")
    log = tmp_path / "faults.jsonl"
    try:
        rc = main(["emulate", "--config", str(conf), "--scenario", str(tpath), "--steps", "60",
                   "--rate", "1000", "--loss", "10", "--seed", "5", "--fault-log", str(log),
                   "--json"])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        lost = [json.loads(line) for line in log.read_text().splitlines()]
        assert lost and all(r["kind"] == "loss" for r in lost)
        assert out["faults"] == {"loss": len(lost)}
        assert out["steps"] == 60
        got = {n: [skt_codec(cfg, n).parse(d, 0.0).seq for d, _ in drain(s)]
               for n, s in zip(UDP_STREAMS, sinks, strict=True)}
        for n in UDP_STREAMS:
            dropped = {r["seq"] for r in lost if r["stream"] == n}
            assert got[n] == [k for k in range(60) if k not in dropped]
            assert out["streams"][n]["frames"] == len(got[n])
    finally:
        for s in sinks:
            s.close()


def test_realtime_run_places_its_thread_and_gives_the_cpus_back(
        cfg: TwinConfig, trace: Trace) -> None:
    """``realtime``: SCHED_FIFO on the emulator's CPU (gateway.realtime: never the
    estimator's), both given back after the run (where the OS allows real-time at all;
    the summary says whether it did)."""
    import os

    from gateway.realtime import cpu_for

    sinks = udp_sinks(3)
    urls = {n: f"udp://127.0.0.1:{s.getsockname()[1]}" for n, s in zip(UDP_STREAMS, sinks,
                                                                         strict=True)}
    before = (os.sched_getscheduler(0), os.sched_getaffinity(0))
    seen: list[set[int]] = []
    em = Emulator(retarget(cfg, urls), trace, rate_hz=500.0)
    runner = EmulatorRunner(em, steps=20, realtime=True,
                            progress=lambda _: seen.append(os.sched_getaffinity(0)))
    try:
        summary = runner.run()
    finally:
        for s in sinks:
            s.close()
    assert (os.sched_getscheduler(0), os.sched_getaffinity(0)) == before
    want = cpu_for("emulator", before[1])
    if summary.realtime and want is not None:
        assert seen and all(cpus == {want} for cpus in seen)
