"""Weather for scenario traces: measured hourly TMY data plus a sub-hourly cloud model.

Sources
-------
The hourly backbone is real measurement-based data: the typical meteorological year (TMY)
files that pvlib ships in ``pvlib/data`` (NSRDB TMY3 for Greensboro NC and Sand Point AK,
TMY2 for Miami FL). A site key selects the file (:data:`SITES`).

Sub-hourly model (what turns hourly values into 1 s values)
----------------------------------------------------------
Hourly TMY irradiance is an hour average, so 1 s steps need synthetic variability. We use a
two-state (sun / cloud shadow) clear-sky-index model in the spirit of the Markov-chain
mixture model of Munkhammar & Widén (2018, Solar Energy 170:174-183), written as a
thresholded latent Gaussian process so it is vectorised and can be made spatially
correlated:

1. Clear sky: Ineichen/Perez clear-sky GHI with a fixed Linke turbidity (3.0) at the real
   solar position of the site; ``kc_h = GHI_tmy / mean_hour(GHI_cs)`` is the hourly
   clear-sky index, linearly interpolated between hour centres to ``kc(t)``.
2. Shadow level: ``kc_shade(t) = min(0.35, 0.9 kc(t))`` (thick cumulus lets 25-35 % through).
   Sunny level: ``kc_sun = 1``. The fraction of time in shadow that keeps the hour mean is
   ``f(t) = clip((kc_sun - kc) / (kc_sun - kc_shade), 0, 1)``.
3. Latent cloud field ``z(t)``: unit-variance Gaussian, white noise through two cascaded
   AR(1) filters, ``z_k = phi z_{k-1} + e_k`` with ``phi = exp(-dt / tau)``, tau = 90 s
   (cloud passage times of a few minutes). The point is in shadow when
   ``z(t) < Phi^-1(f(t))``, so the shadow fraction follows the TMY hour while shadows come
   and go as ramps.
4. Texture: inside a shadow, ``kc`` varies by 8 % (AR(1), tau 20 s); in sun by 1 %.
   Cloud enhancement: near a shadow edge the sunny ``kc`` is raised by up to 12 %
   (exponential kernel of 30 s around each edge), as observed at broken-cloud edges.
   Steps 1-4 give the *point* clear-sky index ``kc_point(t)`` of the cloud field at the
   station; the textures belong to the clouds and are shared with the plant (below).
5. Sensor: a thermopile pyranometer sees a shadow edge pass in ~3 s (moving average 3 s
   of ``kc_point``): the station's GHI.
6. Decomposition: ``GHI = kc * GHI_cs``; DNI and DHI from the Erbs model at 1 s, so that
   ``GHI = DNI cos(z) + DHI`` holds exactly.

Plant irradiance (:func:`plant_irradiance`): spatial average over the footprint
-------------------------------------------------------------------------------
The twin configs put each weather station *on* its PV plant (a 1 MW AC plant at DC/AC 1.2
covers ~1.5-2 ha, ~100-150 m across). The plant's irradiance is the spatial average of
the cloud field over its footprint. Under frozen-cloud advection (Taylor's hypothesis: the
field moves across the site at the cloud speed ``v`` without changing), a space average
along the wind is a time average at the station, which is the mechanism of the wavelet
variability model of Lave, Kleissl & Stein (2013, IEEE Trans. Sustain. Energy 4:501-509)
and of the plant-size low-pass filter of Marcos et al. (2011, Prog. Photovolt.
19:218-227). What we implement is that boxcar directly (not the WVM's wavelet
decomposition nor Marcos' first-order filter)::

    kc_plant(t) = (1 / W) * integral_{t - lag - W/2}^{t - lag + W/2} kc_point'(s) ds
    W   = L / v        along-wind length L ~ U(100, 150) m   -> W ~ 5-40 s
    lag = d / v        station-to-plant-centroid offset along the wind d ~ U(-L/2, L/2)
                       (the station stands somewhere on the plant)  -> |lag| <~ 20 s
    v   = clip(3 * median surface wind, 4, 20) m/s  (cloud level moves faster than 10 m)

``kc_point'`` is the point index of the field one plant sees, built from the station's own
latent field with a small independent residual for the cross-wind extent the station's
streamline does not sample, ``z_p = rho z_s + sqrt(1 - rho^2) z_indep`` with rho drawn in
0.95-0.98 (the same cloud textures, the same hourly statistics). The integral is evaluated
exactly on the piecewise-constant samples (cumulative sum, linear interpolation), so
fractional lags and widths need no resampling. For a 1.5 ha plant Marcos et al.'s cut-off
``f_c = 0.0167 / sqrt(S[ha]) Hz`` is 0.014 Hz; our boxcar's half-power frequency
``0.443 / W`` is 0.011-0.09 Hz, the same order. What remains hidden from a forecaster
that reads the station: the residual (rho < 1), the sign and size of ``lag`` (a plant
centroid upwind of the station sees a cloud before the station does) and the footprint
width, besides the plant's own hidden parameters (:mod:`hil.pvplant`).

Air temperature is the TMY hourly value interpolated plus an AR(1) fluctuation (0.2 K,
tau 5 min); wind speed is interpolated plus gusts (20 % AR(1), tau 8 s); wind direction is
interpolated on the unit circle plus 10 deg AR(1) meander.

Time mapping: the TMY is a typical year; a timestamp is mapped by its day of year and time
of day in the site's local standard time (29 Feb uses 28 Feb). Solar position and clear
sky use the real timestamp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.special import ndtri

from hil.errors import ScenarioError
from hil.trace import WEATHER_FIELDS


@dataclass(frozen=True)
class SiteInfo:
    key: str
    filename: str
    fmt: str  # "tmy3" or "tmy2"
    description: str


SITES: dict[str, SiteInfo] = {
    "greensboro": SiteInfo("greensboro", "723170TYA.CSV", "tmy3",
                           "Greensboro Piedmont Triad Intl, NC, USA (NSRDB TMY3 723170)"),
    "sandpoint": SiteInfo("sandpoint", "703165TY.csv", "tmy3",
                          "Sand Point, AK, USA (NSRDB TMY3 703165)"),
    "miami": SiteInfo("miami", "12839.tm2", "tmy2", "Miami Intl, FL, USA (NSRDB TMY2 12839)"),
}

LINKE_TURBIDITY = 3.0


@dataclass(frozen=True)
class WeatherSeries:
    """One array per :data:`WEATHER_FIELDS` channel, over the same time axis."""

    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    temp_air: np.ndarray
    wind_speed: np.ndarray
    wind_dir: np.ndarray

    def stack(self) -> np.ndarray:
        """(T, 6) in :data:`WEATHER_FIELDS` order."""
        return np.stack([getattr(self, f) for f in WEATHER_FIELDS], axis=1)


@dataclass(frozen=True)
class Tmy(WeatherSeries):
    """Hourly typical-year data; row i is the hour interval [i, i+1) of the year (LST)."""

    site: str
    name: str
    latitude: float
    longitude: float
    altitude: float
    tz_hours: float
    source: str


def site_keys() -> list[str]:
    return sorted(SITES)


def _pvlib_data_dir() -> str:
    import pvlib

    return os.path.join(os.path.dirname(pvlib.__file__), "data")


@lru_cache(maxsize=8)
def load_tmy(site: str) -> Tmy:
    """Read the TMY file that pvlib ships for ``site`` (see :data:`SITES`)."""
    import pvlib

    info = SITES.get(site)
    if info is None:
        raise ScenarioError(f"unknown TMY site {site!r}; choose one of {site_keys()}")
    path = os.path.join(_pvlib_data_dir(), info.filename)
    if not os.path.exists(path):
        raise ScenarioError(f"pvlib does not ship {info.filename} (looked in {path})")
    if info.fmt == "tmy3":
        df, meta = pvlib.iotools.read_tmy3(path, map_variables=True)
        cols = ("ghi", "dni", "dhi", "temp_air", "wind_speed", "wind_direction")
        arrays = [df[c].to_numpy(float) for c in cols]
        name = str(meta["Name"]).strip('"')
        tz = float(meta["TZ"])
    else:
        df, meta = pvlib.iotools.read_tmy2(path)
        arrays = [df["GHI"].to_numpy(float), df["DNI"].to_numpy(float),
                  df["DHI"].to_numpy(float),
                  df["DryBulb"].to_numpy(float) * 0.1,  # TMY2 stores 0.1 degC
                  df["Wspd"].to_numpy(float) * 0.1,  # and 0.1 m/s
                  df["Wdir"].to_numpy(float)]
        name = str(meta["City"])
        tz = float(meta["TZ"])
    if any(len(a) != 8760 for a in arrays):
        raise ScenarioError(f"{info.filename}: expected 8760 hourly rows")
    return Tmy(site=site, name=name, latitude=float(meta["latitude"]),
               longitude=float(meta["longitude"]), altitude=float(meta["altitude"]),
               tz_hours=tz, ghi=arrays[0], dni=arrays[1], dhi=arrays[2], temp_air=arrays[3],
               wind_speed=arrays[4], wind_dir=arrays[5],
               source=f"pvlib {pvlib.__version__} data/{info.filename}: {info.description}")


def hour_of_typical_year(time_s: np.ndarray, tz_hours: float) -> np.ndarray:
    """Fractional hour of a 365-day year in local standard time (29 Feb -> 28 Feb)."""
    local = np.asarray(time_s, dtype=np.float64) + tz_hours * 3600.0
    days = np.floor(local / 86400.0)
    # civil calendar from days since epoch (vectorised via numpy datetime64)
    d64 = days.astype("int64").astype("datetime64[D]")
    year_start = d64.astype("datetime64[Y]").astype("datetime64[D]")
    doy = (d64 - year_start).astype(np.int64)  # 0-based
    year = d64.astype("datetime64[Y]").astype(np.int64) + 1970
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    doy = np.where(leap & (doy >= 59), doy - 1, doy)
    return doy * 24.0 + (local - days * 86400.0) / 3600.0


def interp_hourly(values: np.ndarray, hoy: np.ndarray) -> np.ndarray:
    """Periodic linear interpolation of hour-interval values (centres at i + 0.5)."""
    centres = np.arange(8760, dtype=np.float64) + 0.5
    return np.interp(hoy, centres, values, period=8760.0)


def ar1(rng: np.random.Generator, n: int, tau_steps: float) -> np.ndarray:
    """Unit-variance stationary AR(1): x_k = phi x_{k-1} + sqrt(1 - phi^2) e_k."""
    phi = float(np.exp(-1.0 / max(tau_steps, 1e-9)))
    x0 = rng.standard_normal()
    e = rng.standard_normal(n)
    # x_k = phi x_{k-1} + sqrt(1-phi^2) e_k, started in the stationary distribution
    y, _ = lfilter([np.sqrt(1.0 - phi * phi)], [1.0, -phi], e, zi=[phi * x0])
    return np.asarray(y)


def smooth_field(rng: np.random.Generator, n: int, tau_steps: float) -> np.ndarray:
    """Unit-variance Gaussian process: white noise through two cascaded AR(1) filters.

    Smoother than a single AR(1) (no chattering at a threshold); normalised by the
    impulse response energy; a burn-in of 8 tau makes it stationary from the first step.
    """
    phi = float(np.exp(-1.0 / max(tau_steps, 1e-9)))
    burn = int(min(8 * tau_steps, 20000)) + 1
    e = rng.standard_normal(n + burn)
    a = np.convolve([1.0, -phi], [1.0, -phi])
    y = lfilter([1.0], a, e)[burn:]
    h = lfilter([1.0], a, np.r_[1.0, np.zeros(int(12 * tau_steps) + 50)])
    return np.asarray(y / np.sqrt(np.sum(h * h)))


def moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (edge-padded); width 1 returns x."""
    if width <= 1:
        return x
    pad = width // 2
    xp = np.pad(x, (pad, width - 1 - pad), mode="edge")
    c = np.cumsum(np.r_[0.0, xp])
    return (c[width:] - c[:-width]) / width


