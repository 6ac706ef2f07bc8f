"""The emulator as a C37.118 PMU server, talked to by a plain socket with the gateway's codecs."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from gateway.codecs import c37118 as c37
from gateway.codecs.stream import StreamReassembler
from gateway.config import TwinConfig, load_config
from hil.c37server import NOMINAL_HZ, C37Stream, PmuSession
from hil.emulator import Emulator, EmulatorRunner, retarget, run_in_thread
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace

STEPS = 60


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=STEPS / 3600, step_s=1.0,
                                   missing_pct=2, seed=5))


def check_data(frame: c37.DataFrame, cfg: TwinConfig, row: np.ndarray) -> None:
    """Phasor k of the stream = (channel kV/kA * 1000) at the channel angle."""
    s = cfg.stream("pmu-c37")
    phs = [ph for p in s.pmus for ph in p.phasors]
    want = np.array([row[ph.mag] * ph.wire_factor * np.exp(1j * row[ph.ang]) for ph in phs])
    got = frame.phasors
    ok = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), ok)  # NaN where the trace is missing
    np.testing.assert_allclose(np.abs(got[ok]), np.abs(want[ok]), rtol=1e-6)
    np.testing.assert_allclose(np.angle(got[ok]), np.angle(want[ok]), atol=1e-6)
    np.testing.assert_allclose(frame.freq, NOMINAL_HZ)


def test_tcp_pmu_server_answers_commands_and_streams(cfg: TwinConfig, trace: Trace) -> None:
    c = retarget(cfg, {"pmu-c37": "tcp://127.0.0.1:0"}, enable=("pmu-c37",),
                 disable=("pmu", "scada", "weather"))
    em = Emulator(c, trace, rate_hz=200.0)
    runner = EmulatorRunner(em, steps=STEPS, wait_clients_s=30.0)
    port = runner.open()["pmu-c37"][1]
    th, result = run_in_thread(runner)
    idcode = cfg.stream("pmu-c37").idcode
    reasm = StreamReassembler()
    frames: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as cl:

        def ask(cmd: int) -> c37.Frame:
            cl.sendall(c37.command(idcode, cmd))
            while not frames:
                frames.extend(reasm.feed(cl.recv(65536)))
            return c37.parse(frames.pop(0), 0.0)

        cfg1 = ask(c37.CMD_CFG1)
        cfg2 = ask(c37.CMD_CFG2)
        cfg3 = ask(c37.CMD_CFG3)
        head = ask(c37.CMD_HEADER)
        assert isinstance(cfg1, c37.ConfigFrame) and cfg1.frame_type == c37.FRAME_CFG1
        assert isinstance(cfg3, c37.ConfigFrame) and cfg3.frame_type == c37.FRAME_CFG3
        assert isinstance(head, c37.HeaderFrame) and "pmu-c37" in head.text
        assert isinstance(cfg2, c37.ConfigFrame)
        assert cfg2.idcode == idcode and cfg2.data_rate == 200
        assert [p.station for p in cfg2.pmus] == [p.station for p in
                                                  cfg.stream("pmu-c37").pmus]
        assert [p.idcode for p in cfg2.pmus] == [p.idcode for p in
                                                 cfg.stream("pmu-c37").pmus]
        assert cfg2.pmus[1].phunit[0][0] == 0 and cfg2.pmus[1].phunit[1][0] == 1  # V, I
        assert [p.phasor_names for p in cfg3.pmus] == [p.phasor_names for p in cfg2.pmus]
        cl.sendall(c37.command(idcode, c37.CMD_START))
        while True:  # data until the emulator ends the run and closes
            chunk = cl.recv(65536)
            if not chunk:
                break
            frames.extend(reasm.feed(chunk))
    th.join(30)
    assert "error" not in result, result.get("error")
    data = [c37.parse(f, 0.0, cfg2) for f in frames]
    assert len(data) == STEPS
    assert all(isinstance(d, c37.DataFrame) for d in data)
    times = [float(d.time or 0.0) for d in data if isinstance(d, c37.DataFrame)]
    np.testing.assert_allclose(times, trace.time[:STEPS], atol=1e-6)
    for k in (0, 17, STEPS - 1):
        d = data[k]
        assert isinstance(d, c37.DataFrame)
        check_data(d, cfg, trace.measured[k])
    summary = result["summary"]
    assert summary.streams["pmu-c37"].frames == STEPS
    assert summary.streams["pmu-c37"].control == 4


def test_udp_pmu_sends_cfg2_then_data_and_answers(cfg: TwinConfig, trace: Trace) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(30)
    c = retarget(cfg, {"pmu-c37": f"udp://127.0.0.1:{sink.getsockname()[1]}"},
                 enable=("pmu-c37",), disable=("pmu", "scada", "weather"))
    em = Emulator(c, trace, rate_hz=50.0, loop=True)
    runner = EmulatorRunner(em, steps=100_000)  # stopped by the test below
    th, result = run_in_thread(runner)
    try:
        first, addr = sink.recvfrom(65536)
        cfg2 = c37.parse(first, 0.0)
        assert isinstance(cfg2, c37.ConfigFrame) and cfg2.frame_type == c37.FRAME_CFG2
        d0 = c37.parse(sink.recv(65536), 0.0, cfg2)
        assert isinstance(d0, c37.DataFrame)
        check_data(d0, cfg, trace.measured[0])
        # a PDC's command to the PMU's source address is answered there
        sink.sendto(c37.command(cfg2.idcode, c37.CMD_HEADER), addr)
        while True:
            raw = sink.recv(65536)
            if c37.frame_type_of(raw) == c37.FRAME_HEADER:
                break
        assert isinstance(c37.parse(raw, 0.0), c37.HeaderFrame)
    finally:
        runner.stop()
        th.join(30)
        sink.close()
    assert "error" not in result, result.get("error")
    assert result["summary"].streams["pmu-c37"].control == 2  # CFG-2 + header


def test_session_state_machine(cfg: TwinConfig) -> None:
    src = C37Stream(cfg.stream("pmu-c37"), 50.0)
    s = PmuSession(src)
    assert not s.streaming
    assert s.receive(c37.command(1, c37.CMD_START), 0.0) == []
    assert s.streaming
    # garbage, split frames and an unknown command are survived
    raw = b"\x00\x01" + c37.command(1, c37.CMD_STOP) + c37.command(1, 7)
    assert s.receive(raw[:5], 0.0) == []
    assert s.receive(raw[5:], 0.0) == []
    assert not s.streaming
    assert s.commands == {"start": 1, "stop": 1, "cmd7": 1}
    out = s.receive(c37.command(1, c37.CMD_CFG2), 0.0)
    assert len(out) == 1 and c37.frame_type_of(out[0]) == c37.FRAME_CFG2
    # a data frame where commands are expected is counted as an error, not a crash
    src_frame = src.data_frame(np.ones(len(cfg.channels)), 1e9)
    assert s.receive(src_frame, 0.0) == []
    assert s.errors == 1


def _data_of(src: C37Stream, cfg: TwinConfig, k: int = 0) -> c37.DataFrame:
    values = 1.0 + 0.01 * np.arange(len(cfg.channels)) + 0.001 * k
    f = c37.parse(src.data_frame(values, 1e9 + k / 50), 0.0, src.cfg2)
    assert isinstance(f, c37.DataFrame)
    return f


def test_stat_bits_on_demand(cfg: TwinConfig) -> None:
    src = C37Stream(cfg.stream("pmu-c37"), 50.0)
    assert not _data_of(src, cfg).stat.any()
    src.set_stat(0x8000 | 0x2000, "PMU6")
    stat = _data_of(src, cfg).stat
    assert list(stat) == [0, 0, 0xA000, 0, 0, 0, 0]
    assert _data_of(src, cfg).stat_flags(2).data_error == 2
    assert _data_of(src, cfg).stat_flags(2).sync_lost
    src.set_stat(0x0800)  # every PMU
    assert list(_data_of(src, cfg).stat) == [0x0800] * 7
    with pytest.raises(ValueError, match="no PMU 'PMU99'"):
        src.set_stat(0, "PMU99")


def test_pmus_in_another_order(cfg: TwinConfig) -> None:
    s = cfg.stream("pmu-c37")
    order = [3, 0, 6, 1, 5, 2, 4]
    src = C37Stream(s, 50.0, order=order)
    assert [p.station for p in src.cfg2.pmus] == [s.pmus[k].station for k in order]
    cfg2 = c37.parse(src.config_frame(c37.FRAME_CFG2, 1e9), 0.0)
    assert isinstance(cfg2, c37.ConfigFrame)
    assert [p.idcode for p in cfg2.pmus] == [s.pmus[k].idcode for k in order]
    f = _data_of(src, cfg, 2)
    values = 1.0 + 0.01 * np.arange(len(cfg.channels)) + 0.002
    # wire block b carries config PMU order[b]: its first phasor is that PMU's voltage
    first = np.cumsum([0] + [len(s.pmus[k].phasors) for k in order])[:-1]
    for b, k in enumerate(order):
        v = s.pmus[k].phasors[0]
        assert abs(f.phasors[first[b]]) == pytest.approx(values[v.mag] * v.wire_factor,
                                                         rel=1e-6)
    with pytest.raises(ValueError, match="not a permutation"):
        C37Stream(s, 50.0, order=[0, 0, 1, 2, 3, 4, 5])


def test_config_change_mid_stream(cfg: TwinConfig) -> None:
    src = C37Stream(cfg.stream("pmu-c37"), 50.0)
    s = PmuSession(src, streaming=True)
    src.set_stat(0x0800, "PMU1")
    src.announce_config_change()  # STAT bit 10 ahead of the change, on top of set bits
    assert list(_data_of(src, cfg).stat) == [0x0C00] + [0x0400] * 6
    (before,) = s.receive(c37.command(1, c37.CMD_CFG2), 0.0)
    old = c37.parse(before, 0.0)
    assert isinstance(old, c37.ConfigFrame) and {p.cfgcnt for p in old.pmus} == {0}
    new = src.change_config(order=[6, 5, 4, 3, 2, 1, 0])
    assert {p.cfgcnt for p in new.pmus} == {1} and new.pmus[0].station == "PMU29"
    assert list(_data_of(src, cfg).stat) == [0] * 6 + [0x0800]  # bit 10 cleared
    (after,) = s.receive(c37.command(1, c37.CMD_CFG2), 0.0)
    cfg2 = c37.parse(after, 0.0)
    assert isinstance(cfg2, c37.ConfigFrame)
    assert {p.cfgcnt for p in cfg2.pmus} == {1} and cfg2.pmus[0].station == "PMU29"


def test_pmu_silent_on_an_open_connection(cfg: TwinConfig) -> None:
    src = C37Stream(cfg.stream("pmu-c37"), 50.0)
    s = PmuSession(src)
    s.receive(c37.command(1, c37.CMD_START), 0.0)
    assert s.streaming
    s.go_silent()
    assert not s.streaming  # the emulator sends it no data
    assert s.receive(c37.command(1, c37.CMD_CFG2), 0.0) == []  # nor answers
    assert s.ignored == 1 and "cfg2" not in s.commands
    s.resume()
    assert s.streaming and len(s.receive(c37.command(1, c37.CMD_CFG2), 0.0)) == 1


def test_disturb_applies_behaviours_by_name(cfg: TwinConfig) -> None:
    from hil.c37server import PMU_BEHAVIOURS, disturb

    src = C37Stream(cfg.stream("pmu-c37"), 50.0)
    peers = [PmuSession(src, streaming=True), PmuSession(src, streaming=True)]
    disturb(src, peers, "stat", word=0x2000, station="PMU3")
    assert list(_data_of(src, cfg).stat) == [0, 0x2000, 0, 0, 0, 0, 0]
    disturb(src, peers, "cfg_announce")
    assert all(_data_of(src, cfg).stat & 0x0400)
    disturb(src, peers, "pmu_order", order=[1, 0, 2, 3, 4, 5, 6])
    assert src.cfgcnt == 1 and src.cfg2.pmus[0].station == "PMU3"
    disturb(src, peers, "cfg_change")
    assert src.cfgcnt == 2 and src.cfg2.pmus[0].station == "PMU3"
    disturb(src, peers, "silent")
    assert not any(p.streaming for p in peers)
    disturb(src, peers, "resume")
    assert all(p.streaming for p in peers)
    with pytest.raises(ValueError, match="needs an order"):
        disturb(src, peers, "pmu_order")
    with pytest.raises(ValueError, match="unknown PMU behaviour 'reboot'"):
        disturb(src, peers, "reboot")
    assert len(PMU_BEHAVIOURS) == 6
