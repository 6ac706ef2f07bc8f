"""Time and sequence discipline of the aligner and the stream statistics, with a fake clock.

Each test reproduces one defect of issue 15 (findings 1-3, 8) on the sans-IO cores: the
clock is a plain float the test advances, frames are fed as the gateway feeds them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.aligner import Aligner, StreamLayout, Verdict
from gateway.snapshot import Flag, Snapshot
from gateway.stats import SeqVerdict, StreamStats

RATE = 50.0
LAG = 0.01
DAY = 86_400.0
T0 = 644_198_400.0  # trace time (1990): far behind the local clock, as the emulator sends


def one_stream(**kw: Any) -> Aligner:
    return Aligner(1, [StreamLayout.of("a", [0])], rate_hz=RATE, lag_s=LAG, **kw)


class Feeder:
    """Feeds frames at the sender's rate with a fake local clock; collects snapshots."""

    def __init__(self, al: Aligner, now: float = 1_000_000.0) -> None:
        self.al = al
        self.now = now
        self.snaps: list[Snapshot] = []

    def send(self, stream: str = "a", *, ts: float | None = None, seq: int | None = None,
             value: float = 1.0) -> Verdict:
        self.snaps += self.al.feed(stream, np.array([value]), self.now, ts=ts, seq=seq)
        v = self.al.last_verdict
        self.advance(1.0 / RATE)
        return v

    def advance(self, dt: float) -> None:
        self.now += dt
        self.snaps += self.al.tick(self.now)


# --------------------------------------------------------------------- finding 1: +1 day

def test_one_frame_a_day_ahead_is_refused_and_the_twin_goes_on() -> None:
    f = Feeder(one_stream())
    for k in range(20):
        f.send(ts=T0 + k / RATE, seq=k)
    before = len(f.snaps)
    assert f.send(ts=T0 + 20 / RATE + DAY, seq=20) is Verdict.HELD
    for k in range(21, 40):
        f.send(ts=T0 + k / RATE, seq=k)
    al = f.al
    assert al.stats.dropped["future"] == 1
    assert [e.kind for e in al.drain_events()] == ["future_frame"]
    # every later frame is published, none of them late, no slot a day ahead
    assert len(f.snaps) - before == 19
    assert al.stats.late_frames == 0
    assert max(s.seq for s in f.snaps) == round((T0 + 39 / RATE) * RATE)


def test_timestamp_ahead_of_the_local_clock_is_refused() -> None:
    al = one_stream(max_ahead_s=2.0)
    now = 5000.0
    assert al.feed("a", np.array([1.0]), now, ts=now - 0.01) != [] or al.pending == 0
    assert al.feed("a", np.array([1.0]), now + 0.02, ts=now + 5.0) == []
    assert al.last_verdict is Verdict.FUTURE
    assert al.stats.dropped["future"] == 1 and al.stats.published == 1
    out = al.feed("a", np.array([1.0]), now + 0.04, ts=now + 0.03)
    assert len(out) == 1 and al.stats.late_frames == 0


def test_a_stray_sequence_number_alone_cannot_move_the_slots() -> None:
    f = Feeder(one_stream())
    for k in range(10):
        f.send(seq=k)  # no timestamp (no GTSYNC): slotted by sequence
    f.send(seq=10 + 2**30)
    for k in range(11, 20):
        f.send(seq=k)
    assert f.al.stats.dropped["outlier"] + f.al.stats.dropped["future"] == 1
    assert len(f.snaps) == 19 and f.al.stats.late_frames == 0


# --------------------------------------------------------------------- finding 2: restart

