"""Flag words are counted in batches: the counts read at any moment equal a direct count."""

from __future__ import annotations

import time

import numpy as np

from gateway.config import load_config
from gateway.snapshot import Flag
from gateway.telemetry import FLAG_BATCH, N_FLAG_BITS, Telemetry


def _flag_rows(m: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    bits = [int(b) for b in (Flag.MISSING, Flag.BAD, Flag.CORRECTED, Flag.LATE)]
    rows = []
    for k in range(n):
        flags = np.zeros(m, np.uint32)
        if k % 3:  # one snapshot in three has no flag at all
            for b in rng.choice(bits, size=2, replace=False):
                flags[rng.integers(0, m, size=5)] |= np.uint32(b)
        rows.append(flags)
    return rows


def test_batched_flag_counts_equal_a_direct_count() -> None:
    cfg = load_config("ieee33")
    rows = _flag_rows(len(cfg.channels), 2 * FLAG_BATCH + 5)  # two batches and a part
    once = Telemetry(cfg, clock=time.time)  # read at the end only
    often = Telemetry(cfg, clock=time.time)  # read after every snapshot (mid-batch)
    expect = np.zeros(N_FLAG_BITS, np.int64)
    for flags in rows:
        expect += ((flags[:, None] >> np.arange(N_FLAG_BITS)) & 1).sum(axis=0)
        once.snapshot(0.0, 0.0, flags)
        often.snapshot(0.0, 0.0, flags.copy())
        assert often.flag_counts.tolist() == expect.tolist()
    for flags in rows:
        flags[:] = 0  # the telemetry keeps its own copy of a snapshot's flags
    assert expect.sum() > 0
    assert once.flag_counts.tolist() == expect.tolist()
    assert once.snapshots == often.snapshots == len(rows)
