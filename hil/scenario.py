"""Scenario generation: realistic ground truth and the measurements a twin would receive.

Pipeline (``gridtwin scenario make``), all vectorised over the time axis:

1. time grid ``start + k * step`` (UTC epoch seconds);
2. weather per site (:mod:`hil.weather`): TMY hourly data + sub-hourly cloud model, one
   correlated station per weather meter;
3. PV output per plant (:mod:`hil.pvplant`) from the plant's *local* irradiance;
4. bus loads (:mod:`hil.loads`) from BDEW standard load profiles with per-bus variation;
5. truth: batch power flow with power-grid-model (through the thin
   :mod:`estimator.pgm` mapping, not the estimator's solver), checked against the
   power-flow equations ``S = V conj(Ybus V)`` (mismatch stored in ``meta``);
6. channel truth from the voltages (``vm = |V| base_kv``, ``I = Yf V`` or ``Yt V`` at the
   metered end, ``S = V conj(I)``, ``S_inj = V conj(Ybus V)``);
7. noise per channel accuracy, missing values and dropouts, bad data
   (:mod:`hil.corruption`), all labelled.

Independent random streams (``numpy.random.SeedSequence(seed).spawn``) feed each stage, so
the same seed gives the same file and e.g. changing ``--bad-data`` keeps the truth and
the noise.
"""

from __future__ import annotations

import math
import re
import sys
import time as _time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hil.errors import ScenarioError
from hil.trace import WEATHER_FIELDS, Trace, save_trace

# channel quantity -> weather field column
_WEATHER_COL = {f: i for i, f in enumerate(WEATHER_FIELDS)}
DEFAULT_SITE = "greensboro"
PF_CHUNK = 3600
PF_TOLERANCE = 1e-10
MAX_MISMATCH_PU = 1e-6


@dataclass(frozen=True)
class ScenarioSpec:
    """What to generate (the CLI flags)."""

    config: str = "ieee33"
    start: str = "1990-06-01"
    hours: float = 24.0
    step_s: float = 1.0
    bad_pct: float = 0.0
    missing_pct: float = 0.5
    seed: int = 0
    site: str | None = None
    load_scale: float = 1.0

    def validate(self) -> None:
        if not (self.hours > 0):
            raise ScenarioError(f"--hours must be > 0, got {self.hours}")
        if not (self.step_s > 0):
            raise ScenarioError(f"--step must be > 0 s, got {self.step_s}")
        if not (0 <= self.bad_pct < 50):
            raise ScenarioError(f"--bad-data must be in [0, 50) %, got {self.bad_pct}")
        if not (0 <= self.missing_pct < 50):
            raise ScenarioError(f"--missing must be in [0, 50) %, got {self.missing_pct}")
        if not (0 < self.load_scale <= 3):
            raise ScenarioError(f"--load-scale must be in (0, 3], got {self.load_scale}")
        if self.seed < 0:
            raise ScenarioError(f"--seed must be >= 0, got {self.seed}")

    @property
    def n_steps(self) -> int:
        return max(1, round(self.hours * 3600.0 / self.step_s))


_STEP_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, None: 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def parse_step(text: str) -> float:
    """'1s', '20ms', '0.5', '1min' -> seconds; ScenarioError with the accepted forms."""
    m = _STEP_RE.match(str(text))
    if not m:
        raise ScenarioError(f"cannot read step {text!r}: write e.g. 1s, 20ms, 0.5s or 1min")
    val = float(m.group(1)) * _UNIT_S[m.group(2)]
    if val <= 0:
        raise ScenarioError(f"step must be > 0, got {text!r}")
    return val


def parse_start(text: str, tz_hours: float) -> float:
    """ISO date/time -> epoch s. Without an offset it is the site's local standard time."""
    import pandas as pd

    try:
        ts = pd.Timestamp(str(text))
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"cannot read start {text!r}: write e.g. 1990-06-01 or "
                            f"1990-06-01T06:00 or 1990-06-01T06:00Z") from exc
    if ts.tzinfo is None:
        return float(ts.value / 1e9 - tz_hours * 3600.0)
    return float(ts.value / 1e9)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for pkg in ("gridtwin", "numpy", "scipy", "pandas", "pvlib", "power-grid-model"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class _Progress:
    """tqdm on stderr over weighted stages (silent when disabled)."""

    def __init__(self, enabled: bool, total: float) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=sys.stderr, unit="step", unit_scale=True,
                            desc="scenario", leave=True, dynamic_ncols=True)

    def stage(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"scenario: {name}")

    def update(self, n: float) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _device_groups(channels: list[Any]) -> list[np.ndarray]:
    """Channels that drop out together: a PMU with its current channels, else one meter."""
    groups: dict[str, list[int]] = {}
    for ch in channels:
        key = ch.meter.split(".")[0] if ch.kind == "pmu" else ch.meter
        groups.setdefault(key, []).append(ch.index)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


