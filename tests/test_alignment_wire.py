"""Historian rows == frames sent, through the real gateway (issue 22, acceptance).

A GTNET-SKT sender stamps at half a period with +-0.1 period of jitter (VILLASnode takes
the time before waiting for its tick); without the header the same phase and jitter sit
on the send time. At 50 Hz and 1 kHz, with and without the header, every frame the
emulator sent must be one row of the historian's raw table (a snapshot of its own, or a
late row), and the gateway's ``frames_lost`` must be 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from wirehelpers import only_streams, query, run_wire

from gateway.config import TwinConfig, load_config
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace

STREAM = "weather"


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=120 / 3600, step_s=1.0,
                                   seed=5))


@pytest.mark.parametrize("rate", [50.0, 1000.0])
@pytest.mark.parametrize("header", [True, False])
def test_rows_stored_equal_frames_sent_at_phase_half_with_jitter(
        cfg: TwinConfig, trace: Trace, tmp_path: Path, rate: float, header: bool) -> None:
    one = only_streams(cfg, (STREAM,), header=header, rate_hz=rate)
    steps = int(rate * (2.0 if rate > 100 else 3.0))
    summary, esum, gw, db = run_wire(one, trace, tmp_path, steps=steps, emulator_kw={
        "timestamps": "wall", "phase": 0.5, "jitter": 0.1})
    sent = esum.streams[STREAM].frames
    assert sent == steps
    st = gw.stats[STREAM]
    assert st.received == sent and st.duplicates == 0
    rows = query(db, "SELECT COUNT(*), COUNT(DISTINCT seq) FROM measurements")[0]
    assert rows == (sent, sent)
    assert summary["frames_lost"] == 0
    late_rows = query(db, "SELECT COUNT(*) FROM measurements WHERE seq < 0")[0][0]
    assert late_rows == st.late  # every late frame stored, as a row of its own