@dataclass
class SolarGeometry:
    zenith: np.ndarray
    apparent_zenith: np.ndarray
    azimuth: np.ndarray
    ghi_clear: np.ndarray
    dni_extra: np.ndarray
    doy: np.ndarray


def solar_geometry(tmy: Tmy, time_s: np.ndarray, *, coarse_s: float = 60.0) -> SolarGeometry:
    """Solar position and clear-sky GHI at ``time_s``; computed every ``coarse_s`` and
    linearly interpolated (error << 0.01 deg at 60 s)."""
    import pvlib

    t = np.asarray(time_s, dtype=np.float64)
    t0, t1 = float(t[0]), float(t[-1])
    grid = np.arange(np.floor(t0 / coarse_s) * coarse_s, t1 + 2 * coarse_s, coarse_s)
    idx = pd.to_datetime(grid, unit="s", utc=True)
    sp = pvlib.solarposition.get_solarposition(idx, tmy.latitude, tmy.longitude,
                                               altitude=tmy.altitude, method="nrel_numpy")
    zen = sp["zenith"].to_numpy(float)
    azz = np.unwrap(np.radians(sp["azimuth"].to_numpy(float)))
    app = sp["apparent_zenith"].to_numpy(float)
    dni_extra = pvlib.irradiance.get_extra_radiation(idx).to_numpy(float)
    am = pvlib.atmosphere.get_relative_airmass(app)
    am_abs = pvlib.atmosphere.get_absolute_airmass(am, pvlib.atmosphere.alt2pres(tmy.altitude))
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = pvlib.clearsky.ineichen(app, am_abs, LINKE_TURBIDITY, altitude=tmy.altitude,
                                     dni_extra=dni_extra)
    ghi_cs = np.nan_to_num(np.asarray(cs["ghi"], dtype=float))
    doy = idx.dayofyear.to_numpy(float)
    return SolarGeometry(
        zenith=np.interp(t, grid, zen),
        apparent_zenith=np.interp(t, grid, app),
        azimuth=np.degrees(np.interp(t, grid, azz)) % 360.0,
        ghi_clear=np.maximum(np.interp(t, grid, ghi_cs), 0.0),
        dni_extra=np.interp(t, grid, dni_extra),
        doy=np.interp(t, grid, doy),
    )