def channel_truth(cfg: Any, v: np.ndarray, i_from: np.ndarray, i_to: np.ndarray,
                  s_inj: np.ndarray, pv_mw: np.ndarray, weather: np.ndarray,
                  plant_names: list[str]) -> np.ndarray:
    """Noise-free value of every channel (engineering units), shape (T, m)."""
    net = cfg.network
    base = net.base_mva
    n_steps = v.shape[0]
    out = np.empty((n_steps, len(cfg.channels)))
    sqrt3 = math.sqrt(3.0)
    wx_plant = {p.weather: i for i, p in enumerate(cfg.plants) if p.weather}
    for ch in cfg.channels:
        q = ch.quantity
        col: np.ndarray
        if q in ("vm", "va", "pinj", "qinj"):
            b = net.index_of(ch.bus)
            if q == "vm":
                col = np.abs(v[:, b]) * net.base_kv[b]  # kV line-to-line
            elif q == "va":
                col = np.angle(v[:, b])
            elif q == "pinj":
                col = s_inj[:, b].real * base
            else:
                col = s_inj[:, b].imag * base
        elif q in ("im", "ia", "p", "q"):
            k = int(ch.branch)
            end_idx = net.index_of(ch.end)
            at_from = end_idx == int(net.branches.from_idx[k])
            cur = i_from[:, k] if at_from else i_to[:, k]
            if q == "im":
                i_base_ka = base / (sqrt3 * net.base_kv[end_idx])  # kA
                col = np.abs(cur) * i_base_ka
            elif q == "ia":
                col = np.angle(cur)
            else:
                s = v[:, end_idx] * np.conj(cur)  # S_k = V_k conj(I_k)
                col = (s.real if q == "p" else s.imag) * base
        elif q in _WEATHER_COL:
            pi = wx_plant.get(ch.meter)
            if pi is None and ch.plant in plant_names:
                pi = plant_names.index(ch.plant)
            if pi is None:
                raise ScenarioError(f"weather channel {ch.name}: no plant uses meter "
                                    f"{ch.meter!r}")
            col = weather[:, pi, _WEATHER_COL[q]]
        elif q == "ppv":
            if ch.plant not in plant_names:
                raise ScenarioError(f"pv channel {ch.name}: unknown plant {ch.plant!r}")
            col = pv_mw[:, plant_names.index(ch.plant)]
        else:
            raise ScenarioError(f"channel {ch.name}: quantity {q!r} is not simulated")
        out[:, ch.index] = col
    return out


