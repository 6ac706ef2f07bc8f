"""The impolite emulator, sans-IO: each lab behaviour does to sequence numbers, trace rows
and timestamps what a real RTDS case and GTNET-SKT card do; the lab day is seeded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import TwinConfig, load_config
from hil.emulator import Emulator
from hil.faults import (
    DAY_S,
    DISTURBANCE_KINDS,
    CaseClock,
    Disturbance,
    FaultSpecError,
    lab_day,
)
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace, save_trace

RATE = 50.0


def stamps(clock: CaseClock, n: int) -> list:
    return [clock.at(k, 1000.0 + k / RATE) for k in range(n)]


def test_restart_from_step_zero_resets_sequence_and_rows_time_goes_on() -> None:
    s = stamps(CaseClock(RATE, [Disturbance("restart", 1.0)]), 100)
    assert [x.seq for x in s[48:53]] == [48, 49, 0, 1, 2]
    assert [x.row_step for x in s[48:53]] == [48, 49, 0, 1, 2]
    assert all(x.ts_offset == 0.0 and x.send for x in s)
    assert s[50].events == ("restart",)


def test_recompile_is_silent_then_resets_sequence_rows_and_time() -> None:
    s = stamps(CaseClock(RATE, [Disturbance("recompile", 1.0, 0.2)]), 100)
    assert [x.send for x in s[49:61]] == [True] + [False] * 10 + [True]
    first = s[60]
    assert first.seq == 0 and first.row_step == 0
    # the timestamp goes back to the case's start: step 60 stamped as step 0 was
    assert first.time_step == 0 and first.ts_offset == 0.0
    assert s[61].time_step == 1 and s[49].time_step == 49


def test_card_reboot_resets_only_the_sequence() -> None:
    s = stamps(CaseClock(RATE, [Disturbance("card_reboot", 1.0, 0.1)]), 80)
    assert not any(x.send for x in s[50:55]) and s[55].send
    assert s[55].seq == 0 and s[55].row_step == 55 and s[55].ts_offset == 0.0


def test_stop_start_pauses_then_starts_from_step_zero() -> None:
    s = stamps(CaseClock(RATE, [Disturbance("stop_start", 1.0, 0.4)]), 100)
    assert not any(x.send for x in s[50:70]) and s[70].send
    assert (s[70].seq, s[70].row_step, s[70].ts_offset) == (0, 0, 0.0)


def test_gtsync_loss_clock_step_and_stray_future_timestamp() -> None:
    d = [Disturbance("no_gtsync", 0.2, 0.1), Disturbance("clock_step", 0.5, -1.5),
         Disturbance("future_ts", 0.8)]
    s = stamps(CaseClock(RATE, d), 60)
    assert [x.ts_offset for x in s[9:16]] == [0.0] + [None] * 5 + [0.0]
    assert s[25].ts_offset == -1.5 and s[59].ts_offset == -1.5  # the step stays
    assert s[40].ts_offset == pytest.approx(DAY_S - 1.5) and s[41].ts_offset == -1.5
    assert [x.seq for x in s] == list(range(60))  # the sequence never noticed


def test_phase_and_jitter_stamp_like_villasnode() -> None:
    s = stamps(CaseClock(RATE, phase=0.5, jitter=0.1, seed=3), 2000)
    frac = np.array([x.ts_offset for x in s]) * RATE
    assert frac.min() >= 0.4 - 1e-12 and frac.max() <= 0.6 + 1e-12
    assert frac.std() > 0.03  # jittered, not constant
    assert np.allclose([x.delay_s for x in s], frac / RATE)  # header-less: send later


def test_lab_day_plays_every_behaviour_once_seeded() -> None:
    a, b = lab_day(7, 20.0), lab_day(7, 20.0)
    assert a == b and lab_day(8, 20.0) != a
    assert sorted(d.kind for d in a) == sorted(DISTURBANCE_KINDS)
    times = sorted(d.at_s for d in a)
    assert times[0] >= 2.0 and times[-1] < 20.0
    with pytest.raises(FaultSpecError, match="lab day needs"):
        lab_day(1, 5.0)


def test_disturbance_spec_parsing() -> None:
    assert Disturbance.parse("clock_step@8:-1.5") == Disturbance("clock_step", 8.0, -1.5)
    assert Disturbance.parse("card_reboot@3").arg == 0.5  # default silence
    for bad in ("reboot@3", "restart@x", "restart@-1"):
        with pytest.raises(FaultSpecError):
            Disturbance.parse(bad)


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=120 / 3600, step_s=1.0,
                                   seed=2))


def test_emulator_frames_carry_the_case_clock(cfg: TwinConfig, trace: Trace) -> None:
    em = Emulator(cfg, trace, rate_hz=RATE, disturbances=(Disturbance("recompile", 0.1, 0.04),
                                                          Disturbance("no_gtsync", 0.3, 0.04)))
    s = cfg.stream("scada")
    codec = GtnetSktCodec([p.type for p in s.points], header=s.header)
    seen = []
    for k in range(25):
        for out in em.frames(k):
            if out.plan.name == "scada":
                f = codec.parse(out.emission.data, 0.0)
                seen.append((k, f.seq, f.ts))
    steps = [k for k, _, _ in seen]
    assert 5 not in steps and 6 not in steps  # silent while recompiling
    by = {k: (seq, ts) for k, seq, ts in seen}
    assert by[7][0] == 0 and by[7][1] == pytest.approx(em.trace_time(0), abs=1e-6)
    assert by[15][1] == 0.0 and (by[17][1] or 0.0) > 0  # no GTSYNC for two steps
    assert [r.kind for r in em.disturbances] == ["recompile", "no_gtsync"]
    assert em.silent_steps == 2


def test_emulate_cli_rejects_a_bad_disturbance(cfg: TwinConfig, trace: Trace,
                                               tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    save_trace(trace, path)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "emulate", "--scenario",
                        str(path), "--steps", "5", "--disturb", "reboot@1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "disturbance 'reboot'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "emulate", "--scenario",
                        str(path), "--steps", "5", "--lab-day"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--lab-day needs --seconds" in r.stderr


def test_emulate_cli_plays_a_lab_day(trace: Trace, tmp_path: Path) -> None:
    import json

    path = tmp_path / "t.npz"
    save_trace(trace, path)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "emulate", "--scenario",
                        str(path), "--seconds", "10", "--loop", "--fast", "--lab-day",
                        "--seed", "3", "--phase", "0.5", "--jitter", "0.1", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sorted(x["kind"] for x in d["disturbances"]) == sorted(DISTURBANCE_KINDS)
    assert d["silent_steps"] > 0  # stop/start, recompile and card reboot were silent
    assert d["frames_sent"] == 3 * (d["steps"] - d["silent_steps"])
