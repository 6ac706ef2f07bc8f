"""models.solar (NOAA solar position) against pvlib's NREL SPA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib
import pytest

from models.solar import SunTracker, solar_position

SITES = [(36.1, -79.95), (25.8, -80.3), (-33.9, 151.2), (64.8, -147.7), (0.5, 30.0)]


def _year(year: int, step_s: float = 3600.0 + 17.0) -> np.ndarray:
    t0 = np.datetime64(f"{year}-01-01T00:00", "s").astype(np.int64)
    t1 = np.datetime64(f"{year + 1}-01-01T00:00", "s").astype(np.int64)
    return np.arange(float(t0), float(t1), step_s)


@pytest.mark.parametrize("year", [1990, 2021, 2049])
@pytest.mark.parametrize(("lat", "lon"), SITES)
def test_matches_spa_within_0_1_deg_over_a_year(year: int, lat: float, lon: float) -> None:
    t = _year(year)
    spa = pvlib.solarposition.get_solarposition(pd.to_datetime(t, unit="s", utc=True), lat,
                                                lon, method="nrel_numpy")
    zen = spa["zenith"].to_numpy(float)
    az = np.radians(spa["azimuth"].to_numpy(float))
    s = solar_position(t, lat, lon)
    up = zen < 90.0
    assert np.abs(s.zenith_deg - zen)[up].max() < 0.1
    # angle between the two sun vectors (azimuth alone is ill-conditioned near the zenith)
    ref = np.stack([np.sin(np.radians(zen)) * np.sin(az), np.sin(np.radians(zen)) * np.cos(az),
                    np.cos(np.radians(zen))])
    ours = np.stack([s.sin_zenith * s.sin_azimuth, s.sin_zenith * s.cos_azimuth, s.cos_zenith])
    sep = np.degrees(np.arccos(np.clip((ref * ours).sum(axis=0), -1.0, 1.0)))
    assert sep[up].max() < 0.1
    off_zenith = up & (zen > 10.0)
    daz = (s.azimuth_deg - np.degrees(az) + 180.0) % 360.0 - 180.0
    assert np.abs(daz)[off_zenith].max() < 0.1


def test_tracker_matches_vectorised_for_several_plants() -> None:
    lats, lons = [36.1, 25.8, -33.9], [-79.95, -80.3, 151.2]
    tr = SunTracker(lats, lons)
    for now in _year(1990, 86400.0 * 7 + 3901.0):
        out = tr(float(now))
        s = solar_position(float(now), np.array(lats), np.array(lons))
        ref = np.stack([s.cos_zenith, s.sin_zenith, s.sin_azimuth, s.cos_azimuth], axis=1)
        # declination/EoT reused within 60 s: exact here (each call is a new week)
        np.testing.assert_allclose(out, ref, atol=1e-9)
    # within the refresh window the hour angle still moves, the result stays accurate
    t = 6.4e8
    tr(t)
    s = solar_position(t + 50.0, np.array(lats), np.array(lons))
    # 1e-5 in cos z is < 0.001 deg
    np.testing.assert_allclose(tr(t + 50.0)[:, 0], s.cos_zenith, atol=1e-5)


# ------------------------------------------------------------------ models.pv_features


def test_pv_inputs_match_the_training_series() -> None:
    from models.features import PV_FEATURES
    from models.pv_features import PV_SUN_FEATURES, PvInputs, feature_series

    rng = np.random.default_rng(0)
    t = float(np.datetime64("1990-06-01T15:00", "s").astype(np.int64)) + np.arange(5) * 2.0
    wx = np.column_stack([rng.uniform(0, 1000, 5), rng.uniform(0, 900, 5),
                          rng.uniform(0, 300, 5), rng.uniform(-5, 35, 5),
                          rng.uniform(0, 10, 5), rng.uniform(0, 360, 5)])
    series = feature_series(wx, t, 36.1, -79.95, PV_SUN_FEATURES)
    inp = PvInputs(PV_SUN_FEATURES, [36.1, 36.1], [-79.95, -79.95])
    for k in range(5):
        np.testing.assert_allclose(inp(np.stack([wx[k], wx[k]]), float(t[k]))[0], series[k],
                                   rtol=1e-6, atol=1e-6)
    # a model with the paper's six inputs is fed the weather unchanged
    np.testing.assert_array_equal(feature_series(wx, t, None, None, PV_FEATURES), wx)
    np.testing.assert_array_equal(PvInputs(PV_FEATURES, [None], [None])(wx[:1], 0.0), wx[:1])


def test_nominal_plane_sees_the_noon_sun_at_equinox_head_on() -> None:
    from models.pv_features import PV_SUN_FEATURES, feature_series

    # solar noon at the equinox: zenith = latitude = nominal tilt, sun due south
    lon = -79.95
    t_noon = float(np.datetime64("2021-03-20T12:00", "s").astype(np.int64)) - lon * 240.0
    ts = t_noon + np.arange(-1800.0, 1801.0, 60.0)
    wx = np.tile([800.0, 700.0, 150.0, 15.0, 2.0, 180.0], (ts.size, 1))
    f = feature_series(wx, ts, 36.1, lon, PV_SUN_FEATURES)
    cos_aoi, poa = f[:, 9], f[:, 10]
    assert cos_aoi.max() > 0.999  # within a few degrees of normal incidence
    assert abs(f[np.argmax(cos_aoi), 8] + 1.0) < 1e-3  # cos(azimuth) = -1: south
    # E = DNI cos θ + DHI (1 + cos β)/2 + GHI ρ (1 - cos β)/2
    beta = np.radians(36.1)
    k = np.argmax(cos_aoi)
    want = 700 * cos_aoi[k] + 150 * (1 + np.cos(beta)) / 2 + 800 * 0.2 * (1 - np.cos(beta)) / 2
    assert poa[k] == pytest.approx(want)


def test_unknown_inputs_and_missing_coordinates_are_named() -> None:
    from models.errors import ModelError
    from models.pv_features import PV_SUN_FEATURES, PvInputs, feature_series

    with pytest.raises(ModelError, match="not known"):
        PvInputs((*PV_SUN_FEATURES, "cloud_index"), [1.0], [1.0])
    with pytest.raises(ModelError, match="latitude"):
        PvInputs(PV_SUN_FEATURES, [None], [None])
    with pytest.raises(ModelError, match="latitude"):
        feature_series(np.zeros((2, 6)), np.zeros(2), None, None, PV_SUN_FEATURES)
