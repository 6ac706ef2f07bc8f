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


@dataclass
class _Rngs:
    """One independent generator per stage, so changing one stage's draws (e.g. the bad-data
    share) leaves the others' numbers, and therefore the truth and the noise, unchanged."""

    weather: np.random.Generator
    pv: np.random.Generator
    load: np.random.Generator
    noise: np.random.Generator
    missing: np.random.Generator
    bad: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> _Rngs:
        streams = np.random.SeedSequence(seed).spawn(6)
        return cls(*(np.random.default_rng(s) for s in streams))


@dataclass
class _PlantOutput:
    """What the PV stage hands on: power for the flow, local weather for the channels, and
    per-plant parameters for ``meta`` (so a trace documents the plants it was made with)."""

    pv_mw: np.ndarray  # (T, n_plants)
    ghi_local: np.ndarray  # (T, n_plants)
    t_cell: np.ndarray  # (T, n_plants)
    weather: np.ndarray  # (T, n_plants, len(WEATHER_FIELDS))
    meta: list[dict[str, Any]]


@dataclass
class _FlowTruth:
    """The power-flow truth and the branch/injection quantities derived from it."""

    v: np.ndarray
    i_from: np.ndarray
    i_to: np.ndarray
    s_from: np.ndarray
    s_to: np.ndarray
    s_inj: np.ndarray
    mismatch: float


@dataclass
class _Measured:
    """Measurements with their labels, kept together because they are drawn together."""

    values: np.ndarray
    bad: np.ndarray
    missing: np.ndarray
    eligible: np.ndarray


def _load_scenario_config(name: str) -> Any:
    """The twin config, with its errors re-raised as ScenarioError so the CLI reports them
    as a scenario problem (exit 2) rather than a gateway one."""
    from gateway.config import load_config
    from gateway.errors import GatewayError

    try:
        return load_config(name)
    except GatewayError as exc:
        raise ScenarioError(f"config {name!r}: {exc}") from exc


def _plant_sites(spec: ScenarioSpec, plants: list[Any]) -> list[str]:
    """Weather site per plant (``--site`` overrides the config), checked up front so an
    unknown site fails before minutes of generation rather than inside the weather model."""
    from hil import weather

    if spec.site is not None and spec.site not in weather.SITES:
        raise ScenarioError(f"unknown site {spec.site!r}; choose one of {weather.site_keys()}")
    plant_sites = [spec.site or p.site or DEFAULT_SITE for p in plants]
    for p, s in zip(plants, plant_sites, strict=True):
        if s not in weather.SITES:
            raise ScenarioError(f"plant {p.name}: unknown site {s!r}; choose one of "
                                f"{weather.site_keys()}")
    return plant_sites


def _stations(plants: list[Any], plant_sites: list[str], time_s: np.ndarray,
              rng: np.random.Generator) -> list[Any]:
    """One shared sky per site and one station per weather meter (or per plant without one),
    so plants on the same meter see the same weather and nearby plants correlated clouds."""
    from hil import weather

    skies = {s: weather.site_sky(s, time_s, rng) for s in sorted(set(plant_sites))}
    stations: dict[str, weather.StationWeather] = {}
    station_of_plant: list[weather.StationWeather] = []
    for p, s in zip(plants, plant_sites, strict=True):
        key = p.weather or f"_own_{p.name}"
        if key not in stations:
            stations[key] = weather.station_weather(s, time_s, rng, sky=skies[s])
        station_of_plant.append(stations[key])
    return station_of_plant


def _plant_output(plants: list[Any], station_of_plant: list[Any], time_s: np.ndarray,
                  rng: np.random.Generator) -> _PlantOutput:
    """PV output of every plant from its *local* irradiance (a cloud reaches each plant with
    its own lag), with the drawn plant parameters for the trace's metadata."""
    from hil import pvplant, weather

    n = time_s.shape[0]
    pv_mw = np.zeros((n, len(plants)))
    plant_meta: list[dict[str, Any]] = []
    ghi_local = np.zeros((n, len(plants)))
    t_cell = np.zeros((n, len(plants)))
    for i, p in enumerate(plants):
        st = station_of_plant[i]
        local = weather.plant_irradiance(st, rng)
        prm = pvplant.draw_params(rng, p.rating_mw, weather.load_tmy(st.site).latitude)
        res = pvplant.plant_output(prm, local, st, time_s - time_s[0])
        pv_mw[:, i] = res.p_ac_mw
        ghi_local[:, i] = local.ghi
        t_cell[:, i] = res.t_cell
        plant_meta.append({"name": p.name, "site": st.site, "cloud_lag_s": local.lag_s,
                           **prm.as_dict()})
    wx = np.stack([s.stack() for s in station_of_plant], axis=1) if plants else np.zeros(
        (n, 0, len(WEATHER_FIELDS)))
    return _PlantOutput(pv_mw=pv_mw, ghi_local=ghi_local, t_cell=t_cell, weather=wx,
                        meta=plant_meta)