@pytest.mark.parametrize("timed", [True, False])
def test_sender_restart_from_step_zero_resumes_within_one_lag_window(timed: bool) -> None:
    """RSCAD case restart: sequence (and trace time) start again from step 0."""
    f = Feeder(one_stream())
    for k in range(500):  # a 10 s run
        f.send(ts=T0 + k / RATE if timed else None, seq=k)
    n_before = len(f.snaps)
    last_before = f.snaps[-1].seq
    restart_at = f.now
    for k in range(5):
        f.send(ts=T0 + k / RATE if timed else None, seq=k)
    f.advance(LAG)
    al = f.al
    assert [e.kind for e in al.drain_events()] == ["restart"]
    assert al.stats.restarts == 1
    new = f.snaps[n_before:]
    # all five frames of the new run published, after the old ones, without a stall
    assert len(new) == 5
    assert all(s.seq > last_before for s in new)
    assert new[0].arrival_time <= restart_at + 1.0 / RATE + LAG
    assert al.stats.late_frames == 0 and sum(al.stats.dropped.values()) == 0


def test_restart_keeps_published_keys_increasing_and_unique() -> None:
    f = Feeder(one_stream())
    for _run in range(3):  # three runs of the case
        for k in range(50):
            f.send(ts=T0 + k / RATE, seq=k)
    keys = [s.seq for s in f.snaps]
    assert len(keys) == 150
    assert all(b > a for a, b in itertools.pairwise(keys))
    assert f.al.stats.restarts == 2


def test_two_streams_of_one_sender_restart_together() -> None:
    a = StreamLayout.of("a", [0])
    b = StreamLayout.of("b", [1])
    al = Aligner(2, [a, b], rate_hz=RATE, lag_s=LAG)
    f = Feeder(al)
    for k in range(100):
        al.feed("a", np.array([1.0]), f.now, ts=T0 + k / RATE, seq=k)
        f.send("b", ts=T0 + k / RATE, seq=k)
    n = len(f.snaps)
    for k in range(10):
        al.feed("a", np.array([2.0]), f.now, ts=T0 + k / RATE, seq=k)
        f.send("b", ts=T0 + k / RATE, seq=k)
    f.advance(1.0)
    new = f.snaps[n:]
    assert al.stats.restarts == 2  # one per stream, re-based onto the same slots
    assert len(new) == 10 and al.stats.incomplete == 0
    assert all(np.isfinite(s.values).all() for s in new)


def test_gtsync_restart_sequence_back_time_on_is_an_event_without_a_stall() -> None:
    al = one_stream()
    f = Feeder(al)
    st = StreamStats("a")
    for k in range(300):
        st.frame(k, T0 + k / RATE, f.now)
        f.send(ts=T0 + k / RATE, seq=k)
    for j in range(5):  # sequence starts again, the GPS time goes on
        k = 300 + j
        assert st.frame(j, T0 + k / RATE, f.now) in (SeqVerdict.OUTLIER,
                                                       SeqVerdict.RESTART, SeqVerdict.OK)
        f.send(ts=T0 + k / RATE, seq=j)
    assert len(f.snaps) == 305 and al.stats.late_frames == 0
    assert st.restarts == 1 and [e[0] for e in st.drain_events()] == ["restart"]
    assert st.lost == 0 and st.outliers == 0


def test_clock_step_is_an_event_and_slots_follow_the_sequence() -> None:
    al = one_stream()
    f = Feeder(al)
    for k in range(100):
        f.send(ts=T0 + k / RATE, seq=k)
    for k in range(100, 150):  # the sender's clock steps back by 1.5 s
        f.send(ts=T0 + k / RATE - 1.5, seq=k)
    f.advance(LAG)
    assert [e.kind for e in al.drain_events()] == ["clock_step"]
    assert len(f.snaps) == 150 and al.stats.late_frames == 0
    assert sum(al.stats.dropped.values()) == 0


# --------------------------------------------------------------------- finding 3: outlier

def test_one_outlier_sequence_number_cannot_move_the_loss_baseline() -> None:
    s = StreamStats("x")
    for k in range(100):
        s.frame(k, None, k / RATE)
    assert s.frame(100 + 84_000_000_000 % 2**31, None, 2.0) is SeqVerdict.OUTLIER
    kinds = [s.frame(k, None, k / RATE) for k in range(100, 200)]
    assert set(kinds) == {SeqVerdict.OK}
    assert s.gaps == 0 and s.lost == 0 and s.reordered == 0 and s.outliers == 1