def hourly_clear_sky_index(tmy: Tmy, time_s: np.ndarray) -> np.ndarray:
    """TMY hour-mean GHI / model hour-mean clear-sky GHI, interpolated to ``time_s``."""
    t = np.asarray(time_s, dtype=np.float64)
    tz = tmy.tz_hours * 3600.0
    # hour intervals (LST) covering the trace, with one hour margin each side
    h0 = np.floor((t[0] + tz) / 3600.0) - 1
    h1 = np.floor((t[-1] + tz) / 3600.0) + 2
    hours = np.arange(h0, h1 + 1)  # interval starts, in LST hours since epoch
    fine = (hours[:, None] + (np.arange(12) + 0.5)[None, :] / 12.0) * 3600.0 - tz  # UTC s
    geo = solar_geometry(tmy, fine.ravel(), coarse_s=300.0)
    cs_mean = geo.ghi_clear.reshape(fine.shape).mean(axis=1)
    hoy = hour_of_typical_year(hours * 3600.0 - tz + 1800.0, tmy.tz_hours)
    ghi_tmy = tmy.ghi[np.floor(hoy).astype(int) % 8760]
    # kc_h = GHI_tmy / mean(GHI_cs); where the sun is barely up, fall back to a plain ratio
    kc_h = np.where(cs_mean > 5.0, ghi_tmy / np.maximum(cs_mean, 1e-9), 1.0)
    kc_h = np.where((cs_mean <= 5.0) & (ghi_tmy <= 0.0) & (cs_mean > 0.5), 0.3, kc_h)
    kc_h = np.clip(kc_h, 0.0, 1.15)
    centres = (hours + 0.5) * 3600.0 - tz
    return np.interp(t, centres, kc_h)


