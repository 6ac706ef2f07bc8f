"""Weather (TMY + sub-hourly cloud model), PV plant physics and load profiles of hil."""

from __future__ import annotations

import numpy as np
import pytest

from hil import loads, pvplant, weather
from hil.errors import ScenarioError


def _utc(text: str) -> float:
    return float(np.datetime64(text, "s").astype(np.int64))


def _day(site: str, date: str, seed: int = 0, step: float = 1.0
         ) -> tuple[np.ndarray, weather.StationWeather]:
    tmy = weather.load_tmy(site)
    t0 = _utc(f"{date}T00:00") - tmy.tz_hours * 3600.0  # local midnight (LST)
    t = t0 + np.arange(0.0, 86400.0, step)
    return t, weather.station_weather(site, t, np.random.default_rng(seed))


@pytest.mark.parametrize("site", weather.site_keys())
def test_tmy_sites_load(site: str) -> None:
    tmy = weather.load_tmy(site)
    assert tmy.ghi.shape == (8760,)
    assert 0 < tmy.ghi.max() < 1400
    assert -50 < tmy.temp_air.min() < tmy.temp_air.max() < 50
    assert np.all(tmy.wind_speed >= 0)
    assert -180 <= tmy.longitude <= 180 and -12 <= tmy.tz_hours <= 12


def test_unknown_site_names_choices() -> None:
    with pytest.raises(ScenarioError, match="greensboro"):
        weather.load_tmy("atlantis")


def test_hour_of_typical_year_mapping() -> None:
    # 1 Jan 00:30 local standard time (UTC-5) is hour 0.5; 1 Mar in a leap year maps like
    # 1 Mar in a common year
    t = _utc("1990-01-01T05:30")
    assert weather.hour_of_typical_year(np.array([t]), -5.0)[0] == pytest.approx(0.5)
    leap = weather.hour_of_typical_year(np.array([_utc("1992-03-01T17:00")]), -5.0)[0]
    common = weather.hour_of_typical_year(np.array([_utc("1990-03-01T17:00")]), -5.0)[0]
    assert leap == pytest.approx(common)