def test_a_real_forward_jump_is_counted_once_as_a_gap() -> None:
    s = StreamStats("x")
    for k in range(10):
        s.frame(k, None, 0.0)
    s.frame(10 + 100_000, None, 1.0)
    assert s.frame(10 + 100_001, None, 1.02) is SeqVerdict.GAP  # continued: an outage
    assert s.gaps == 100_000 and s.outliers == 0
    assert s.frame(10 + 100_002, None, 1.04) is SeqVerdict.OK


def test_stats_restart_rebases_without_duplicates() -> None:
    s = StreamStats("x")
    for k in range(500):
        s.frame(k, None, k / RATE)
    assert s.frame(0, None, 11.0) is SeqVerdict.OUTLIER
    assert s.frame(1, None, 11.02) is SeqVerdict.RESTART
    assert [s.frame(k, None, 11 + k / RATE) for k in range(2, 10)] == [SeqVerdict.OK] * 8
    assert s.duplicates == 0 and s.restarts == 1 and s.lost == 0
    assert s.received == 510


# --------------------------------------------------------------------- finding 8: counts

def test_frames_received_does_not_count_duplicates() -> None:
    s = StreamStats("x")
    s.frame(1, None, 0.0, 100)
    assert s.frame(1, None, 0.01, 100) is SeqVerdict.DUPLICATE
    assert s.received == 1 and s.duplicates == 1 and s.bytes == 100
    assert s.not_stored == 1


def test_late_headerless_frame_does_not_displace_the_next_one() -> None:
    al = Aligner(2, [StreamLayout.of("a", [0]), StreamLayout.of("b", [1])], rate_hz=RATE,
                 lag_s=LAG)
    t = 2000.0
    out: list[Snapshot] = []
    for k in range(10):  # both streams on time
        out += al.feed("a", np.array([k]), t + k / RATE + 0.001)
        out += al.feed("b", np.array([k]), t + k / RATE + 0.002)
    # a's frame 10 is 0.7 period late: it arrives in slot 11's time, then frame 11
    out += al.feed("b", np.array([10.0]), t + 10 / RATE + 0.002)
    out += al.feed("a", np.array([10.0]), t + 10.7 / RATE)
    out += al.feed("a", np.array([11.0]), t + 11 / RATE + 0.001)
    out += al.feed("b", np.array([11.0]), t + 11 / RATE + 0.002)
    out += al.flush(t + 1.0)
    a_vals = [s.values[0] for s in out if np.isfinite(s.values[0])]
    assert a_vals == list(range(12))  # frame 11 kept: nothing displaced, nothing dropped
    assert al.stats.duplicate_frames == 0 and sum(al.stats.dropped.values()) == 0


def test_every_drop_is_counted_by_reason() -> None:
    al = one_stream(max_ahead_s=1.0)
    now = 10_000.0
    al.feed("a", np.array([1.0]), now, ts=now - 0.5, seq=1)
    al.feed("a", np.array([1.0]), now, ts=now + 3.0, seq=2)  # ahead of the local clock
    al.feed("a", np.array([1.0]), now, ts=now - 0.46, seq=3)
    d = al.stats.dropped
    assert d["future"] == 1 and al.stats.dropped_by_stream["a"]["future"] == 1
    b = Aligner(2, [StreamLayout.of("a", [0]), StreamLayout.of("b", [1])], rate_hz=RATE,
                lag_s=10.0)
    b.feed("a", np.array([1.0]), now, ts=T0)
    b.feed("a", np.array([1.0]), now, ts=T0)  # same slot again: a duplicate
    assert b.last_verdict is Verdict.DUPLICATE and b.stats.dropped["duplicate"] == 1


def test_rate_falls_to_zero_when_the_stream_is_silent() -> None:
    s = StreamStats("x")
    for k in range(64):
        s.frame(k, None, 100.0 + k / RATE)
    last = 100.0 + 63 / RATE
    assert s.rate(last + 0.001) == pytest.approx(RATE, rel=0.01)
    assert s.rate(last + 0.5) < RATE * 0.8
    assert s.rate(last + 1.0) == 0.0
    assert s.as_dict(now=last + 2.0)["rate_hz"] == 0.0