def point_kc(z: np.ndarray, kc_mean: np.ndarray, tex_shade: np.ndarray,
             tex_sun: np.ndarray, *, step_s: float) -> np.ndarray:
    """Point clear-sky index of the cloud field (steps 2-4 of the module docstring).

    ``tex_shade`` and ``tex_sun`` are the multiplicative textures (``1 + 0.08 AR(1)``,
    ``1 + 0.01 AR(1)``): they belong to the clouds, so a plant under the same clouds as
    its station reuses them.
    """
    kc_sun = 1.0
    kc_shade = np.minimum(0.35, 0.9 * kc_mean)
    # f = (kc_sun - kc) / (kc_sun - kc_shade): share of time in shadow keeping the mean
    frac = np.clip((kc_sun - kc_mean) / np.maximum(kc_sun - kc_shade, 1e-6), 0.0, 1.0)
    threshold = ndtri(np.clip(frac, 1e-6, 1 - 1e-6))
    shade = (z < threshold).astype(np.float64)
    # cloud enhancement: exp kernel (30 s) around shadow pixels, applied in sun only
    alpha = 1.0 - np.exp(-step_s / 30.0)
    fwd = lfilter([alpha], [1.0, alpha - 1.0], shade)
    bwd = lfilter([alpha], [1.0, alpha - 1.0], shade[::-1])[::-1]
    near = np.clip(np.maximum(fwd, bwd) * 2.5, 0.0, 1.0)
    # enhancement only in broken-cloud conditions (not under overcast)
    enh = 0.12 * near * (1.0 - shade) * np.clip((kc_mean - 0.3) / 0.3, 0.0, 1.0)
    kc = shade * kc_shade * tex_shade + (1.0 - shade) * (kc_sun + enh) * tex_sun
    return np.asarray(kc)


