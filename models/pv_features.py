"""PV forecaster inputs with the sun's position (numpy only; shared by training, evaluation
and the gateway).

The paper's inputs (GHI, DNI, DHI, air temperature, wind speed, wind direction) do not
say where the sun is, so the plane-of-array irradiance of a tilted plant is not
determined by them: the same GHI/DNI/DHI gives a south-facing plant much less on a summer
morning (sun in the east-north-east) than at noon in winter. The forecaster stays the
paper's BiLSTM over a window of weather samples, with physically derived inputs appended
per sample (computed from the sample's time, epoch seconds UTC, and the plant's
coordinates; :mod:`models.solar`):

* ``cos_zenith``, ``sin_azimuth``, ``cos_azimuth``: the sun's direction (azimuth from
  north, clockwise);
* ``cos_aoi_nominal``: cosine of the angle of incidence on a *nominal* plane, tilt = |latitude|
  facing the equator (the classic fixed-tilt rule; the plant's true tilt and azimuth are
  unknown to the twin)::

      cos θ = cos z cos β + sin z sin β cos(A - γ),  β = |φ|,  γ = 180° (φ ≥ 0) or 0°

* ``poa_nominal``: the isotropic-sky (Liu-Jordan) transposition of the *measured*
  DNI/DHI/GHI to that plane, W/m²::

      E = DNI max(cos θ, 0) [cos z > 0] + DHI (1 + cos β)/2 + GHI ρ (1 - cos β)/2,  ρ = 0.2

* ``cos_aoi_typical``, ``poa_typical``: the same two terms on a *typical* fixed-tilt
  plane, tilt = clip(0.75 |latitude|, 10°, 35°) facing the equator: utility plants are
  tilted below the latitude and rarely beyond 35° (row spacing, wind load). At high
  latitudes the latitude-tilt plane is far from any plant (55° at Sand Point); the
  physics-informed forecaster's prior uses this plane. It is the convention around which
  the project's plant simulator draws hidden tilts (``hil.pvplant.draw_params``, ±5°), so
  on simulated plants it is the centre of the tilt distribution, not each plant's tilt.

All are min-max normalised like the weather with fixed ranges (:data:`SUN_MIN`,
:data:`SUN_MAX`: [-1, 1] for the direction cosines, 0-1400 W/m² for the plane of array),
the same at every site. Which inputs a model reads is its card's
``normalisation.features`` list; :func:`feature_series` and :class:`PvInputs` build
exactly that list, so a model without the sun features (the paper's six inputs) is fed
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.errors import ModelError
from models.features import PV_FEATURES, PV_UNITS
from models.solar import SunTracker, solar_position

# fixed min-max ranges of the weather inputs (W/m2, W/m2, W/m2, degC, m/s, deg): what the
# sensors can report anywhere the twin is deployed, so every site normalises alike
WEATHER_MIN = np.array([0.0, 0.0, 0.0, -30.0, 0.0, 0.0])
WEATHER_MAX = np.array([1400.0, 1100.0, 700.0, 50.0, 25.0, 360.0])
SUN_FEATURES = ("cos_zenith", "sin_azimuth", "cos_azimuth", "cos_aoi_nominal", "poa_nominal",
                "cos_aoi_typical", "poa_typical")
SUN_UNITS = ("1", "1", "1", "1", "W/m2", "1", "W/m2")
SUN_MIN = np.array([-1.0, -1.0, -1.0, -1.0, 0.0, -1.0, 0.0])
SUN_MAX = np.array([1.0, 1.0, 1.0, 1.0, 1400.0, 1.0, 1400.0])
NOMINAL_ALBEDO = 0.2
# typical plane: tilt = clip(TYPICAL_TILT_FACTOR |latitude|, TYPICAL_TILT_MIN, TYPICAL_TILT_MAX)
TYPICAL_TILT_FACTOR, TYPICAL_TILT_MIN, TYPICAL_TILT_MAX = 0.75, 10.0, 35.0
# the forecaster's inputs: the paper's six weather values + the sun terms
PV_SUN_FEATURES = PV_FEATURES + SUN_FEATURES
PV_SUN_UNITS = PV_UNITS + SUN_UNITS


def nominal_plane(latitude: float) -> tuple[float, float]:
    """(tilt, azimuth) in degrees of the nominal plane: tilt = |latitude|, equator-facing."""
    return abs(float(latitude)), (180.0 if latitude >= 0 else 0.0)


def _check(features: Sequence[str]) -> None:
    unknown = [f for f in features if f not in PV_SUN_FEATURES]
    if unknown:
        raise ModelError(f"PV inputs {unknown} are not known to models.pv_features "
                         f"(known: {list(PV_SUN_FEATURES)})")
    if tuple(features[:len(PV_FEATURES)]) != PV_FEATURES:
        raise ModelError(f"PV inputs must start with the weather values {list(PV_FEATURES)}, "
                         f"got {list(features)}")


def needs_sun(features: Sequence[str]) -> bool:
    """Whether a model reading ``features`` needs the plants' coordinates."""
    return any(f in SUN_FEATURES for f in features)