def test_daily_energy_tracks_tmy_and_closure_holds() -> None:
    site, date = "greensboro", "1990-06-05"
    t, st = _day(site, date)
    tmy = weather.load_tmy(site)
    hoy = weather.hour_of_typical_year(t, tmy.tz_hours)
    day0 = int(hoy[0] // 24) * 24
    tmy_wh = tmy.ghi[day0:day0 + 24].sum()  # hour means -> Wh/m2 per day
    syn_wh = st.ghi.sum() / 3600.0
    assert syn_wh == pytest.approx(tmy_wh, rel=0.15)
    cosz = np.cos(np.radians(st.geo.zenith))
    closure = st.dni * np.maximum(cosz, 0) + st.dhi - st.ghi
    assert np.abs(closure).max() < 1e-6
    assert np.all(st.ghi >= 0) and np.all(st.dni >= 0) and np.all(st.dhi >= 0)
    assert st.ghi[:3600].max() == 0.0  # local midnight-1am is dark


def test_one_second_steps_are_not_straight_lines() -> None:
    _t, st = _day("greensboro", "1990-06-05")
    day = st.geo.ghi_clear > 300
    d2 = np.abs(np.diff(st.ghi[day], 2))
    # a piecewise-linear hourly interpolation has zero second differences almost everywhere
    assert np.mean(d2 > 1.0) > 0.2
    # with ramps: some 10 s changes of more than 100 W/m2
    assert np.abs(st.ghi[10:][day[10:]] - st.ghi[:-10][day[10:]]).max() > 100.0


def test_plant_averages_the_station_cloud_field() -> None:
    _t, st = _day("greensboro", "1990-06-05")
    local = weather.plant_irradiance(st, np.random.default_rng(5))
    day = st.geo.ghi_clear > 300
    # the station stands on the plant: same clouds, not the same signal
    r = np.corrcoef(st.ghi[day], local.ghi[day])[0, 1]
    assert 0.9 < r < 0.999
    assert local.ghi[day].mean() == pytest.approx(st.ghi[day].mean(), rel=0.05)
    # footprint / cloud speed: 5-40 s of averaging; station within the footprint
    assert 5.0 <= local.avg_s <= 40.0 and abs(local.lag_s) <= 0.5 * local.avg_s + 1e-9
    assert 0.9 < local.rho <= 1.0
    # the spatial average is a low-pass: 1 s changes shrink, the slow level stays
    assert np.std(np.diff(local.ghi[day])) < 0.7 * np.std(np.diff(st.ghi[day]))
    slow = np.corrcoef(weather.moving_average(st.ghi, 300)[day],
                       weather.moving_average(local.ghi, 300)[day])[0, 1]
    assert slow > 0.98


def test_plant_average_is_the_advected_boxcar() -> None:
    # a clear-to-shadow edge passing: the plant's irradiance ramps linearly over W = L/v,
    # centred lag = -offset/v after the station's point edge
    x = np.r_[np.ones(100), np.zeros(100)]
    y = weather.window_average(x, 1.0, lag_s=5.0, width_s=10.0)
    assert y[99 + 5 - 5] == pytest.approx(1.0) and y[100 + 5 + 5] == pytest.approx(0.0)
    assert y[100 + 5] == pytest.approx(0.45)  # window [95, 105] s: sun until 99.5 s
    assert np.array_equal(weather.window_average(x, 1.0, lag_s=0.0, width_s=1.0), x)
    half = weather.window_average(x, 2.0, lag_s=-1.0, width_s=2.0)
    assert half[99] == pytest.approx(0.5)


def test_plant_irradiance_is_deterministic() -> None:
    _t, st = _day("miami", "1990-02-10", seed=3, step=10.0)
    a = weather.plant_irradiance(st, np.random.default_rng(1))
    b = weather.plant_irradiance(st, np.random.default_rng(1))
    assert np.array_equal(a.ghi, b.ghi) and a.lag_s == b.lag_s


def test_sites_differ() -> None:
    _, g = _day("greensboro", "1990-06-05", step=60.0)
    _, s = _day("sandpoint", "1990-06-05", step=60.0)
    assert not np.allclose(g.ghi, s.ghi)
    assert g.temp_air.mean() - s.temp_air.mean() > 5.0  # NC vs Aleutians in June


def test_same_seed_same_weather() -> None:
    _, a = _day("miami", "1990-02-10", seed=3, step=10.0)
    _, b = _day("miami", "1990-02-10", seed=3, step=10.0)
    _, c = _day("miami", "1990-02-10", seed=4, step=10.0)
    assert np.array_equal(a.ghi, b.ghi) and not np.array_equal(a.ghi, c.ghi)


def _plant(date: str = "1990-06-05", seed: int = 0
           ) -> tuple[weather.StationWeather, pvplant.PlantParams, pvplant.PlantOutput]:
    t, st = _day("greensboro", date, seed=seed)
    rng = np.random.default_rng(seed)
    local = weather.plant_irradiance(st, rng)
    prm = pvplant.draw_params(rng, 1.0, 36.1)
    return st, prm, pvplant.plant_output(prm, local, st, t - t[0])


def test_pv_output_physical() -> None:
    st, prm, out = _plant()
    p = out.p_ac_mw
    assert np.all(p >= 0) and p.max() <= prm.rating_mw + 1e-12
    assert np.all(p[st.geo.zenith > 95] == 0)  # night
    cf = p.mean() / prm.rating_mw
    assert 0.15 < cf < 0.40  # a June day in North Carolina
    # DC/AC 1.2: the inverter clips on a bright midday
    assert np.sum(p >= prm.rating_mw - 1e-9) > 0
    assert out.p_dc_mw.max() > prm.rating_mw


def test_module_temperature_lags_irradiance() -> None:
    st, _prm, out = _plant()
    # first-order lag: cell temperature moves slower than the steady-state target
    import pvlib

    t_ss = np.asarray(pvlib.temperature.faiman(out.poa, st.temp_air, st.wind_speed))
    assert np.std(np.diff(out.t_cell)) < 0.2 * np.std(np.diff(t_ss))
    lag = pvplant.first_order_lag(np.r_[np.zeros(10), np.ones(2000)], 420.0, 1.0)
    # after one time constant the step response is at 1 - 1/e
    assert lag[10 + 420] == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_load_profiles_shape() -> None:
    prof = loads.load_profiles()
    assert set(prof) == set(loads.PROFILES)
    for arr in prof.values():
        assert arr.shape == (3, 3, 96) and np.all(arr >= 0)
    # one winter workday of h0 at 15 min: evening peak above the night minimum
    t = _utc("1990-01-10T00:00") + np.arange(96) * 900.0 + 450.0
    h0 = loads.profile_value("h0", t)
    assert 0 < h0.min() < 0.5 * h0.max() <= 1.0
    assert 16 <= int(np.argmax(h0)) // 4 <= 21
    # commercial load is low on a Sunday
    sun = _utc("1990-01-14T12:00")
    wd = _utc("1990-01-10T12:00")
    g0 = loads.profile_value("g0", np.array([sun, wd]))
    assert g0[0] < 0.7 * g0[1]


def test_bus_loads_vary_per_bus() -> None:
    t = _utc("1990-06-05T00:00") + np.arange(0.0, 7200.0, 1.0)
    p_nom = np.array([0.0, 0.1, 0.1, 0.2])
    q_nom = np.array([0.0, 0.06, 0.04, 0.1])
    bl = loads.bus_loads(p_nom, q_nom, t, -5.0, np.random.default_rng(1))
    assert bl.p_mw.shape == (7200, 4)
    assert np.all(bl.p_mw[:, 0] == 0) and np.all(bl.p_mw[:, 1:] > 0)
    assert not np.allclose(bl.p_mw[:, 1], bl.p_mw[:, 2])  # same nominal, different bus
    assert np.all(bl.p_mw[:, 1:] < 1.6 * p_nom[1:])
    ratio = bl.q_mvar[:, 1] / bl.p_mw[:, 1]
    assert ratio == pytest.approx(0.6, rel=0.15)
    assert bl.profile[0] == "" and all(p in loads.PROFILES for p in bl.profile[1:])