def make_trace(spec: ScenarioSpec, *, progress: bool = False,
               log: Callable[[str], None] | None = None) -> Trace:
    """Generate the scenario ``spec`` in memory."""
    from estimator.pgm import power_flow
    from gateway.config import load_config
    from gateway.errors import GatewayError
    from hil import corruption, loads, pvplant, weather

    spec.validate()
    t_begin = _time.perf_counter()
    try:
        cfg = load_config(spec.config)
    except GatewayError as exc:
        raise ScenarioError(f"config {spec.config!r}: {exc}") from exc
    net = cfg.network
    plants = list(cfg.plants)
    if spec.site is not None and spec.site not in weather.SITES:
        raise ScenarioError(f"unknown site {spec.site!r}; choose one of {weather.site_keys()}")
    plant_sites = [spec.site or p.site or DEFAULT_SITE for p in plants]
    for p, s in zip(plants, plant_sites, strict=True):
        if s not in weather.SITES:
            raise ScenarioError(f"plant {p.name}: unknown site {s!r}; choose one of "
                                f"{weather.site_keys()}")
    primary = spec.site or (plant_sites[0] if plant_sites else DEFAULT_SITE)
    tz = weather.load_tmy(primary).tz_hours
    t0 = parse_start(spec.start, tz)
    n = spec.n_steps
    time_s = t0 + np.arange(n, dtype=np.float64) * spec.step_s
    n_chunks = max(1, math.ceil(n / PF_CHUNK))
    bar = _Progress(progress, total=float(n) * 5)
    streams = np.random.SeedSequence(spec.seed).spawn(6)
    rng_wx, rng_pv, rng_load, rng_noise, rng_miss, rng_bad = (
        np.random.default_rng(s) for s in streams)

    # ---- weather: one shared sky per site, one station per weather meter (or plant)
    bar.stage("weather")
    skies = {s: weather.site_sky(s, time_s, rng_wx) for s in sorted(set(plant_sites))}
    stations: dict[str, weather.StationWeather] = {}
    station_of_plant: list[weather.StationWeather] = []
    for p, s in zip(plants, plant_sites, strict=True):
        key = p.weather or f"_own_{p.name}"
        if key not in stations:
            stations[key] = weather.station_weather(s, time_s, rng_wx, sky=skies[s])
        station_of_plant.append(stations[key])
    bar.update(n)

    # ---- PV plants from their local irradiance
    bar.stage("pv")
    pv_mw = np.zeros((n, len(plants)))
    plant_meta: list[dict[str, Any]] = []
    ghi_local = np.zeros((n, len(plants)))
    t_cell = np.zeros((n, len(plants)))
    for i, p in enumerate(plants):
        st = station_of_plant[i]
        local = weather.plant_irradiance(st, rng_pv)
        prm = pvplant.draw_params(rng_pv, p.rating_mw, weather.load_tmy(st.site).latitude)
        res = pvplant.plant_output(prm, local, st, time_s - time_s[0])
        pv_mw[:, i] = res.p_ac_mw
        ghi_local[:, i] = local.ghi
        t_cell[:, i] = res.t_cell
        plant_meta.append({"name": p.name, "site": st.site, "cloud_lag_s": local.lag_s,
                           **prm.as_dict()})
    wx = np.stack([s.stack() for s in station_of_plant], axis=1) if plants else np.zeros(
        (n, 0, len(WEATHER_FIELDS)))
    bar.update(n)

    # ---- loads
    bar.stage("loads")
    base = net.base_mva
    bl = loads.bus_loads(net.p_load * base * spec.load_scale,
                         net.q_load * base * spec.load_scale, time_s, tz, rng_load)
    # injection (pu) = (generation - load) / base; plants inject P only (Q = 0)
    p_inj = (np.tile(net.p_gen, (n, 1)) * base - bl.p_mw) / base
    q_inj = (np.tile(net.q_gen, (n, 1)) * base - bl.q_mvar) / base
    for i, p in enumerate(plants):
        p_inj[:, net.index_of(p.node)] += pv_mw[:, i] / base
    bar.update(n)

    # ---- truth: batch power flow (power-grid-model), in chunks for the progress bar
    bar.stage("power flow")
    v = np.empty((n, net.n_bus), dtype=np.complex128)
    for c in range(n_chunks):
        sl = slice(c * PF_CHUNK, min(n, (c + 1) * PF_CHUNK))
        try:
            v[sl] = power_flow(net, p_inj[sl], q_inj[sl], batch=True,
                               tolerance=PF_TOLERANCE, threading=0)
        except Exception as exc:  # power-grid-model reports divergence as its own errors
            raise ScenarioError(f"power flow failed in steps {sl.start}..{sl.stop}: "
                                f"{exc}") from exc
        bar.update(sl.stop - sl.start)
    ybus = net.ybus()
    yf, yt = net.branch_admittance()
    # I_from = Yf V, I_to = Yt V (rows = time): (Yf @ V^T)^T
    i_from = np.asarray((yf @ v.T).T)
    i_to = np.asarray((yt @ v.T).T)
    s_from = v[:, net.branches.from_idx] * np.conj(i_from)
    s_to = v[:, net.branches.to_idx] * np.conj(i_to)
    # S_inj = V conj(Ybus V)
    s_inj = v * np.conj(np.asarray((ybus @ v.T).T))
    spec_s = p_inj + 1j * q_inj
    non_slack = np.ones(net.n_bus, dtype=bool)
    non_slack[net.slack] = False
    mismatch = float(np.abs(s_inj[:, non_slack] - spec_s[:, non_slack]).max())
    if mismatch > MAX_MISMATCH_PU:
        raise ScenarioError(f"power flow truth violates the power-flow equations by "
                            f"{mismatch:.3g} pu (> {MAX_MISMATCH_PU})")
    plant_names = [p.name for p in plants]

    # ---- channels, noise, gaps, bad data
    bar.stage("measurements")
    chans = cfg.channels
    truth = channel_truth(cfg, v, i_from, i_to, s_inj, pv_mw, wx, plant_names)
    rel = np.array([c.rel for c in chans])
    abs_ = np.array([c.abs for c in chans])
    kdiv = np.array([c.k for c in chans])
    quantities = [c.quantity for c in chans]
    sigma = corruption.noise_sigma(truth, rel, abs_, kdiv)
    measured = corruption.add_noise(truth, sigma, rng_noise)
    ws_cols = [c.index for c in chans if c.quantity == "wind_speed"]
    measured[:, ws_cols] = np.maximum(measured[:, ws_cols], 0.0)  # anemometers read >= 0
    missing = corruption.missing_mask(n, _device_groups(chans), len(chans), spec.missing_pct,
                                      rng_miss, spec.step_s)
    eligible = np.array([c.electrical and c.quantity in corruption.ELECTRICAL_QUANTITIES
                         for c in chans], dtype=bool)
    measured, bad, _ = corruption.corrupt(measured, truth, quantities, eligible, missing,
                                          spec.bad_pct, abs_ / kdiv, rng_bad)
    angle_cols = [c.index for c in chans if c.quantity in corruption.ANGLE_QUANTITIES]
    # angles in (-pi, pi]
    measured[:, angle_cols] = np.angle(np.exp(1j * measured[:, angle_cols]))
    wd_cols = [c.index for c in chans if c.quantity == "wind_dir"]
    measured[:, wd_cols] = np.mod(measured[:, wd_cols], 360.0)
    measured[missing] = np.nan
    bar.update(n)
    bar.close()

    n_el = int(eligible.sum()) * n
    total_load = bl.p_mw.sum(axis=1)
    meta: dict[str, Any] = {
        "config": cfg.name,
        "config_digest": cfg.digest,
        "seed": spec.seed,
        "site": spec.site,
        "sites": plant_sites,
        "start": spec.start,
        "start_epoch_s": t0,
        "tz_hours_for_start": tz,
        "step_s": spec.step_s,
        "hours": spec.hours,
        "n_steps": n,
        "bad_data_pct": spec.bad_pct,
        "missing_pct": spec.missing_pct,
        "load_scale": spec.load_scale,
        "bad_scope": "electrical channels (pmu, scada)",
        "n_bad": int(bad.sum()),
        "bad_fraction_electrical": float(bad.sum() / n_el) if n_el else 0.0,
        "n_missing": int(missing.sum()),
        "missing_fraction": float(missing.mean()) if missing.size else 0.0,
        "pf_mismatch_pu": mismatch,
        "pf_tolerance": PF_TOLERANCE,
        "base_mva": base,
        "spec": asdict(spec),
        "plants": plant_meta,
        "load_profiles": {str(int(net.bus_ids[b])): bl.profile[b]
                          for b in range(net.n_bus) if bl.profile[b]},
        "summary": {
            "load_mw_min": float(total_load.min()), "load_mw_max": float(total_load.max()),
            "pv_capacity_factor": [float(x) for x in
                                   (pv_mw.mean(axis=0) / np.array(
                                       [p.rating_mw for p in plants]))] if plants else [],
            "vm_min_pu": float(np.abs(v).min()), "vm_max_pu": float(np.abs(v).max()),
        },
        "versions": _versions(),
        "sources": {
            "weather": {s: weather.load_tmy(s).source for s in sorted(set(plant_sites))},
            "cloud_model": "two-state clear-sky-index model (thresholded latent Gaussian "
                           "field, after Munkhammar & Widen 2018), hil/weather.py",
            "pv_model": "pvlib: Hay-Davies POA, physical IAM, Faiman + first-order thermal "
                        "lag, PVWatts DC and inverter with clipping, soiling; hil/pvplant.py",
            "loads": loads.SOURCE,
            "power_flow": "power-grid-model newton_raphson (batch) via estimator.pgm",
        },
        "generation_s": round(_time.perf_counter() - t_begin, 3),
    }
    if log:
        log(f"generated {n} steps x {len(chans)} channels in {meta['generation_s']} s")
    return Trace(
        time=time_s, measured=measured, truth=truth, bad=bad, missing=missing, v=v,
        i_branch_from=i_from, s_branch_from=s_from, s_branch_to=s_to, s_inj=s_inj,
        pv_mw=pv_mw, weather=wx, channel_names=[c.name for c in chans],
        plant_names=plant_names, meta=meta,
        extras={"ghi_plant": ghi_local, "t_cell": t_cell,
                "load_mw": bl.p_mw.sum(axis=1), "load_mvar": bl.q_mvar.sum(axis=1)},
    )


def make_scenario(spec: ScenarioSpec, out: str | Path, *, progress: bool = False) -> Path:
    """Generate ``spec`` and write it to ``out`` (see :func:`hil.trace.save_trace`)."""
    trace = make_trace(spec, progress=progress)
    # generation time is not part of the file: the same seed gives the same bytes
    trace.meta.pop("generation_s", None)
    return save_trace(trace, out)