def typical_tilt(latitude: np.ndarray | float) -> np.ndarray:
    """Tilt in degrees of the typical plane: clip(0.75 |latitude|, 10, 35)."""
    return np.clip(TYPICAL_TILT_FACTOR * np.abs(np.asarray(latitude, dtype=np.float64)),
                   TYPICAL_TILT_MIN, TYPICAL_TILT_MAX)


def _plane_terms(weather: np.ndarray, cz: np.ndarray, sz: np.ndarray, cag: np.ndarray,
                 tilt_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos AOI and isotropic-sky POA on an equator-facing plane tilted ``tilt_deg``."""
    beta = np.radians(tilt_deg)
    cb, sb = np.cos(beta), np.sin(beta)
    # cos θ = cos z cos β + sin z sin β cos(A - γ)
    cos_aoi = cz * cb + sz * sb * cag
    ghi, dni, dhi = weather[..., 0], weather[..., 1], weather[..., 2]
    # E = DNI max(cos θ, 0) [cos z > 0] + DHI (1 + cos β)/2 + GHI ρ (1 - cos β)/2
    poa = (dni * np.maximum(cos_aoi, 0.0) * (cz > 0.0) + dhi * (1.0 + cb) / 2.0
           + ghi * NOMINAL_ALBEDO * (1.0 - cb) / 2.0)
    return cos_aoi, poa


def _sun_terms(weather: np.ndarray, cz: np.ndarray, sz: np.ndarray, sa: np.ndarray,
               ca: np.ndarray, latitude: np.ndarray | float) -> np.ndarray:
    """(..., 6) weather and sun terms (broadcast) -> (..., 7) in SUN_FEATURES order."""
    lat = np.asarray(latitude, dtype=np.float64)
    # equator-facing: cos(A - γ) = cos A cos γ + sin A sin γ = -cos A (γ = 180°) or cos A (γ = 0°)
    cag = np.where(lat >= 0, -ca, ca)
    cos_nom, poa_nom = _plane_terms(weather, cz, sz, cag, np.abs(lat))
    cos_typ, poa_typ = _plane_terms(weather, cz, sz, cag, typical_tilt(lat))
    return np.stack([cz, sa, ca, cos_nom, poa_nom, cos_typ, poa_typ], axis=-1)


def feature_series(weather: np.ndarray, time_s: np.ndarray, latitude: float | None,
                   longitude: float | None, features: Sequence[str]) -> np.ndarray:
    """(T, 6) measured weather at epoch seconds ``time_s`` -> (T, len(features)) raw inputs."""
    _check(features)
    wx = np.asarray(weather, dtype=np.float64)
    if not needs_sun(features):
        return wx[:, :len(features)]
    if latitude is None or longitude is None:
        raise ModelError("the PV forecaster reads the sun's position: the plant needs "
                         "latitude and longitude")
    s = solar_position(np.asarray(time_s, dtype=np.float64), latitude, longitude)
    sun = _sun_terms(wx, s.cos_zenith, s.sin_zenith, s.sin_azimuth, s.cos_azimuth, latitude)
    full = np.concatenate([wx, sun], axis=1)
    return full[:, [PV_SUN_FEATURES.index(f) for f in features]]


def feature_ranges(features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (min, max) per input for the min-max normalisation (weather: sensor ranges)."""
    _check(features)
    lo = np.concatenate([WEATHER_MIN, SUN_MIN])
    hi = np.concatenate([WEATHER_MAX, SUN_MAX])
    idx = [PV_SUN_FEATURES.index(f) for f in features]
    return lo[idx], hi[idx]


class PvInputs:
    """One raw input row per plant at one instant (the gateway's PV step).

    ``inputs(weather, now)``: ``weather`` (n_plants, 6) in :data:`PV_FEATURES` order, ``now``
    epoch seconds UTC -> (n_plants, len(features)) float64 (a new array). Plants are
    fixed at construction; the sun terms cost ~1 µs per plant (:class:`SunTracker`).
    """

    def __init__(self, features: Sequence[str], latitudes: Sequence[float | None],
                 longitudes: Sequence[float | None]) -> None:
        _check(features)
        self.features = tuple(features)
        self.sun = needs_sun(self.features)
        self._tracker: SunTracker | None = None
        if self.sun:
            missing = [i for i, (la, lo) in enumerate(zip(latitudes, longitudes, strict=True))
                       if la is None or lo is None]
            if missing:
                raise ModelError(f"plants {missing} have no latitude/longitude: the PV "
                                 "forecaster reads the sun's position (give them in the "
                                 "twin config's [[plants]])")
            lats = [float(la) for la in latitudes]  # type: ignore[arg-type]
            self._tracker = SunTracker(lats, [float(lo) for lo in longitudes])  # type: ignore[arg-type]
            self._lat = np.array(lats)
        self._idx = [PV_SUN_FEATURES.index(f) for f in self.features]

    def __call__(self, weather: np.ndarray, now: float) -> np.ndarray:
        wx = np.asarray(weather, dtype=np.float64)
        if self._tracker is None:
            return wx[:, :len(self.features)].copy()
        t = self._tracker(now)
        sun = _sun_terms(wx, t[:, 0], t[:, 1], t[:, 2], t[:, 3], self._lat)
        return np.concatenate([wx, sun], axis=1)[:, self._idx]