def cloud_textures(rng: np.random.Generator, n: int, step_s: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tex_shade, tex_sun): 8 % AR(1) texture (tau 20 s) in shadow, 1 % (tau 60 s) in sun."""
    tex_shade = 1.0 + 0.08 * ar1(rng, n, 20.0 / step_s)
    tex_sun = 1.0 + 0.01 * ar1(rng, n, 60.0 / step_s)
    return tex_shade, tex_sun


def window_average(x: np.ndarray, step_s: float, *, lag_s: float, width_s: float
                   ) -> np.ndarray:
    """``y(t) = (1/W) integral_{t-lag-W/2}^{t-lag+W/2} x(s) ds`` on a regular grid.

    ``x`` is piecewise constant (sample k covers ``[(k - 1/2) dt, (k + 1/2) dt)``) and
    continued by its edge values, so any real ``lag_s`` (either sign) and ``width_s > 0``
    are exact: the integral is the difference of the cumulative sum, interpolated linearly.
    """
    n = len(x)
    pad = int(np.ceil((abs(lag_s) + width_s) / step_s)) + 2
    xp = np.r_[np.full(pad, x[0]), x, np.full(pad, x[-1])]
    # C(b_j) = sum of samples left of boundary b_j = (j - pad - 1/2) dt  (in steps)
    c = np.r_[0.0, np.cumsum(xp)] * step_s
    bounds = np.arange(len(c), dtype=np.float64) - pad - 0.5
    t = np.arange(n, dtype=np.float64) - lag_s / step_s
    half = 0.5 * width_s / step_s
    hi = np.interp(t + half, bounds, c)
    lo = np.interp(t - half, bounds, c)
    return np.asarray((hi - lo) / width_s)


def decompose(ghi: np.ndarray, geo: SolarGeometry) -> tuple[np.ndarray, np.ndarray]:
    """DNI, DHI from GHI by the Erbs model, so GHI = DNI cos(z) + DHI."""
    import pvlib

    out = pvlib.irradiance.erbs(ghi, geo.zenith, geo.doy)
    dni = np.nan_to_num(np.asarray(out["dni"], dtype=float))
    dhi = np.nan_to_num(np.asarray(out["dhi"], dtype=float))
    cosz = np.cos(np.radians(geo.zenith))
    # keep the closure exact where the sun is up; where erbs zeroes DNI, DHI = GHI
    dhi = np.where(cosz > 0, ghi - dni * np.maximum(cosz, 0.0), ghi)
    return dni, np.maximum(dhi, 0.0)


@dataclass(frozen=True)
class StationWeather(WeatherSeries):
    """True weather at one weather station (no sensor noise), plus what plants need."""

    site: str
    z: np.ndarray  # latent cloud field at the station
    kc_mean: np.ndarray
    geo: SolarGeometry
    step_s: float
    tex_shade: np.ndarray | None = None  # cloud textures (shared with the plant)
    tex_sun: np.ndarray | None = None


@dataclass
class SiteSky:
    """What every station of one site shares: geometry, hourly kc, a regional cloud field."""

    site: str
    geo: SolarGeometry
    kc_mean: np.ndarray
    z: np.ndarray


def site_sky(site: str, time_s: np.ndarray, rng: np.random.Generator,
             *, tau_cloud_s: float = 90.0) -> SiteSky:
    tmy = load_tmy(site)
    t = np.asarray(time_s, dtype=np.float64)
    step = float(t[1] - t[0]) if len(t) > 1 else 1.0
    return SiteSky(site=site, geo=solar_geometry(tmy, t),
                   kc_mean=hourly_clear_sky_index(tmy, t),
                   z=smooth_field(rng, len(t), tau_cloud_s / step))


def station_weather(site: str, time_s: np.ndarray, rng: np.random.Generator,
                    *, sky: SiteSky | None = None, rho: float = 0.8,
                    tau_cloud_s: float = 90.0) -> StationWeather:
    """True 1 s (or any step) weather at a station of ``site``.

    With ``sky`` (shared by the stations of a site) the station's cloud field is
    ``rho z_site + sqrt(1 - rho^2) z_own``: stations of one site are correlated, not equal.
    """
    tmy = load_tmy(site)
    t = np.asarray(time_s, dtype=np.float64)
    n = len(t)
    step = float(t[1] - t[0]) if n > 1 else 1.0
    if sky is None:
        geo = solar_geometry(tmy, t)
        kc_mean = hourly_clear_sky_index(tmy, t)
        regional_z = None
    else:
        geo, kc_mean, regional_z = sky.geo, sky.kc_mean, sky.z
    z = smooth_field(rng, n, tau_cloud_s / step)
    if regional_z is not None:
        z = rho * regional_z + np.sqrt(1.0 - rho * rho) * z
    tex_shade, tex_sun = cloud_textures(rng, n, step)
    # the pyranometer's ~3 s response to the point field
    kc = np.clip(moving_average(point_kc(z, kc_mean, tex_shade, tex_sun, step_s=step),
                                max(1, round(3.0 / step))), 0.0, 1.5)
    ghi = kc * geo.ghi_clear
    dni, dhi = decompose(ghi, geo)
    hoy = hour_of_typical_year(t, tmy.tz_hours)
    temp = interp_hourly(tmy.temp_air, hoy) + 0.2 * ar1(rng, n, 300.0 / step)
    ws_mean = np.maximum(interp_hourly(tmy.wind_speed, hoy), 0.0)
    ws = np.maximum(ws_mean * (1.0 + 0.2 * ar1(rng, n, 8.0 / step)), 0.0)
    rad = np.radians(tmy.wind_dir)
    u = interp_hourly(np.sin(rad), hoy)
    v = interp_hourly(np.cos(rad), hoy)
    wd = (np.degrees(np.arctan2(u, v)) + 10.0 * ar1(rng, n, 60.0 / step)) % 360.0
    return StationWeather(site=site, ghi=ghi, dni=dni, dhi=dhi, temp_air=temp,
                          wind_speed=ws, wind_dir=wd, z=z, kc_mean=kc_mean, geo=geo,
                          step_s=step, tex_shade=tex_shade, tex_sun=tex_sun)


@dataclass
class LocalIrradiance:
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    lag_s: float  # cloud field at the plant centroid = station field delayed by lag_s
    avg_s: float = 0.0  # footprint averaging time W = L / v
    rho: float = 1.0  # mean latent correlation of the plant's strips to the station
    cloud_speed: float = 0.0  # m/s


# plant footprint and cloud-speed ranges (module docstring)
FOOTPRINT_M = (100.0, 150.0)  # along-wind and cross-wind extent of a 1 MW AC plant
CLOUD_SPEED = (4.0, 20.0)  # m/s
STREAMLINES = 4  # cross-wind strips the plant is split into
TAU_CLOUD_S = 90.0  # time constant of the latent field (both AR(1) stages)


def field_correlation(distance_m: np.ndarray | float, length_m: float) -> np.ndarray:
    """Correlation of the latent field at ``distance_m``: the autocorrelation of two
    cascaded AR(1) stages, ``(1 + x) exp(-x)`` with ``x = d / (v tau)``, taken as isotropic
    (a cross-wind offset decorrelates like the same along-wind offset)."""
    x = np.abs(np.asarray(distance_m, dtype=np.float64)) / length_m
    return np.asarray((1.0 + x) * np.exp(-x))


def plant_irradiance(station: StationWeather, rng: np.random.Generator, *,
                     footprint_m: tuple[float, float] | None = None,
                     station_at: tuple[float, float] | None = None) -> LocalIrradiance:
    """Irradiance over a plant whose weather station stands on it: the spatial average
    of the cloud field over the footprint (see module docstring).

    ``footprint_m`` = (along-wind, cross-wind) extent; ``station_at`` = the station's
    position on the plant as fractions in [-0.5, 0.5] of each extent from the centroid.
    ``None`` draws them from ``rng``.
    """
    n = len(station.z)
    step = station.step_s
    if footprint_m is None:
        length, width = (float(v) for v in rng.uniform(*FOOTPRINT_M, size=2))
    else:
        length, width = footprint_m
    if station_at is None:
        fx, fy = (float(v) for v in rng.uniform(-0.5, 0.5, size=2))
    else:
        fx, fy = station_at
    # cloud-level wind ~3x the 10 m wind, within the usual cumulus speeds
    speed = float(np.clip(3.0 * np.median(station.wind_speed), *CLOUD_SPEED))
    # cross-wind: strips of the plant at distance dy from the station's streamline
    centres = (np.arange(STREAMLINES) + 0.5) / STREAMLINES - 0.5
    rhos = field_correlation((centres - fy) * width, speed * TAU_CLOUD_S)
    if station.tex_shade is None or station.tex_sun is None:
        tex_shade, tex_sun = cloud_textures(rng, n, step)
    else:
        tex_shade, tex_sun = station.tex_shade, station.tex_sun
    kc_pt = np.zeros(n)
    for r in rhos:
        # z_j = rho_j z_s + sqrt(1 - rho_j^2) z_indep,j
        z_j = r * station.z + np.sqrt(1.0 - r * r) * smooth_field(rng, n, TAU_CLOUD_S / step)
        kc_pt += point_kc(z_j, station.kc_mean, tex_shade, tex_sun, step_s=step)
    kc_pt /= STREAMLINES
    # along-wind: kc_plant(t) = (1/W) int_{t-lag-W/2}^{t-lag+W/2} kc_pt(s) ds,
    # W = L / v, lag = (centroid - station) / v = -fx L / v
    lag_s, avg_s = -fx * length / speed, length / speed
    kc = np.clip(window_average(kc_pt, step, lag_s=lag_s, width_s=avg_s), 0.0, 1.5)
    ghi = kc * station.geo.ghi_clear
    dni, dhi = decompose(ghi, station.geo)
    return LocalIrradiance(ghi=ghi, dni=dni, dhi=dhi, lag_s=lag_s, avg_s=avg_s,
                           rho=float(rhos.mean()), cloud_speed=speed)
