"""The sans-IO pipeline driven with frame bytes and a fake clock (no sockets, no loop), and
the runner's start-up unwinding with real components (historian, estimator process).

The frames are built with the codecs' own ``build()``; ``now`` is a number the test
chooses, so the lag window, the late frames and the latencies are exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import Stream, TwinConfig, load_config
from gateway.errors import GatewayError
from gateway.handoff import StateMsg
from gateway.pipeline import (
    SETTLE,
    Event,
    Handoff,
    Output,
    Pipeline,
    StoreForecast,
    StoreLate,
    StoreSnapshot,
    StoreState,
)
from gateway.snapshot import Flag
from gateway.telemetry import Telemetry

T0 = 1_700_000_000.0  # source time of slot 0 (a multiple of 1/50 s)


@pytest.fixture(scope="module")
def cfg() -> TwinConfig:
    return load_config("ieee33")


class FakePerf:
    """A perf counter that advances by ``step`` every time it is read."""

    def __init__(self, step: float = 0.001) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def make(cfg: TwinConfig, **kw: object) -> Pipeline:
    return Pipeline(cfg, Telemetry(cfg, clock=lambda: 0.0), perf=FakePerf(), **kw)  # type: ignore[arg-type]


def wire(stream: Stream, k: int) -> np.ndarray:
    """Values on the wire for slot ``k``: small integers (exact as float32 and int32)."""
    return np.arange(len(stream.points), dtype=float) + 1.0 + k


def frame(stream: Stream, k: int) -> bytes:
    codec = GtnetSktCodec([p.type for p in stream.points], header=stream.header)
    return codec.build(wire(stream, k), seq=k, ts=T0 + k / 50.0)


def expected_values(cfg: TwinConfig, k: int) -> np.ndarray:
    """The snapshot vector the three streams of slot ``k`` make (channel order, scaled)."""
    x = np.full(len(cfg.channels), np.nan)
    for s in cfg.enabled_streams:
        for p, v in zip(s.points, wire(s, k), strict=True):
            if p.channel is not None:
                x[p.channel] = np.float32(v) * p.scale
    return x


def kinds(out: list[Output]) -> list[type]:
    return [type(o) for o in out]


def feed_slot(p: Pipeline, cfg: TwinConfig, k: int, now: float,
              streams: tuple[str, ...] = ("pmu", "scada", "weather")) -> list[Output]:
    """Feed slot ``k`` of the named streams, 1 ms apart from ``now``; the last outputs
    (copied: the pipeline reuses its list)."""
    out: list[Output] = []
    for i, name in enumerate(streams):
        out = list(p.feed_frame(name, frame(cfg.stream(name), k), now + i * 1e-3))
    return out


def by_name(cfg: TwinConfig) -> Iterator[str]:
    return (s.name for s in cfg.enabled_streams)


# --------------------------------------------------------------------------- frames in

def test_three_frames_make_one_snapshot_handed_off_before_it_is_stored(
        cfg: TwinConfig) -> None:
    p = make(cfg)
    assert list(by_name(cfg)) == ["pmu", "scada", "weather"]
    assert p.feed_frame("pmu", frame(cfg.stream("pmu"), 0), 10.000) == []
    assert p.feed_frame("scada", frame(cfg.stream("scada"), 0), 10.001) == []
    out = list(p.feed_frame("weather", frame(cfg.stream("weather"), 0), 10.002))
    # the handoff first, then what to store, then the marker for the deferred work
    assert kinds(out) == [Handoff, StoreSnapshot, StoreForecast, type(SETTLE)]
    hand, store, fc = out[0], out[1], out[2]
    assert isinstance(hand, Handoff) and isinstance(store, StoreSnapshot)
    assert isinstance(fc, StoreForecast)
    snap = hand.snapshot
    want = expected_values(cfg, 0)
    np.testing.assert_array_equal(snap.values, want)
    assert not snap.flags.any()
    assert snap.seq == round(T0 * 50) and snap.source_time == pytest.approx(T0)
    assert snap.arrival_time == 10.000 and snap.published_time == 10.002
    # pass-through quality: PV pseudo-measurements from the plants' GHI (nameplate guess)
    assert hand.pv_mw.shape == (len(cfg.plants),) and np.all(hand.pv_mw > 0)
    assert fc.pv_mw == dict(zip([pl.name for pl in cfg.plants], hand.pv_mw.tolist(),
                                strict=True))
    np.testing.assert_array_equal(store.raw_values, want)
    np.testing.assert_array_equal(store.values, want)
    # nothing is counted until the pipeline settles (after the handoff)
    assert p.telemetry.snapshots == 0
    assert p.settle() == []
    tel = p.telemetry
    assert tel.snapshots == 1
    assert list(tel.quality_s) == pytest.approx([0.001])  # one step of the fake counter
    assert list(tel.align_s) == pytest.approx([0.002])
    assert {s.name: s.received for s in p.stats.values()} == {
        "pmu": 1, "scada": 1, "weather": 1}
    assert p.next_deadline() is None and p.tick(11.0) == []


def test_the_forecast_is_stored_only_when_it_changes(cfg: TwinConfig) -> None:
    p = make(cfg)
    first = feed_slot(p, cfg, 0, 10.0)
    p.settle()
    second = feed_slot(p, cfg, 1, 10.02)  # other GHI values: another forecast
    p.settle()
    assert StoreForecast in kinds(first) and StoreForecast in kinds(second)
    # slot 2 with slot 1's values: the PV pseudo-measurements are unchanged
    codecs = {s.name: GtnetSktCodec([q.type for q in s.points], header=s.header)
              for s in cfg.enabled_streams}
    out: list[Output] = []
    for i, s in enumerate(cfg.enabled_streams):
        data = codecs[s.name].build(wire(s, 1), seq=2, ts=T0 + 2 / 50.0)
        out = list(p.feed_frame(s.name, data, 10.04 + i * 1e-3))
    assert kinds(out) == [Handoff, StoreSnapshot, type(SETTLE)]


def test_a_missing_stream_is_published_by_tick_when_the_lag_window_expires(
        cfg: TwinConfig) -> None:
    p = make(cfg)
    feed_slot(p, cfg, 0, 10.0)
    p.settle()
    lag = cfg.align.lag_s
    # slot 1: the weather frame does not come in time
    assert feed_slot(p, cfg, 1, 10.02, ("pmu", "scada")) == []
    due = p.next_deadline()
    assert due is not None and due == pytest.approx(10.02 + lag)
    assert p.tick(10.02 + lag / 2) == []  # too early: still waiting
    out = list(p.tick(due))
    assert kinds(out) == [Handoff, StoreSnapshot, StoreForecast, type(SETTLE)]
    hand = out[0]
    assert isinstance(hand, Handoff)
    weather = [pt.channel for pt in cfg.stream("weather").points if pt.channel is not None]
    # the weather stream is alive (it delivered slot 0): its values are missing AND late
    assert np.all(hand.snapshot.flags[weather] == Flag.MISSING | Flag.LATE)
    assert np.all(np.isnan(hand.snapshot.values[weather]))
    others = np.setdiff1d(np.arange(len(cfg.channels)), weather)
    assert not hand.snapshot.flags[others].any()
    assert hand.snapshot.published_time == pytest.approx(due)
    p.settle()
    assert p.next_deadline() is None
    # the weather frame of slot 1 arrives after its snapshot: counted late, and stored
    # as a raw row of its own (flagged LATE), never merged into the published snapshot
    late_out = p.feed_frame("weather", frame(cfg.stream("weather"), 1), due + 0.005)
    assert kinds(late_out) == [StoreLate]
    row = late_out[0]
    assert isinstance(row, StoreLate)
    assert row.seq < 0 and np.all(row.flags[weather] == Flag.LATE)
    assert p.stats["weather"].late == 1
    assert p.telemetry.summary()["frames_late"] == 1
    assert p.telemetry.summary()["snapshots_incomplete"] == 1
    assert p.telemetry.snapshots == 2


def test_flush_publishes_what_is_pending(cfg: TwinConfig) -> None:
    p = make(cfg)
    assert feed_slot(p, cfg, 0, 10.0, ("pmu",)) == []
    out = p.flush(10.001)
    assert kinds(out) == [Handoff, StoreSnapshot, StoreForecast, type(SETTLE)]
    assert p.next_deadline() is None


def test_undecodable_and_duplicate_frames_are_counted_and_make_no_output(
        cfg: TwinConfig) -> None:
    p = make(cfg)
    assert p.feed_frame("pmu", b"\x00\x01\x02", 10.0) == []
    assert p.stats["pmu"].decode_errors == 1
    data = frame(cfg.stream("pmu"), 0)
    assert p.feed_frame("pmu", data, 10.001) == []
    assert p.feed_frame("pmu", data, 10.002) == []  # the same sequence number again
    # a dropped duplicate is not counted received
    assert p.stats["pmu"].duplicates == 1 and p.stats["pmu"].received == 1
    assert p.aligner.pending == 1


def test_components_off_means_no_handoff_and_no_store_outputs(cfg: TwinConfig) -> None:
    p = make(cfg)
    p.handoff = False
    assert kinds(feed_slot(p, cfg, 0, 10.0)) == [StoreSnapshot, StoreForecast,
                                                  type(SETTLE)]
    p.settle()
    p.store = False
    assert kinds(feed_slot(p, cfg, 1, 10.02)) == [type(SETTLE)]
    p.settle()
    assert p.telemetry.snapshots == 2  # counted all the same


class FailingQuality:
    """A quality stage that breaks on the chosen calls (the real one cannot be made to)."""

    lookahead_s = 0.0
    remote = None

    def __init__(self, fail_process: bool, fail_lookahead: bool) -> None:
        self.fail_process = fail_process
        self.fail_lookahead = fail_lookahead

    def process(self, values: np.ndarray, flags: np.ndarray, now: float) -> None:
        if self.fail_process:
            raise RuntimeError("model exploded")
        raise AssertionError("not reached in this test")

    def lookahead(self) -> None:
        if self.fail_lookahead:
            raise RuntimeError("look-ahead exploded")


def test_a_failing_quality_stage_raises_events_and_values_pass_through(
        cfg: TwinConfig) -> None:
    p = make(cfg, quality=FailingQuality(True, True))
    out = feed_slot(p, cfg, 0, 10.0)
    assert kinds(out) == [Event, Handoff, StoreSnapshot, StoreForecast, type(SETTLE)]
    ev, hand = out[0], out[1]
    assert isinstance(ev, Event) and isinstance(hand, Handoff)
    assert ev.kind == "quality_error" and "model exploded" in ev.detail["error"]
    np.testing.assert_array_equal(hand.snapshot.values, expected_values(cfg, 0))
    late = p.settle()
    assert [(e.kind, e.detail["seq"]) for e in late  # type: ignore[union-attr]
            ] == [("quality_error", hand.snapshot.seq)]
    assert p.quality_errors == 2


def channel_frame(stream: Stream, x: np.ndarray, k: int) -> bytes:
    """Slot ``k`` of ``stream`` carrying the snapshot vector ``x`` (channel order)."""
    codec = GtnetSktCodec([p.type for p in stream.points], header=stream.header)
    w = np.array([x[p.channel] / p.scale if p.channel is not None else 0.0
                  for p in stream.points])
    return codec.build(w, seq=k, ts=T0 + k / 50.0)


def test_with_the_quality_stage_bad_values_are_handed_off_corrected(
        cfg: TwinConfig) -> None:
    """The real quality stage (committed models) in the pipeline: what is handed off is
    what the stage gives offline for the same snapshots (the look-ahead run by settle()
    changes when the work is done, not the numbers), gross errors flagged and replaced."""
    from gateway.quality import QualityStage
    from models.bench import synthetic_snapshots

    x = synthetic_snapshots(cfg, 152, seed=3, bad_frac=0.0)
    elec = np.flatnonzero([c.electrical for c in cfg.channels])
    bad = elec[[0, 10, 40, 100]]
    x[151, bad] *= 1.45
    p = make(cfg, quality=QualityStage(cfg))
    offline = QualityStage(cfg)
    for k in range(152):
        out: list[Output] = []
        for i, s in enumerate(cfg.enabled_streams):
            out = list(p.feed_frame(s.name, channel_frame(s, x[k], k), 10.0 + k / 50 + i * 1e-4))
        hand, store = out[0], out[1]
        assert isinstance(hand, Handoff) and isinstance(store, StoreSnapshot)
        want = offline.process(store.raw_values, store.raw_flags, store.source_time)
        np.testing.assert_array_equal(hand.snapshot.values, want.values)
        np.testing.assert_array_equal(hand.snapshot.flags, want.flags)
        np.testing.assert_array_equal(hand.pv_mw, want.pv_mw)
        assert p.settle() == []
    assert isinstance(hand, Handoff) and isinstance(store, StoreSnapshot)  # the last ones
    assert np.all(hand.snapshot.flags[bad] & Flag.BAD)
    assert np.all(hand.snapshot.flags[bad] & Flag.CORRECTED)
    np.testing.assert_array_equal(store.raw_values[bad], x[151, bad].astype(np.float32))
    assert not np.any(hand.snapshot.flags[np.setdiff1d(elec, bad)] & Flag.BAD)
    assert p.telemetry.snapshots == 152 and len(p.telemetry.lookahead_s) == 152


# --------------------------------------------------------------------------- states in

def state(seq: int, *, arrival: float, sent: float, recv: float, chi2: float,
          n: int = 37) -> StateMsg:
    return StateMsg(seq=seq, source_time=T0, arrival_time=arrival, published_time=arrival,
                    send_time=sent, recv_time=recv, done_time=recv + 0.0005, chi2=chi2,
                    chi2_threshold=100.0, t_build_s=0.0001, t_solve_s=0.0004, iterations=1,
                    converged=True, vm=np.linspace(0.95, 1.0, n), va=np.zeros(n))


def test_states_coming_back_are_measured_stored_and_kept_as_the_latest(
        cfg: TwinConfig) -> None:
    p = make(cfg)
    assert p.latest_state is None
    out = p.feed_state(state(7, arrival=10.0, sent=10.001, recv=10.0012, chi2=250.0),
                       10.003, True)
    assert kinds(out) == [StoreState]
    so = out[0]
    assert isinstance(so, StoreState)
    assert so.e2e_s == pytest.approx(0.003) and so.handoff_s == pytest.approx(0.0002)
    assert so.deadline_met is True
    latest = p.latest_state
    assert latest is not None and latest["seq"] == 7 and latest["received_time"] == 10.003
    assert latest["vm_pu"][0] == pytest.approx(0.95) and len(latest["bus"]) == len(
        latest["vm_pu"])
    assert latest["latency_ms"]["e2e"] == pytest.approx(3.0)
    assert latest["topology"] == "normal"  # the config's switch states
    tel = p.telemetry
    assert tel.states == 1 and tel.chi2_failures == 1  # 250 > 100: bad data suspected
    p.store = False
    assert p.feed_state(state(8, arrival=10.02, sent=10.021, recv=10.0211, chi2=5.0),
                        10.022, False) == []
    assert p.latest_state is not None and p.latest_state["deadline_met"] is False
    assert tel.states == 2 and tel.chi2_failures == 1
    summary = tel.summary()
    assert summary["states"] == 2
    assert summary["e2e_latency_ms"]["max"] == pytest.approx(3.0)


def test_telemetry_flush_moves_the_counts_into_the_registry(cfg: TwinConfig) -> None:
    p = make(cfg)
    feed_slot(p, cfg, 0, 10.0)
    p.settle()
    p.feed_state(state(1, arrival=10.0, sent=10.001, recv=10.0012, chi2=1.0), 10.003, True)
    text = p.telemetry.metrics.exposition().decode()  # the scrape hook flushes first
    assert "gridtwin_snapshots_total 1.0" in text
    assert "gridtwin_states_total 1.0" in text
    assert "gridtwin_e2e_latency_seconds_count 1.0" in text


# --------------------------------------------------------------------------- the runner

@pytest.mark.parametrize("historian_process", [False, True])
def test_a_failing_start_unwinds_the_components_already_started(
        cfg: TwinConfig, tmp_path: Path, historian_process: bool) -> None:
    """Metrics port taken: the historian (its thread, or its process as with
    ``--realtime``) and the estimator process started before the server are closed
    again, no transport is opened, and the error names the address."""
    from gateway.app import Gateway, GatewayOptions

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    db = tmp_path / "twin.db"
    opts = GatewayOptions(historian_url=f"sqlite:///{db}", metrics_bind=f"127.0.0.1:{port}",
                          quality=False, spare=False, estimator_method="flat",
                          url_overrides={s.name: "udp://127.0.0.1:0" for s in cfg.streams},
                          historian_process=historian_process)
    gw = Gateway(cfg, opts)

    async def run() -> None:
        with pytest.raises(GatewayError, match=f"metrics_bind '127.0.0.1:{port}'"):
            await gw.start()
        await gw.close()  # a no-op now: everything was closed already

    try:
        asyncio.run(run())
    finally:
        taken.close()
    assert gw.closed and gw.transports == {}
    assert gw.supervisor is not None and gw.supervisor.active is None
    assert gw.historian._closed  # the writer committed and stopped
    if historian_process:  # and its process is gone
        assert gw.historian._worker.proc.poll() is not None
    with sqlite3.connect(db) as con:
        events = [(k, json.loads(d)) for k, d in
                  con.execute("SELECT kind, detail FROM events ORDER BY event_no")]
    assert [k for k, _ in events] == ["estimator_started", "gateway_stopped"]
    pid = events[0][1]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the estimator process is gone (and reaped)
