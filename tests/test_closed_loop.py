"""Closed loop: a curtailment command changes the ground truth of the following steps."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import TwinConfig, load_config, parse_config
from hil.closedloop import ClosedLoop, CommandError
from hil.emulator import Emulator, EmulatorRunner, retarget, run_in_thread
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace

STEPS = 120
COMMANDS = """[commands]
enabled = true
url = "udp://127.0.0.1:0"
points = ["cmd_seq:int32", "pv8_curtail", "pv16_p_max_mw"]
"""


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    text = load_config("ieee33").text.replace("[commands]\nenabled = false\n", COMMANDS)
    assert COMMANDS in text
    return parse_config(text)


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=STEPS / 3600, step_s=1.0,
                                   bad_pct=5, seed=7))


def command(seq: int, pv8_fraction: float, pv16_mw: float = float("nan")) -> bytes:
    return GtnetSktCodec(["int32", "float32", "float32"], header=False).build(
        [seq, pv8_fraction, pv16_mw])


def test_resolved_truth_reproduces_the_trace(cfg: TwinConfig, trace: Trace) -> None:
    """Same injections -> the same truth: the loop's model is the scenario's."""
    cl = ClosedLoop(cfg, trace)
    states = cl.solve(np.arange(4), np.full(len(cfg.plants), np.inf))
    for k, st in enumerate(states):
        np.testing.assert_allclose(st.truth, trace.truth[k], atol=1e-8)
        np.testing.assert_allclose(st.v, trace.v[k], atol=1e-9)
        np.testing.assert_array_equal(np.isnan(st.measured), np.isnan(trace.measured[k]))


def test_command_changes_the_following_steps(cfg: TwinConfig, trace: Trace) -> None:
    em = Emulator(cfg, trace)
    assert em.closed_loop is not None
    for k in range(10):
        em.frames(k)
    rec = em.command(command(9, 0.25, 0.5), now=1.0, sent_at={9: 0.75})
    assert rec.recv_step == 10 and rec.cmd_seq == 9
    assert rec.rtt_ms == pytest.approx(250.0)
    assert rec.caps_mw["pv8"] == pytest.approx(0.25) and rec.caps_mw["pv16"] == 0.5
    for k in range(10, 20):
        em.frames(k)
    i8 = cfg.network.index_of(cfg.plant("pv8").node)
    vm8 = cfg.channel_index["pmu6.vm"]
    for k in range(10):  # before the command: the trace itself
        np.testing.assert_array_equal(em.truth(k), trace.truth[k])
    for k in range(10, 20):
        pv = em.pv_mw(k)
        assert pv[0] == pytest.approx(0.25) and trace.pv_mw[k, 0] > 0.25
        assert pv[1] == pytest.approx(0.5) and trace.pv_mw[k, 1] > 0.5
        np.testing.assert_array_equal(pv[2:], trace.pv_mw[k, 2:])
        # less PV at bus 8: lower voltage at the plant node and at bus 6
        assert abs(em.v(k)[i8]) < abs(trace.v[k, i8]) - 1e-4
        assert em.truth(k)[vm8] < trace.truth[k, vm8]
        # measured = new truth + the trace's own error, value by value
        st = em.ground_truth[k]
        np.testing.assert_allclose(st.measured - st.truth,
                                   trace.measured[k] - trace.truth[k], atol=1e-9)
    # lifting the cap restores the trace
    em.command(command(19, 1.0, float("inf")), now=2.0)
    em.frames(20)
    np.testing.assert_array_equal(em.truth(20), trace.truth[20])


def test_bad_command_frames(cfg: TwinConfig, trace: Trace) -> None:
    em = Emulator(cfg, trace)
    with pytest.raises(CommandError, match="bytes"):
        em.command(b"\x00" * 5, now=0.0)
    # with the 3-word header the same points are accepted
    hdr = GtnetSktCodec(["int32", "float32", "float32"], header=True).build(
        [3, 0.5, float("nan")], seq=3, ts=1e9)
    assert em.command(hdr, now=0.0).caps_mw["pv8"] == pytest.approx(0.5)


def test_closed_loop_over_sockets(cfg: TwinConfig, trace: Trace) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(30)
    c = retarget(cfg, {"pmu": f"udp://127.0.0.1:{sink.getsockname()[1]}"},
                 disable=("scada", "weather"))
    em = Emulator(c, trace, rate_hz=50.0)
    runner = EmulatorRunner(em, steps=STEPS)
    cmd_addr = runner.open()["commands"]
    th, result = run_in_thread(runner)
    s = cfg.stream("pmu")
    codec = GtnetSktCodec([p.type for p in s.points], header=True)
    first = codec.parse(sink.recv(65536), 0.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(command(first.seq or 0, 0.0), cmd_addr)  # pv8 off
    frames = [first]
    while len(frames) < STEPS:
        frames.append(codec.parse(sink.recv(65536), 0.0))
    th.join(30)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    (rec,) = summary.commands
    assert rec.cmd_seq == first.seq and rec.rtt_ms is not None and rec.rtt_ms >= 0
    k0 = rec.recv_step
    assert first.seq is not None and first.seq < k0 < STEPS
    vm6 = next(j for j, p in enumerate(s.points) if p.name == "pmu6.vm")
    for f in frames:
        k = int(f.seq or 0)
        if k < k0:
            assert em.pv_mw(k)[0] == trace.pv_mw[k, 0]
            want = trace.measured[k, s.points[vm6].channel]
        else:
            assert em.pv_mw(k)[0] == 0.0
            assert em.truth(k)[s.points[vm6].channel] < trace.truth[k, s.points[vm6].channel]
            want = em.ground_truth[k].measured[s.points[vm6].channel]
        assert f.values[vm6] == pytest.approx(float(np.float32(want)), nan_ok=True)
    assert summary.as_dict()["command_rtt_ms"]["count"] == 1
    sink.close()