def _injections(net: Any, plants: list[Any], pv_mw: np.ndarray,
                bl: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bus injections in pu, ``(generation - load) / base``; plants inject P only (Q = 0)."""
    n = pv_mw.shape[0]
    base = net.base_mva
    p_inj = (np.tile(net.p_gen, (n, 1)) * base - bl.p_mw) / base
    q_inj = (np.tile(net.q_gen, (n, 1)) * base - bl.q_mvar) / base
    for i, p in enumerate(plants):
        p_inj[:, net.index_of(p.node)] += pv_mw[:, i] / base
    return p_inj, q_inj


def _solve_flow(net: Any, p_inj: np.ndarray, q_inj: np.ndarray, bar: _Progress) -> np.ndarray:
    """Batch power flow (power-grid-model) in chunks, so the progress bar moves and a
    divergence names the steps where it happened."""
    from estimator.pgm import power_flow

    n = p_inj.shape[0]
    v = np.empty((n, net.n_bus), dtype=np.complex128)
    for c in range(max(1, math.ceil(n / PF_CHUNK))):
        sl = slice(c * PF_CHUNK, min(n, (c + 1) * PF_CHUNK))
        try:
            v[sl] = power_flow(net, p_inj[sl], q_inj[sl], batch=True,
                               tolerance=PF_TOLERANCE, threading=0)
        except Exception as exc:  # power-grid-model reports divergence as its own errors
            raise ScenarioError(f"power flow failed in steps {sl.start}..{sl.stop}: "
                                f"{exc}") from exc
        bar.update(sl.stop - sl.start)
    return v


def _flow_truth(net: Any, v: np.ndarray, p_inj: np.ndarray, q_inj: np.ndarray) -> _FlowTruth:
    """Branch currents and powers from the voltages, and an independent check of the solver:
    the truth must satisfy ``S = V conj(Ybus V)`` to within MAX_MISMATCH_PU, or the trace
    would grade the estimator against a wrong answer."""
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
    return _FlowTruth(v=v, i_from=i_from, i_to=i_to, s_from=s_from, s_to=s_to, s_inj=s_inj,
                      mismatch=mismatch)


def _measure(chans: list[Any], truth: np.ndarray, spec: ScenarioSpec,
             rngs: _Rngs) -> _Measured:
    """Noise per channel accuracy, device dropouts and missing values, then labelled bad
    data on the electrical channels only; finally fold readings into their physical ranges
    (angles in (-pi, pi], wind direction in [0, 360), wind speed >= 0) as a device would."""
    from hil import corruption

    n = truth.shape[0]
    rel = np.array([c.rel for c in chans])
    abs_ = np.array([c.abs for c in chans])
    kdiv = np.array([c.k for c in chans])
    quantities = [c.quantity for c in chans]
    sigma = corruption.noise_sigma(truth, rel, abs_, kdiv)
    measured = corruption.add_noise(truth, sigma, rngs.noise)
    ws_cols = [c.index for c in chans if c.quantity == "wind_speed"]
    measured[:, ws_cols] = np.maximum(measured[:, ws_cols], 0.0)  # anemometers read >= 0
    missing = corruption.missing_mask(n, _device_groups(chans), len(chans), spec.missing_pct,
                                      rngs.missing, spec.step_s)
    eligible = np.array([c.electrical and c.quantity in corruption.ELECTRICAL_QUANTITIES
                         for c in chans], dtype=bool)
    measured, bad, _ = corruption.corrupt(measured, truth, quantities, eligible, missing,
                                          spec.bad_pct, abs_ / kdiv, rngs.bad)
    angle_cols = [c.index for c in chans if c.quantity in corruption.ANGLE_QUANTITIES]
    # angles in (-pi, pi]
    measured[:, angle_cols] = np.angle(np.exp(1j * measured[:, angle_cols]))
    wd_cols = [c.index for c in chans if c.quantity == "wind_dir"]
    measured[:, wd_cols] = np.mod(measured[:, wd_cols], 360.0)
    measured[missing] = np.nan
    return _Measured(values=measured, bad=bad, missing=missing, eligible=eligible)


def _sources(plant_sites: list[str]) -> dict[str, Any]:
    """Where every model in the trace comes from, so a trace file cites its own provenance."""
    from hil import loads, weather

    return {
        "weather": {s: weather.load_tmy(s).source for s in sorted(set(plant_sites))},
        "cloud_model": "two-state clear-sky-index model (thresholded latent Gaussian "
                       "field, after Munkhammar & Widen 2018), hil/weather.py",
        "pv_model": "pvlib: Hay-Davies POA, physical IAM, Faiman + first-order thermal "
                    "lag, PVWatts DC and inverter with clipping, soiling; hil/pvplant.py",
        "loads": loads.SOURCE,
        "power_flow": "power-grid-model newton_raphson (batch) via estimator.pgm",
    }


def _summary(plants: list[Any], pv_mw: np.ndarray, bl: Any, v: np.ndarray) -> dict[str, Any]:
    """A few figures to tell at a glance whether the day is plausible (load range, PV
    capacity factors, voltage band) without loading the arrays."""
    total_load = bl.p_mw.sum(axis=1)
    return {
        "load_mw_min": float(total_load.min()), "load_mw_max": float(total_load.max()),
        "pv_capacity_factor": [float(x) for x in
                               (pv_mw.mean(axis=0) / np.array(
                                   [p.rating_mw for p in plants]))] if plants else [],
        "vm_min_pu": float(np.abs(v).min()), "vm_max_pu": float(np.abs(v).max()),
    }


def _meta(spec: ScenarioSpec, cfg: Any, plant_sites: list[str], t0: float, tz: float,
          plants: list[Any], out: _PlantOutput, bl: Any, flow: _FlowTruth,
          meas: _Measured) -> dict[str, Any]:
    """The trace's metadata: the spec and its derived figures, labels' counts, versions and
    sources, so a trace file is reproducible and self-describing."""
    n = spec.n_steps
    n_el = int(meas.eligible.sum()) * n
    bad, missing = meas.bad, meas.missing
    net = cfg.network
    return {
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
        "pf_mismatch_pu": flow.mismatch,
        "pf_tolerance": PF_TOLERANCE,
        "base_mva": net.base_mva,
        "spec": asdict(spec),
        "plants": out.meta,
        "load_profiles": {str(int(net.bus_ids[b])): bl.profile[b]
                          for b in range(net.n_bus) if bl.profile[b]},
        "summary": _summary(plants, out.pv_mw, bl, flow.v),
        "versions": _versions(),
        "sources": _sources(plant_sites),
    }


def make_trace(spec: ScenarioSpec, *, progress: bool = False,
               log: Callable[[str], None] | None = None) -> Trace:
    """Generate the scenario ``spec`` in memory.

    The stages (see the module docstring) each live in a helper; this function only orders
    them, feeds each its own random stream and reports progress.
    """
    from hil import loads, weather

    spec.validate()
    t_begin = _time.perf_counter()
    cfg = _load_scenario_config(spec.config)
    net = cfg.network
    plants = list(cfg.plants)
    plant_sites = _plant_sites(spec, plants)
    primary = spec.site or (plant_sites[0] if plant_sites else DEFAULT_SITE)
    tz = weather.load_tmy(primary).tz_hours
    t0 = parse_start(spec.start, tz)
    n = spec.n_steps
    time_s = t0 + np.arange(n, dtype=np.float64) * spec.step_s
    bar = _Progress(progress, total=float(n) * 5)
    rngs = _Rngs.from_seed(spec.seed)

    bar.stage("weather")
    station_of_plant = _stations(plants, plant_sites, time_s, rngs.weather)
    bar.update(n)
    bar.stage("pv")
    out = _plant_output(plants, station_of_plant, time_s, rngs.pv)
    bar.update(n)
    bar.stage("loads")
    base = net.base_mva
    bl = loads.bus_loads(net.p_load * base * spec.load_scale,
                         net.q_load * base * spec.load_scale, time_s, tz, rngs.load)
    p_inj, q_inj = _injections(net, plants, out.pv_mw, bl)
    bar.update(n)
    bar.stage("power flow")
    flow = _flow_truth(net, _solve_flow(net, p_inj, q_inj, bar), p_inj, q_inj)
    plant_names = [p.name for p in plants]
    bar.stage("measurements")
    chans = cfg.channels
    truth = channel_truth(cfg, flow.v, flow.i_from, flow.i_to, flow.s_inj, out.pv_mw,
                          out.weather, plant_names)
    meas = _measure(chans, truth, spec, rngs)
    bar.update(n)
    bar.close()

    meta = _meta(spec, cfg, plant_sites, t0, tz, plants, out, bl, flow, meas)
    meta["generation_s"] = round(_time.perf_counter() - t_begin, 3)
    if log:
        log(f"generated {n} steps x {len(chans)} channels in {meta['generation_s']} s")
    return Trace(
        time=time_s, measured=meas.values, truth=truth, bad=meas.bad, missing=meas.missing,
        v=flow.v, i_branch_from=flow.i_from, s_branch_from=flow.s_from,
        s_branch_to=flow.s_to, s_inj=flow.s_inj, pv_mw=out.pv_mw, weather=out.weather,
        channel_names=[c.name for c in chans], plant_names=plant_names, meta=meta,
        extras={"ghi_plant": out.ghi_local, "t_cell": out.t_cell,
                "load_mw": bl.p_mw.sum(axis=1), "load_mvar": bl.q_mvar.sum(axis=1)},
    )


def make_scenario(spec: ScenarioSpec, out: str | Path, *, progress: bool = False) -> Path:
    """Generate ``spec`` and write it to ``out`` (see :func:`hil.trace.save_trace`)."""
    trace = make_trace(spec, progress=progress)
    # generation time is not part of the file: the same seed gives the same bytes
    trace.meta.pop("generation_s", None)
    return save_trace(trace, out)