def test_late_frame_is_handed_out_not_lost() -> None:
    f = Feeder(one_stream())
    f.send(ts=T0, seq=0)
    f.send(ts=T0 + 2 / RATE, seq=2)
    f.send(ts=T0 + 1 / RATE, seq=1, value=7.0)  # its slot is gone
    late = f.al.drain_late()
    assert len(late) == 1 and late[0].seq == 1 and late[0].values.tolist() == [7.0]
    assert late[0].key == round((T0 + 1 / RATE) * RATE)
    assert f.al.stats.late_frames == 1 and f.al.drain_late() == []


def test_lost_gtsync_keeps_the_slots_by_sequence_and_is_an_event() -> None:
    al = one_stream()
    f = Feeder(al)
    for k in range(100):
        f.send(ts=T0 + k / RATE, seq=k)
    for k in range(100, 150):  # timestamp 0: the card lost GTSYNC
        f.send(ts=0.0, seq=k)
    for k in range(150, 200):
        f.send(ts=T0 + k / RATE, seq=k)
    f.advance(LAG)
    assert [e.kind for e in al.drain_events()] == ["timestamps_lost", "timestamps_back"]
    keys = [s.seq for s in f.snaps]
    assert keys == list(range(keys[0], keys[0] + 200))
    assert al.stats.late_frames == 0 and sum(al.stats.dropped.values()) == 0


def test_short_run_restart_is_recognised_by_its_newer_timestamp() -> None:
    s = StreamStats("x")
    for k in range(10):  # a run shorter than the reorder window
        s.frame(k, T0 + k / RATE, 0.0)
    for j in range(5):  # sequence from 0 again, time goes on
        s.frame(j, T0 + (10 + j) / RATE, 0.0)
    assert s.restarts == 1 and s.duplicates == 0 and s.received == 15
    assert s.frame(5, T0 + 15 / RATE, 0.0) is SeqVerdict.OK
    assert s.frame(5, T0 + 15 / RATE, 0.0) is SeqVerdict.DUPLICATE


# --------------------------------------------------------------------- config and runner

def test_align_discipline_keys_are_read_and_checked() -> None:
    from gateway.config import parse_config, resolve
    from gateway.errors import ConfigError

    text, _ = resolve("ieee33")
    old = "[align]\nlag_ms = 10"
    assert old in text
    cfg = parse_config(text.replace(old, old + "\nreorder_ms = 100\nmax_jump_s = 5\n"
                                    "max_ahead_s = 0.5\njitter = 0.3"))
    a = cfg.align
    assert (a.reorder_s, a.max_jump_s, a.max_ahead_s, a.jitter) == (0.1, 5.0, 0.5, 0.3)
    al = Aligner.for_config(cfg, [StreamLayout.of("a", [0])])
    assert al.reorder == 5 and al.jump == 250 and al.max_ahead == 0.5 and al.jitter == 0.3
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace(old, old + "\njitter = 1.5\nmax_ahead_s = -1"))
    assert {p.key for p in info.value.problems} == {"align.jitter", "align.max_ahead_s"}


