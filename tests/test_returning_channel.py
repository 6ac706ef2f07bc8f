"""A meter back after a long silence: its first values are real, not bad data.

Over a gap longer than the fill limit the detector's history holds its own predictions
only, so the meter's first value back is tested against a level it never measured. A
load that moved meanwhile made that value (and, since the ramp rule needs three raw
values in a row, the next two) BAD, replaced by stale predictions. The channel's history
is now re-based on its first value back, as after a switching; a short gap keeps the
test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import load_config
from gateway.quality import QualityStage
from gateway.snapshot import Flag
from models.bench import synthetic_snapshots

BAD = int(Flag.BAD)


@pytest.fixture(scope="module")
def cfg() -> Any:
    return load_config("ieee33")


def _columns(cfg: Any, prefix: str) -> list[int]:
    return [c.index for c in cfg.channels if c.name.startswith(prefix)]


@pytest.mark.parametrize("jit", ["1", "0"])
def test_a_meter_back_after_a_long_gap_is_not_flagged(cfg: Any, jit: str,
                                                      monkeypatch: Any) -> None:
    monkeypatch.setenv("GRIDTWIN_JIT", jit)  # the compiled and the NumPy path alike
    stage = QualityStage(cfg)
    n, gap = 90, (20, 20 + stage.max_fill + 10)
    x = synthetic_snapshots(cfg, n, seed=3, bad_frac=0.0)
    dev = _columns(cfg, "pmu6.")
    x[gap[1]:, dev] *= 1.01  # the load moved while the meter was silent: +1 % on each
    x[gap[0]:gap[1], dev] = np.nan
    zero = np.zeros(x.shape[1], np.uint32)
    for k in range(n):
        r = stage.process(x[k], zero, k / 50)
        if k >= gap[1]:
            assert not (r.flags[dev] & BAD).any(), (k, r.z[dev])
            np.testing.assert_array_equal(r.values[dev], x[k, dev])
    # and the new level is the history now: a gross error on it is caught
    assert stage.process(x[-1] * np.where(np.isin(np.arange(x.shape[1]), dev[:1]), 1.3, 1),
                         zero, n / 50).flags[dev[0]] & BAD


def test_a_gross_error_after_a_short_gap_is_still_flagged(cfg: Any) -> None:
    stage = QualityStage(cfg)
    x = synthetic_snapshots(cfg, 40, seed=4, bad_frac=0.0)
    dev = _columns(cfg, "pmu3.")
    x[20:23, dev] = np.nan  # three snapshots: filled, inside the fill limit
    x[23, dev[0]] *= 1.3
    zero = np.zeros(x.shape[1], np.uint32)
    flags = [stage.process(x[k], zero, k / 50).flags for k in range(24)]
    assert flags[23][dev[0]] & BAD
    assert stage.max_fill > 3
