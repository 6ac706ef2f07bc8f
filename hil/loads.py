"""Bus loads for scenario traces from standard load profiles.

Source: the BDEW (VDEW) standard load profiles of 1999 for electricity (``h0`` household,
``g0``/``g1`` commercial, ``l0`` agriculture), quarter-hourly, per season (winter 1 Nov -
20 Mar, summer 15 May - 14 Sep, transition otherwise) and day type (workday, Saturday,
Sunday). The extract ships in ``hil/data/bdew_slp_1999.csv.gz`` (provenance and licence in
``hil/data/README.md``). ``h0`` is multiplied by the BDEW dynamisation polynomial
``F(d) = -3.92e-10 d^4 + 3.2e-7 d^3 - 7.02e-5 d^2 + 2.1e-3 d + 1.24`` (d = day of year).

Each profile is scaled so that its yearly maximum is 1; the case's nominal bus load is
read as that bus's peak load. Per bus (random, from the scenario seed):

- a profile class: h0 (55 %), g0 (25 %), g1 (10 %), l0 (10 %);
- a peak scale, log-normal with sigma 0.1 around 1;
- a time shift of up to +-20 min (customers do not all switch at the same instant);
- multiplicative fluctuation ``1 + 0.04 a_slow + 0.015 a_fast`` with AR(1) processes
  ``a_slow`` (tau 15 min) and ``a_fast`` (tau 30 s), the aggregate of many customers;
- Q follows P at the case's power factor with a 3 % slow AR(1) drift of tan(phi).

Profiles are linearly interpolated between quarter-hour centres (local standard time).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hil.errors import ScenarioError
from hil.weather import ar1

DATA_FILE = Path(__file__).parent / "data" / "bdew_slp_1999.csv.gz"
PROFILES: tuple[str, ...] = ("h0", "g0", "g1", "l0")
PROFILE_WEIGHTS: tuple[float, ...] = (0.55, 0.25, 0.10, 0.10)
SEASONS: tuple[str, ...] = ("winter", "transition", "summer")
DAYTYPES: tuple[str, ...] = ("workday", "saturday", "sunday")
SOURCE = ("BDEW/VDEW standard load profiles 1999 (h0, g0, g1, l0), extract of demandlib 0.2.2 "
          "selp_series.csv (MIT); h0 with the BDEW dynamisation polynomial")


@lru_cache(maxsize=1)
def load_profiles() -> dict[str, np.ndarray]:
    """Profile name -> array (3 seasons, 3 day types, 96 quarter hours), kW per 1000 kWh/a."""
    if not DATA_FILE.exists():
        raise ScenarioError(f"load profile data missing: {DATA_FILE}")
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:]]
    out = {name: np.zeros((3, 3, 96)) for name in PROFILES}
    col = {name: header.index(name) for name in PROFILES}
    for r in rows:
        s, d, q = SEASONS.index(r[0]), DAYTYPES.index(r[1]), int(r[2])
        for name in PROFILES:
            out[name][s, d, q] = float(r[col[name]])
    return out


def dynamisation(doy: np.ndarray) -> np.ndarray:
    """BDEW H0 dynamisation factor F(d), d = day of year."""
    # F = -3.92e-10 d^4 + 3.2e-7 d^3 - 7.02e-5 d^2 + 2.1e-3 d + 1.24
    d = np.asarray(doy, dtype=np.float64)
    return -3.92e-10 * d**4 + 3.2e-7 * d**3 - 7.02e-5 * d**2 + 2.1e-3 * d + 1.24


@lru_cache(maxsize=1)
def _peaks() -> dict[str, float]:
    prof = load_profiles()
    fmax = float(dynamisation(np.arange(1, 366)).max())
    return {name: float(prof[name].max()) * (fmax if name == "h0" else 1.0)
            for name in PROFILES}


def _calendar(day_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(season idx, day type idx, day of year 1-based) for days since the epoch."""
    d64 = day_index.astype("int64").astype("datetime64[D]")
    doy = (d64 - d64.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    month = d64.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (d64 - d64.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    md = month * 100 + dom
    season = np.where((md >= 1101) | (md <= 320), 0, np.where((md >= 515) & (md <= 914), 2, 1))
    weekday = (day_index.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    daytype = np.where(weekday == 5, 1, np.where(weekday == 6, 2, 0))
    return season, daytype, doy


def profile_value(name: str, local_s: np.ndarray) -> np.ndarray:
    """Normalised (yearly peak 1) profile ``name`` at local-standard-time seconds."""
    prof = load_profiles()[name]
    t = np.asarray(local_s, dtype=np.float64)
    q0 = int(np.floor(t.min() / 900.0)) - 1
    q1 = int(np.floor(t.max() / 900.0)) + 2
    quarters = np.arange(q0, q1 + 1)
    days = np.floor_divide(quarters, 96)
    season, daytype, doy = _calendar(days)
    vals = prof[season, daytype, quarters - days * 96]
    if name == "h0":
        vals = vals * dynamisation(doy)
    centres = (quarters + 0.5) * 900.0
    return np.interp(t, centres, vals) / _peaks()[name]


@dataclass
class BusLoads:
    p_mw: np.ndarray  # (T, n_bus)
    q_mvar: np.ndarray  # (T, n_bus)
    profile: list[str]  # per bus ("" where no load)
    scale: np.ndarray
    shift_s: np.ndarray


def bus_loads(p_nom_mw: np.ndarray, q_nom_mvar: np.ndarray, time_s: np.ndarray,
              tz_hours: float, rng: np.random.Generator) -> BusLoads:
    """Load time series for every bus (zero where the case has no load)."""
    p_nom = np.asarray(p_nom_mw, dtype=np.float64)
    q_nom = np.asarray(q_nom_mvar, dtype=np.float64)
    t = np.asarray(time_s, dtype=np.float64)
    n_bus, n = len(p_nom), len(t)
    step = float(t[1] - t[0]) if n > 1 else 1.0
    local = t + tz_hours * 3600.0
    loaded = (np.abs(p_nom) > 0) | (np.abs(q_nom) > 0)
    choice = rng.choice(len(PROFILES), size=n_bus, p=np.asarray(PROFILE_WEIGHTS))
    scale = np.exp(0.1 * rng.standard_normal(n_bus))
    shift_s = rng.uniform(-1200.0, 1200.0, n_bus)
    p = np.zeros((n, n_bus))
    q = np.zeros((n, n_bus))
    tan_phi = np.divide(q_nom, p_nom, out=np.zeros(n_bus), where=np.abs(p_nom) > 0)
    for b in np.flatnonzero(loaded):
        shape = profile_value(PROFILES[choice[b]], local + shift_s[b])
        # multiplicative aggregate fluctuation: 1 + 0.04 a_slow + 0.015 a_fast
        fluct = (1.0 + 0.04 * ar1(rng, n, 900.0 / step) + 0.015 * ar1(rng, n, 30.0 / step))
        pb = p_nom[b] * scale[b] * shape * fluct
        p[:, b] = pb
        if abs(p_nom[b]) > 0:
            q[:, b] = pb * tan_phi[b] * (1.0 + 0.03 * ar1(rng, n, 1800.0 / step))
        else:
            q[:, b] = q_nom[b] * scale[b] * shape * fluct
    names = [PROFILES[c] if loaded[i] else "" for i, c in enumerate(choice)]
    return BusLoads(p_mw=p, q_mvar=q, profile=names, scale=scale, shift_s=shift_s)
