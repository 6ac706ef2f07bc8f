"""A silent weather station: the PV forecasts say how little they know.

Held weather kept the card's sigma (3-5 % of rating) while the forecast's error grew to
~25 % within a minute, and a noon irradiance held into the night. Now a silent station's
last sample is carried by clear-sky-index persistence (zero after sunset) and the sigma
widens with its age (STALE_WX_SIGMA, STALE_WX_TAU_S). Checked on traces other than the
ones the two constants were measured on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import load_config
from gateway.quality import QualityStage
from models.evaluate import scenario_trace


@pytest.fixture(scope="module")
def cfg() -> Any:
    return load_config("ieee33")


def _run(cfg: Any, start: str, hours: float, seed: int, silent_from_s: float,
         quantities: tuple[str, ...] = ("",)
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PV forecasts and sigmas (MW) over a 2 s trace whose weather stations go silent
    ``silent_from_s`` in (their channels ending in one of ``quantities``: all of them by
    default); the true outputs and each row's silence (s)."""
    tr = scenario_trace({"start": start, "hours": hours, "step_s": 2.0, "bad_pct": 0.0,
                         "seed": seed}, lambda *a: None)
    x = tr.measured.copy()
    cut = int(silent_from_s / 2.0)
    wx = [j for j, n in enumerate(tr.channel_names)
          if n.startswith("wx") and n.endswith(quantities)]
    x[cut:, wx] = np.nan
    stage = QualityStage(cfg)
    zero = np.zeros(x.shape[1], np.uint32)
    pv, sig = np.zeros((len(x), len(cfg.plants))), np.zeros((len(x), len(cfg.plants)))
    for k in range(len(x)):
        r = stage.process(x[k], zero, float(tr.time[k]))
        pv[k], sig[k] = r.pv_mw, r.pv_sigma_mw
    silent = np.maximum(0.0, (np.arange(len(x)) - cut + 1) * 2.0)
    return pv, sig, tr.pv_mw, silent


@pytest.mark.parametrize(("start", "seed"), [("1990-05-12T10:00", 41),
                                             ("1990-08-23T13:00", 42)])
def test_the_sigma_of_a_forecast_from_a_silent_station_covers_its_error(
        cfg: Any, start: str, seed: int) -> None:
    pv, sig, truth, silent = _run(cfg, start, 0.75, seed, 600.0)
    late = silent > 120  # a station silent for more than two minutes
    z = (pv[late] - truth[late]) / sig[late]
    assert 0.4 <= float(np.sqrt(np.mean(z**2))) <= 2.0
    rating = np.array([p.rating_mw for p in cfg.plants])
    assert (sig[late] >= 0.2 * rating).all()  # was the card's 3-5 %
    fresh = (silent == 0) & (np.arange(len(pv)) > 30)
    assert (sig[fresh] <= 0.1 * rating).all()  # a live station keeps the card's sigma


def test_a_station_silent_over_sunset_gives_no_output_at_night(cfg: Any) -> None:
    pv, _sig, truth, silent = _run(cfg, "1990-06-01T17:30", 3.5, 43, 1800.0)
    night = (truth == 0).all(axis=1) & (silent > 0)
    assert night.sum() > 600  # the trace runs an hour into the night
    assert (pv[night] == 0).all()


def test_a_silent_wind_vane_leaves_the_forecast_alone(cfg: Any) -> None:
    """Only the irradiance makes a station's sample stale: a missing wind direction is
    held as it is, and the forecast keeps the card's sigma."""
    _pv, sig, _truth, silent = _run(cfg, "1990-05-12T10:00", 0.5, 41, 600.0,
                                    (".wind_dir",))
    rating = np.array([p.rating_mw for p in cfg.plants])
    late = silent > 120
    assert late.sum() > 300 and (sig[late] <= 0.1 * rating).all()
