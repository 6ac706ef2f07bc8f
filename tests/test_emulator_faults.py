"""Fault injection: seeded, logged, and what arrives on the wire agrees with the log."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs import c37118 as c37
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import TwinConfig, load_config
from gateway.errors import BadCrc, FrameError, FrameSizeMismatch, FrameTooShort
from hil.bench import synthetic_trace
from hil.c37server import C37Stream
from hil.emulator import Emulator, EmulatorRunner, retarget
from hil.faults import (
    Burst,
    FaultInjector,
    FaultPlan,
    FaultRecord,
    FaultSpecError,
    malform,
    read_log,
    write_log,
)
from hil.trace import Trace

STEPS = 200


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def trace(cfg: TwinConfig) -> Trace:
    # values do not matter to the fault layer: a trace of the right shape
    return synthetic_trace(cfg, STEPS, seed=1)


def offer(plan: FaultPlan, steps: int = 500) -> tuple[FaultInjector, list[list[int]]]:
    inj = FaultInjector(plan)
    sent = []
    for k in range(steps):
        sent.append([e.seq for e in inj.apply(k, "s", k, b"x" * 16, fmt="gtnet-skt",
                                               transport="udp")])
    return inj, sent


def test_same_seed_same_faults() -> None:
    plan = FaultPlan(seed=4, loss_pct=5, dup_pct=5, reorder_pct=5, malformed_pct=5,
                     foreign_pct=5)
    a, sa = offer(plan)
    b, sb = offer(plan)
    c, _ = offer(FaultPlan(seed=5, loss_pct=5, dup_pct=5, reorder_pct=5, malformed_pct=5,
                           foreign_pct=5))
    assert a.log == b.log and sa == sb
    assert a.log != c.log
    assert set(a.summary()) == {"loss", "duplicate", "reorder", "malformed", "foreign"}


def test_loss_rate_and_bursts() -> None:
    inj, sent = offer(FaultPlan(seed=1, loss_pct=10, bursts=(Burst(100, 20),)), 2000)
    lost = {r.seq for r in inj.log if r.kind == "loss"}
    burst = {r.seq for r in inj.log if r.kind == "burst"}
    assert burst == set(range(100, 120))
    assert 100 < len(lost) < 300  # ~10 % of 1980
    delivered = [s for step in sent for s in step]
    assert delivered == [k for k in range(2000) if k not in lost | burst]


def test_burst_parse() -> None:
    assert Burst.parse("10:5") == Burst(10, 5, None)
    assert Burst.parse("10:5:pmu").covers(12, "pmu")
    assert not Burst.parse("10:5:pmu").covers(12, "scada")
    for bad in ("10", "a:5", "10:0", "-1:3"):
        with pytest.raises(FaultSpecError):
            Burst.parse(bad)
    with pytest.raises(FaultSpecError):
        FaultPlan(loss_pct=120)


def test_malformed_frames_fail_the_gateway_codecs(cfg: TwinConfig, trace: Trace) -> None:
    s = cfg.stream("pmu")
    codec = GtnetSktCodec([p.type for p in s.points], header=True)
    frame = codec.build(np.zeros(len(s.points)), seq=1, ts=1e9)
    for kind in ("truncated", "wrong_length"):
        for u in (0.0, 0.3, 0.99):
            with pytest.raises(FrameError):
                codec.parse(malform(frame, kind, "gtnet-skt", u), 0.0)
    c = C37Stream(cfg.stream("pmu-c37"), 50.0)
    data = c.data_frame(np.asarray(trace.measured[0]), 1e9)
    c37.parse(data, 0.0, c.cfg2)  # the clean frame parses
    with pytest.raises(BadCrc):
        c37.parse(malform(data, "bad_crc", "c37.118", 0.5), 0.0, c.cfg2)
    with pytest.raises(FrameSizeMismatch):
        c37.parse(malform(data, "wrong_length", "c37.118", 0.5), 0.0, c.cfg2)
    with pytest.raises(FrameTooShort):
        c37.parse(malform(data, "truncated", "c37.118", 0.5), 0.0, c.cfg2)


def test_tcp_streams_keep_their_framing() -> None:
    inj = FaultInjector(FaultPlan(seed=2, malformed_pct=100, foreign_pct=100))
    frame = bytes(range(40))
    ems = inj.apply(0, "s", 0, frame, fmt="gtnet-skt", transport="tcp")
    assert [e.data for e in ems] == [frame]  # no malformed GTNET-SKT over TCP, no foreign
    assert inj.log == []


def test_fault_log_round_trip(tmp_path: Path) -> None:
    recs = [FaultRecord(3, "pmu", 3, "loss"), FaultRecord(4, "scada", 4, "malformed", "x")]
    write_log(recs, tmp_path / "f.jsonl")
    assert read_log(tmp_path / "f.jsonl") == recs


def expected_wire(log: list[FaultRecord], stream: str, steps: int) -> list[tuple[int, bool]]:
    """(seq, malformed) in wire order, rebuilt from the fault log alone."""
    by_seq: dict[int, set[str]] = {}
    for r in log:
        if r.stream == stream:
            by_seq.setdefault(r.seq, set()).add(r.kind)
    out: list[tuple[int, bool]] = []
    held: tuple[int, bool] | None = None
    for k in range(steps):
        kinds = by_seq.get(k, set())
        release = held
        held = None
        if not kinds & {"loss", "burst"}:
            bad = "malformed" in kinds
            copies = [(k, bad)] * (2 if "duplicate" in kinds else 1)
            if "reorder" in kinds:
                held = copies.pop(0)
            out += copies
        if release is not None:
            out.append(release)
    if held is not None:
        out.append(held)
    return out


def test_wire_matches_the_fault_log(cfg: TwinConfig, trace: Trace) -> None:
    """Count, order, malformed frames and foreign sources as the log says."""
    sinks = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.bind(("127.0.0.1", 0))
        sinks.append(s)
    names = ("pmu", "scada", "weather")
    c = retarget(cfg, {n: f"udp://127.0.0.1:{s.getsockname()[1]}"
                       for n, s in zip(names, sinks, strict=True)})
    plan = FaultPlan(seed=11, loss_pct=5, dup_pct=4, reorder_pct=4, malformed_pct=4,
                     foreign_pct=4, bursts=(Burst(50, 10, "scada"),))
    steps = 150
    summary = EmulatorRunner(Emulator(c, trace, rate_hz=1000.0, faults=plan),
                             steps=steps).run()
    kinds = Counter(r.kind for r in summary.fault_log)
    assert kinds == Counter(summary.faults)
    assert {"loss", "duplicate", "reorder", "malformed", "foreign", "burst"} <= set(kinds)
    try:
        for name, sink in zip(names, sinks, strict=True):
            st = cfg.stream(name)
            codec = GtnetSktCodec([p.type for p in st.points], header=True)
            sink.setblocking(False)
            genuine: list[tuple[int, bool]] = []
            foreign = 0
            while True:
                try:
                    data, addr = sink.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[0] == "127.0.0.2":
                    foreign += 1
                    codec.parse(data, 0.0)  # a well-formed frame, from the wrong source
                    continue
                assert addr[0] == "127.0.0.1"
                try:
                    genuine.append((codec.parse(data, 0.0).seq or 0, False))
                except FrameError:
                    # the log names the step of each malformed frame; order gives its seq
                    genuine.append((-1, True))
            want = expected_wire(summary.fault_log, name, steps)
            assert len(genuine) == len(want)
            assert [g[1] for g in genuine] == [w[1] for w in want]
            assert [g[0] for g in genuine if not g[1]] == [w[0] for w in want if not w[1]]
            assert foreign == sum(1 for r in summary.fault_log
                                  if r.stream == name and r.kind == "foreign")
            assert summary.streams[name].foreign == foreign
            assert summary.streams[name].frames == len(genuine)
    finally:
        for sk in sinks:
            sk.close()


def test_delay_jitter_logs_every_frame_and_loses_none(cfg: TwinConfig, trace: Trace) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sink.bind(("127.0.0.1", 0))
    c = retarget(cfg, {"pmu": f"udp://127.0.0.1:{sink.getsockname()[1]}"},
                 disable=("scada", "weather"))
    summary = EmulatorRunner(Emulator(c, trace, rate_hz=1000.0,
                                      faults=FaultPlan(seed=3, jitter_ms=3.0)),
                             steps=80).run()
    delays = [r for r in summary.fault_log if r.kind == "delay"]
    assert [r.seq for r in delays] == list(range(80))
    assert all(0.0 <= float(r.detail.split()[0]) <= 3.0 for r in delays)
    s = cfg.stream("pmu")
    codec = GtnetSktCodec([p.type for p in s.points], header=True)
    sink.setblocking(False)
    seqs: list[int] = []
    while True:
        try:
            seqs.append(int(codec.parse(sink.recv(65536), 0.0).seq or 0))
        except BlockingIOError:
            break
    sink.close()
    assert sorted(seqs) == list(range(80))  # all there; the order is the jitter's
