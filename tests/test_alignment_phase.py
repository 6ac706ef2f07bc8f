"""A slot grid that follows the sender (issue 22): phase-offset, jittered timestamps and
arrival times never put two frames of a stream into one slot.

VILLASnode stamps a frame before it waits for its timer tick, so ``frac(ts * rate)`` sits
at the sender's own phase, with jitter. A grid fixed at phase 0 loses frames whenever that
phase is near 0.5; a learned phase does not.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gateway.aligner import Aligner, StreamLayout
from gateway.snapshot import Snapshot

T0 = 1_700_000_000.0


def run(rate: float, n: int, *, phase: float, jitter: float, header: str, seed: int,
        streams: int = 1, tolerance: float = 0.45) -> tuple[Aligner, list[Snapshot]]:
    """``n`` frames per stream stamped (or arriving) at ``phase`` of the period with
    uniform jitter of +-``jitter`` periods; ``header``: "seq+ts", "ts" or "none"."""
    rng = np.random.default_rng(seed)
    lays = [StreamLayout.of(f"s{i}", [i]) for i in range(streams)]
    al = Aligner(streams, lays, rate_hz=rate, lag_s=0.5 / rate, jitter=tolerance)
    out: list[Snapshot] = []
    for k in range(n):
        for i in range(streams):
            t = T0 + (k + phase + rng.uniform(-jitter, jitter)) / rate
            now = t + 0.0002 if header != "none" else t
            ts = t if header != "none" else None
            seq = k if header == "seq+ts" else None
            out += al.feed(f"s{i}", np.array([float(k)]), now, ts=ts, seq=seq)
        out += al.tick(T0 + (k + 1) / rate)
    out += al.flush(T0 + (n + 1) / rate)
    return al, out


@pytest.mark.parametrize("rate", [50.0, 1000.0])
@pytest.mark.parametrize("header", ["seq+ts", "ts", "none"])
def test_phase_half_with_jitter_loses_no_frame(rate: float, header: str) -> None:
    al, out = run(rate, 2000, phase=0.5, jitter=0.1, header=header, seed=int(rate))
    assert al.stats.late_frames == 0
    assert sum(al.stats.dropped.values()) == 0
    assert len(out) == 2000
    np.testing.assert_array_equal([s.values[0] for s in out], np.arange(2000.0))
    keys = [s.seq for s in out]
    assert all(b == a + 1 for a, b in itertools.pairwise(keys))


@pytest.mark.parametrize("phase", [0.0, 0.25, 0.5, 0.75])
def test_two_streams_at_one_phase_share_their_slots(phase: float) -> None:
    al, out = run(50.0, 500, phase=phase, jitter=0.1, header="ts", seed=3, streams=2)
    assert len(out) == 500 and al.stats.incomplete == 0
    for s in out:
        assert s.values[0] == s.values[1]  # the frames of one instant together


def test_sequence_slotting_tolerates_jitter_beyond_half_a_period() -> None:
    # +-0.8 period (configured tolerance 0.9): timestamps alone would swap neighbours;
    # the sequence number decides
    al, out = run(50.0, 1000, phase=0.5, jitter=0.8, header="seq+ts", seed=7,
                  tolerance=0.9)
    assert al.stats.late_frames == 0 and sum(al.stats.dropped.values()) == 0
    np.testing.assert_array_equal([s.values[0] for s in out], np.arange(1000.0))


def test_source_time_follows_the_senders_phase() -> None:
    _, out = run(50.0, 200, phase=0.5, jitter=0.0, header="ts", seed=1)
    # the snapshot's source time is the sender's grid instant, not the slot's edge
    assert out[-1].source_time == pytest.approx(T0 + (199 + 0.5) / 50.0, abs=1e-6)


@pytest.mark.parametrize("every", [5, 50])
def test_a_slower_sender_steps_several_slots_per_sequence_number(every: int) -> None:
    """A 10 Hz stream in a 50 Hz aligner (or a trace stepping 1 s per frame): one
    sequence step is ``every`` slots; jitter and a lost GTSYNC keep its slots."""
    rate = 50.0
    rng = np.random.default_rng(every)
    al = Aligner(1, [StreamLayout.of("s", [0])], rate_hz=rate, lag_s=0.005)
    out: list[Snapshot] = []
    for k in range(200):
        t = T0 + (k * every + 0.5 + rng.uniform(-0.1, 0.1)) / rate
        ts = 0.0 if 100 <= k < 110 else t  # ten frames without GTSYNC
        out += al.feed("s", np.array([float(k)]), t + 0.001, ts=ts, seq=k)
        out += al.tick(t + 0.01)
    assert al.stats.late_frames == 0 and sum(al.stats.dropped.values()) == 0
    assert [s.values[0] for s in out] == [float(k) for k in range(200)]
    keys = [s.seq for s in out]
    assert {b - a for a, b in itertools.pairwise(keys)} == {every}
