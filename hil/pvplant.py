"""Physical model of a 1 MW PV plant (pvlib), the truth behind the PV pseudo-measurement.

Chain (all vectorised over the trace, one call per plant):

1. Plane-of-array irradiance: Hay-Davies transposition
   (``pvlib.irradiance.get_total_irradiance``) of the plant's *local* GHI/DNI/DHI (not the
   weather station's: see :func:`hil.weather.plant_irradiance`), fixed tilt/azimuth drawn
   per plant around latitude-tilt, due south (tilt 20-30 deg, azimuth 170-190 deg).
2. Incidence angle losses on the beam part (``pvlib.iam.physical``, glass, n=1.526).
3. Soiling: a transmission loss ``1 - s`` constant over the trace, ``s`` drawn per plant
   in 1-4 % plus 0.1 %/day accumulation (Kimber-style linear accumulation with no rain
   cleaning inside a trace).
4. Cell temperature: Faiman steady state (``pvlib.temperature.faiman``, u0 = 25, u1 = 6.84)
   filtered by a first-order thermal lag, ``T_k = T_{k-1} + (dt / (tau + dt)) (T_ss - T_{k-1})``
   with tau = 7 min (module thermal mass), so temperature lags irradiance ramps.
5. DC: PVWatts (``pvlib.pvsystem.pvwatts_dc``, gamma = -0.37 %/K) at DC/AC ratio 1.2,
   times a per-plant DC derate (wiring, mismatch, ageing) drawn in 0.93-0.97.
6. AC: PVWatts inverter (``pvlib.inverter.pvwatts``, nominal efficiency 96.5 %) with
   clipping at the AC rating; no output (and no night consumption) below zero.

None of steps 3-6's per-plant parameters is visible in the weather channels, and the local
irradiance is not the measured one: a forecaster cannot reproduce the truth by re-running
this model on the weather stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import lfilter

from hil.weather import LocalIrradiance, SolarGeometry, StationWeather


@dataclass(frozen=True)
class PlantParams:
    """Hidden per-plant parameters (recorded in the trace metadata)."""

    rating_mw: float
    dc_ac_ratio: float
    tilt_deg: float
    azimuth_deg: float
    albedo: float
    soiling: float  # fraction of light lost at the start of the trace
    soiling_rate_per_day: float
    dc_derate: float
    gamma_pdc: float
    tau_thermal_s: float
    eta_inv_nom: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def draw_params(rng: np.random.Generator, rating_mw: float, latitude: float) -> PlantParams:
    """Random but plausible hidden parameters for one plant."""
    return PlantParams(
        rating_mw=float(rating_mw),
        dc_ac_ratio=1.2,
        tilt_deg=float(np.clip(abs(latitude) * 0.75 + rng.uniform(-5, 5), 10.0, 35.0)),
        azimuth_deg=float(180.0 + rng.uniform(-10.0, 10.0)) if latitude >= 0
        else float(rng.uniform(-10.0, 10.0)) % 360.0,
        albedo=float(rng.uniform(0.15, 0.25)),
        soiling=float(rng.uniform(0.01, 0.04)),
        soiling_rate_per_day=0.001,
        dc_derate=float(rng.uniform(0.93, 0.97)),
        gamma_pdc=-0.0037,
        tau_thermal_s=420.0,
        eta_inv_nom=0.965,
    )


def first_order_lag(x: np.ndarray, tau_s: float, step_s: float) -> np.ndarray:
    """y_k = y_{k-1} + a (x_k - y_{k-1}), a = dt / (tau + dt), starting at y_0 = x_0."""
    a = step_s / (tau_s + step_s)
    y, _ = lfilter([a], [1.0, a - 1.0], x, zi=[(1.0 - a) * x[0]])
    return np.asarray(y)


@dataclass
class PlantOutput:
    p_ac_mw: np.ndarray
    poa: np.ndarray
    t_cell: np.ndarray
    p_dc_mw: np.ndarray


def plant_output(params: PlantParams, local: LocalIrradiance, station: StationWeather,
                 elapsed_s: np.ndarray) -> PlantOutput:
    """AC output (MW) of one plant over the trace."""
    import pvlib

    geo: SolarGeometry = station.geo
    with np.errstate(invalid="ignore", divide="ignore"):
        poa = pvlib.irradiance.get_total_irradiance(
            params.tilt_deg, params.azimuth_deg, geo.apparent_zenith, geo.azimuth,
            local.dni, local.ghi, local.dhi, dni_extra=geo.dni_extra,
            albedo=params.albedo, model="haydavies")
        aoi = pvlib.irradiance.aoi(params.tilt_deg, params.azimuth_deg, geo.apparent_zenith,
                                   geo.azimuth)
        iam = pvlib.iam.physical(aoi)
    beam = np.nan_to_num(np.asarray(poa["poa_direct"], dtype=float))
    diffuse = np.nan_to_num(np.asarray(poa["poa_diffuse"], dtype=float))
    poa_global = np.maximum(beam + diffuse, 0.0)
    iam = np.nan_to_num(np.asarray(iam, dtype=float))
    # effective irradiance = (IAM * beam + diffuse) * (1 - soiling(t))
    soil = params.soiling + params.soiling_rate_per_day * elapsed_s / 86400.0
    effective = np.maximum(beam * iam + diffuse, 0.0) * (1.0 - soil)
    t_ss = np.asarray(pvlib.temperature.faiman(poa_global, station.temp_air,
                                               station.wind_speed), dtype=float)
    t_cell = first_order_lag(t_ss, params.tau_thermal_s, station.step_s)
    pdc0_w = params.rating_mw * params.dc_ac_ratio * 1e6
    pdc = np.asarray(pvlib.pvsystem.pvwatts_dc(effective, t_cell, pdc0_w, params.gamma_pdc),
                     dtype=float) * params.dc_derate
    pdc = np.maximum(pdc, 0.0)
    # inverter DC rating so that pac0 = eta_nom * pdc0_inv = AC rating (clipping there)
    pdc0_inv = params.rating_mw * 1e6 / params.eta_inv_nom
    with np.errstate(invalid="ignore", divide="ignore"):
        pac = np.asarray(pvlib.inverter.pvwatts(pdc, pdc0_inv, params.eta_inv_nom), dtype=float)
    pac = np.clip(np.nan_to_num(pac), 0.0, params.rating_mw * 1e6)
    return PlantOutput(p_ac_mw=pac / 1e6, poa=poa_global, t_cell=t_cell, p_dc_mw=pdc / 1e6)