def test_the_gateway_stores_a_late_frame_and_counts_what_it_did_not_store(
        tmp_path: Path) -> None:
    """Through the pipeline (real bytes in, outputs out) and the historian sink into a
    real SQLite historian, as the gateway carries them."""
    from gateway import pipeline as pl
    from gateway.codecs.gtnet_skt import GtnetSktCodec
    from gateway.components import HistorianSink
    from gateway.config import load_config
    from gateway.historian.writer import HistorianWriter, run_info_from_config
    from gateway.telemetry import Telemetry
    from hil.emulator import retarget

    cfg = retarget(load_config("ieee33"), {}, disable=("pmu", "scada"))
    tel = Telemetry(cfg, clock=lambda: 0.0, version="test")
    pipe = pl.Pipeline(cfg, tel)
    pipe.handoff = False
    db = tmp_path / "twin.db"
    writer = HistorianWriter(f"sqlite:///{db}").start()
    writer.start_run(run_info_from_config(cfg))
    sink = HistorianSink(writer, tel, tel.metrics)
    events: list[str] = []
    s = cfg.stream("weather")
    codec = GtnetSktCodec([p.type for p in s.points], header=True)
    vals = np.arange(len(s.points), dtype=float)
    now = 2_000_000_000.0

    def carry(outs: list[pl.Output]) -> None:
        for o in list(outs):
            if isinstance(o, pl.StoreSnapshot):
                sink.snapshot(o)
            elif isinstance(o, pl.StoreLate):
                sink.late(o)
            elif isinstance(o, pl.Event):
                events.append(o.kind)
            elif isinstance(o, pl.Settle):
                carry(pipe.settle())

    def send(k: int, ts: float, at: float) -> None:
        carry(pipe.feed_frame("weather", codec.build(vals + k, seq=k, ts=ts), at))

    for k in range(10):
        send(k, T0 + k / RATE, now + k / RATE)
    send(12, T0 + 12 / RATE, now + 0.25)
    send(11, T0 + 11 / RATE, now + 0.26)  # its slot was published with frame 12's
    send(12, T0 + 12 / RATE, now + 0.27)  # a duplicate
    send(13, T0 + 13 / RATE + DAY, now + 0.28)  # a day ahead: held, then refused
    send(14, T0 + 14 / RATE, now + 0.29)
    assert writer.close()
    assert events == ["stream_future_frame"]
    gw = pipe
    st = gw.stats["weather"]
    assert st.received == 14 and st.duplicates == 1 and st.late == 1
    assert st.dropped_by["future"] == 1
    assert st.owd_n == 13  # the refused frame's timestamp is not a delay sample
    rows = sorted(query_rows(db))
    assert len(rows) == 13  # 12 snapshots, one late row
    seq, vblob, fblob = rows[0]
    assert seq < 0
    f, v = np.frombuffer(fblob, "<u4"), np.frombuffer(vblob, "<f8")
    mine = gw.decoders["weather"].layout.channels
    assert (f[mine] == Flag.LATE).all() and v[mine][0] == vals_of_11(s, mine, cfg)
    others = np.setdiff1d(np.arange(f.size), mine)
    assert (f[others] == Flag.MISSING).all()
    s_all = tel.summary()
    assert s_all["frames_lost"] == 2 + st.lost  # the duplicate and the refused frame
    assert s_all["frames_received"] == 14


def vals_of_11(s: Any, mine: np.ndarray, cfg: Any) -> float:
    """The engineering value frame 11 carried on the stream's first channel."""
    i = next(j for j, p in enumerate(s.points) if p.channel == mine[0])
    return float(np.float32(i + 11)) * s.points[i].scale


def query_rows(db: Path) -> list[tuple[int, bytes, bytes]]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT seq, vals, flags FROM measurements").fetchall()


def test_a_restarted_stream_rejoins_a_stream_that_did_not_restart() -> None:
    """A PMU runs on while the GTNET-SKT case is recompiled (its time goes back)."""
    al = Aligner(2, [StreamLayout.of("pmu", [0]), StreamLayout.of("skt", [1])],
                 rate_hz=RATE, lag_s=LAG)
    f = Feeder(al)
    for k in range(300):
        al.feed("pmu", np.array([1.0]), f.now, ts=T0 + k / RATE, seq=k)
        f.send("skt", ts=T0 + k / RATE, seq=k)
    for k in range(300, 330):  # pmu goes on; the case restarts from its time 0
        al.feed("pmu", np.array([1.0]), f.now, ts=T0 + k / RATE, seq=k)
        f.send("skt", ts=T0 + (k - 300) / RATE, seq=k - 300)
    f.advance(1.0)
    assert al.stats.restarts == 1
    # after the restart frame is held one period, both streams share slots again
    assert al.stats.incomplete <= 2
    assert len(f.snaps) >= 328 and al.stats.late_frames <= 1
