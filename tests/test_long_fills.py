"""A silent meter: the quality stage fills its gap with the predictor, flags the fills of a
gap longer than MAX_FILL_S (at least the predictor's window) PSEUDO, and the estimator
worker leaves PSEUDO values out while the feeder stays observable without them (else it
keeps them, and remembers that set)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import load_config
from gateway.estimator_worker import solver_for
from gateway.quality import QualityStage
from gateway.se_model import measurement_model
from gateway.snapshot import Flag
from models.bench import synthetic_snapshots
from tests.test_kalman_se import _operating_point

PSEUDO, FILLED = int(Flag.PSEUDO), int(Flag.MISSING | Flag.CORRECTED)


@pytest.fixture(scope="module")
def cfg() -> Any:
    return load_config("ieee33")


def test_fills_of_a_long_gap_are_flagged_pseudo(cfg: Any) -> None:
    stage = QualityStage(cfg)
    assert stage.max_fill == max(stage.hist_len, 5)  # 0.1 s at 50 Hz: the window wins
    x = synthetic_snapshots(cfg, 60, seed=2, bad_frac=0.0)
    zero = np.zeros(x.shape[1], np.uint32)
    dev = [c.index for c in cfg.channels if c.name.startswith("pmu6.")]
    other = next(c.index for c in cfg.channels if c.name == "pmu3.vm")
    x[20:40, dev] = np.nan  # pmu6 silent for 20 snapshots
    x[30, other] = np.nan  # one value missing meanwhile elsewhere
    for k in range(60):
        r = stage.process(x[k], zero, k / 50)
        f = r.flags[dev]
        if 20 <= k < 40:
            assert np.isfinite(r.values[dev]).all() and ((f & FILLED) == FILLED).all(), k
            long = k - 20 + 1 > stage.max_fill
            assert ((f & PSEUDO) != 0).all() == long and ((f & PSEUDO) != 0).any() == long, k
        else:
            assert not (f & PSEUDO).any(), k  # the gap ended: counted from zero again
        assert not r.flags[other] & PSEUDO  # a single gap is a plain fill


def _snapshot(cfg: Any, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Channel values of a solved operating point, and the PV plants' output (MW)."""
    z = model.h(_operating_point(model, 0.8))
    real = model.channel >= 0
    values = np.zeros(len(cfg.channels))
    values[model.channel[real]] = z[real] / model.scale[real]
    return values, z[~real] / model.scale[~real]


@pytest.mark.parametrize("meter", ["pmu1.", "flow.23-24."])
def test_the_worker_leaves_pseudo_values_out_where_it_can(cfg: Any, meter: str) -> None:
    """pmu1 is redundant: its PSEUDO fills (here 0.3 % off) are left out, the estimate is
    the one without them. flow.23-24 is critical (buses 24 and 25 depend on it): its
    PSEUDO fills are kept, the estimate is the one with them, snapshot after snapshot."""
    model = measurement_model(cfg)
    values, pv = _snapshot(cfg, model)
    sig = np.full(pv.size, 0.041)
    dev = [c.index for c in cfg.channels if c.name.startswith(meter)]
    off = values.copy()
    off[dev] *= 1.003  # a drifted fill (not gross: no search removes it)
    pseudo = np.zeros(values.size, np.uint32)
    pseudo[dev] = FILLED | PSEUDO
    fills = pseudo.copy()
    fills[dev] = FILLED
    gone = off.copy()
    gone[dev] = np.nan
    cases = {"pseudo": (off, pseudo), "fill": (off, fills)}
    if meter == "pmu1.":  # (without flow.23-24 the feeder is not observable)
        cases["gone"] = (gone, fills)
    runs = {}
    for name, (vals, flags) in cases.items():
        _, solve = solver_for(cfg, "linear", clean=True)
        solve(values, np.zeros(values.size, np.uint32), pv, sig)  # warm start, weights
        runs[name] = [solve(vals, flags, pv, sig) for _ in range(3)]
    same = "gone" if meter == "pmu1." else "fill"
    for got, want in zip(runs["pseudo"], runs[same], strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[5]  # converged
    if meter == "pmu1.":  # the drifted fill would have moved the estimate
        assert np.abs(runs["fill"][-1][0] - runs["gone"][-1][0]).max() > 1e-7
