"""The committed models meet accuracy floors on a held-out scenario trace.

Held out: 1990-06-01 12:00-12:15 at 1 s, seed 11 (training used 1990-03-20 seed 101,
the PV forecaster Miami weather; calibration 1990-09-10). Floors are looser than the
full ``gridtwin evaluate`` figures (a short trace), tight enough to catch a broken model,
a wrong normalisation or a mis-wired stage.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config import load_config
from models.evaluate import branch_power_channels, predictor_windows, rates, run_stage
from models.runtime import PREDICTOR, load_model


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    from hil.scenario import ScenarioSpec, make_trace

    cfg = load_config("ieee33")
    tr = make_trace(ScenarioSpec(start="1990-06-01T12:00", hours=0.25, step_s=1.0,
                                 bad_pct=15.0, seed=11))
    return cfg, tr, run_stage(cfg, tr, None)


def test_detection_floor_at_15_pct(setup) -> None:  # type: ignore[no-untyped-def]
    cfg, tr, res = setup
    elec = np.array([c.electrical for c in cfg.channels])
    warm = 60
    flagged = (res["flags"][warm:][:, elec] & 1) != 0
    missed, false = rates(flagged, tr.bad[warm:][:, elec], ~tr.missing[warm:][:, elec])
    assert missed <= 1.5
    assert false <= 1.0


def test_corrected_values_close_to_truth(setup) -> None:  # type: ignore[no-untyped-def]
    cfg, tr, res = setup
    elec = np.flatnonzero([c.electrical for c in cfg.channels])
    bad = tr.bad[60:][:, elec]
    fixed = res["values"][60:][:, elec][bad]
    truth = tr.truth[60:][:, elec][bad]
    scale = np.maximum(np.abs(truth), 1e-3)
    assert np.median(np.abs(fixed - truth) / scale) < 0.01


def test_branch_power_prediction_floor(setup) -> None:  # type: ignore[no-untyped-def]
    cfg, tr, _ = setup
    model = load_model(PREDICTOR)
    errs = []
    for ch in branch_power_channels(cfg):
        xn, c, s, truth, _ = predictor_windows(tr, ch, 3)
        pred = c + s * model.run(xn).reshape(-1)
        big = np.abs(truth) > 0.05 * np.abs(truth).max()
        errs.append(np.mean(np.abs(pred[big] - truth[big]) / np.abs(truth[big])))
    assert 100 * float(np.mean(errs)) < 1.0


def test_pv_pseudo_measurement_floor(setup) -> None:  # type: ignore[no-untyped-def]
    cfg, tr, res = setup
    rating = np.array([p.rating_mw for p in cfg.plants])
    err = (res["pv"][60:] - tr.pv_mw[60:]) / rating
    # the plants' own clouds (not seen by the weather stations) bound this: see
    # MODELS_README; a broken forecaster is off by 30-100 % of rating
    assert float(np.sqrt(np.mean(err**2))) < 0.25
    assert (res["pv_sigma"][60:] > 0).all()
