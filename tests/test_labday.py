"""A compressed lab day through the real gateway and estimator (issue 15, acceptance).

The emulator plays every GTNET-SKT lab behaviour once, in a seeded order, while it sends
the IEEE 33-bus case's three streams at 50 Hz with GPS (wall-clock) timestamps: case
stop/start, restart from step 0, recompile (sequence and time reset), GTNET card reboot,
lost GTSYNC, a clock step and a stray timestamp one day ahead. Afterwards the twin
database must show, for every disturbance:

* an event of the matching kind, raised within a second of it (after its silence);
* estimation going on: a state whose source time is after the disturbance, within one
  second of it (after its silence) — source times, not wall-clock latencies;

and for the whole run: every frame the gateway accepted (received and not refused) is in
the raw table, in a snapshot or as a late row; the only frames refused are the stray
ones, and ``frames_lost`` counts exactly those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from wirehelpers import query, run_wire

from gateway.config import load_config
from gateway.discipline import LATE_SEQ_STREAMS
from gateway.snapshot import Flag
from hil.faults import lab_day
from hil.scenario import ScenarioSpec, make_trace

RATE = 50.0
DAY_S = 12.0  # the lab day, compressed
RUN_S = 14.0
SILENT = ("stop_start", "recompile", "card_reboot")
EXPECTED_EVENT = {"stop_start": "stream_restart", "restart": "stream_restart",
                  "recompile": "stream_restart", "card_reboot": "stream_restart",
                  "no_gtsync": "stream_timestamps_lost", "clock_step": "stream_clock_step",
                  "future_ts": "stream_future_frame"}


@pytest.mark.slow
def test_compressed_lab_day(tmp_path: Path) -> None:
    cfg = load_config("ieee33")
    trace = make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=120 / 3600,
                                    step_s=1.0, bad_pct=0.0, missing_pct=0.0, seed=11))
    day = lab_day(seed=4, seconds=DAY_S)
    assert sorted(d.kind for d in day) == sorted(EXPECTED_EVENT)
    summary, esum, gw, db = run_wire(
        cfg, trace, tmp_path, steps=int(RUN_S * RATE), estimator=True,
        emulator_kw={"timestamps": "wall", "disturbances": day})
    played = esum.disturbances
    assert [r.kind for r in played] == [d.kind for d in day]

    states = np.array([r[0] for r in query(db, "SELECT source_time FROM states")])
    events = query(db, "SELECT time, kind, source FROM events")
    streams = [s.name for s in cfg.enabled_streams]
    for r in played:
        t_d = r.time
        quiet = r.arg if r.kind in SILENT else 0.0
        after = states[(states > t_d) & (states <= t_d + quiet + 1.0)]
        assert after.size > 0, f"no state within 1 s after {r.kind} at {t_d}"
        ev = [e for e in events if e[1] == EXPECTED_EVENT[r.kind]
              and t_d <= e[0] <= t_d + quiet + 1.0]
        assert {e[2] for e in ev} == set(streams), f"{r.kind}: events {ev}"

    # every accepted frame stored: count each stream's frames in the raw table
    stored = dict.fromkeys(streams, 0)
    lays = {n: gw.pipeline.decoders[n].layout.channels for n in streams}
    for seq, flags in query(db, "SELECT seq, flags FROM measurements"):
        f = np.frombuffer(flags, "<u4")
        if seq < 0:
            stored[streams[(-seq - 1) % LATE_SEQ_STREAMS]] += 1
            continue
        for n in streams:
            if not (f[lays[n]] & Flag.MISSING).any():
                stored[n] += 1
    refused = 0
    for n in streams:
        st = gw.stats[n]
        assert st.received == esum.streams[n].frames  # loopback: nothing lost on the way
        drops = dict(st.dropped_by)
        assert drops == {"duplicate": 0, "future": 1, "outlier": 0}, (n, drops)
        refused += sum(drops.values())
        assert stored[n] == st.received - sum(drops.values()), n
    assert summary["frames_lost"] == refused
