"""The gateway without models: values pass, PV still gets a pseudo-measurement."""

from __future__ import annotations

import numpy as np
import pytest


def test_pass_through_still_gives_every_plant_a_weak_pseudo_measurement() -> None:
    """Without models the estimate must stay observable: nameplate PV from GHI, else half."""
    from gateway.config import load_config
    from gateway.quality import PassThroughQuality

    cfg = load_config("ieee33")
    q = PassThroughQuality(cfg)
    values = np.zeros(len(cfg.channels))
    flags = np.zeros(len(cfg.channels), np.uint32)
    values[cfg.channel_index["wx8.ghi"]] = 800.0
    values[cfg.channel_index["wx16.ghi"]] = np.nan  # a missing pyranometer
    values[cfg.channel_index["wx22.ghi"]] = 1500.0  # over-irradiance clips at the rating
    res = q.process(values, flags, 0.0)
    assert res.values is values and res.flags is flags
    np.testing.assert_allclose(res.pv_mw, [0.68, 0.5, 1.0, 0.0])
    assert np.all(res.pv_sigma_mw == pytest.approx(0.3))
