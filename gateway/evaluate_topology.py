"""Evaluation of topology tracking: the ``topology`` rows of ``gridtwin evaluate``.

Cases: every classic reconfiguration of the feeder from its normal topology (close a tie,
open a sectionalising switch on the loop it forms; :meth:`SwitchSet.candidates`), each at
another time of a day-long scenario (other loads, other PV), played through
:class:`~gateway.topology.TopologyTwin` with the switch statuses ``sent``, ``withheld``
(missing), ``stuck`` or ``phantom`` (falsified; :mod:`hil.reconfigure`). A case is
identified when the tracker's topology equals the true one within ``within`` snapshots of
the switching (0: the switching snapshot itself was estimated on the right topology) and
stays so to the end of the case. False alarms: ``topology_identified`` events over a
reconfiguration-free day.

The twin's snapshot here is what the live twin sees: the noisy channels, a PV forecast
(the truth plus the forecaster's error level) and load pseudo-measurements scaled to the
feeder's load level from the measured head flow (:func:`estimator.topology.with_load_pseudo`).
The tracker's settings default to the live twin's (:class:`gateway.config.TopologyConfig`;
its ``probe_s`` is at most a snapshot here, so every snapshot is tested).

**Meter sets.** The rows are computed for the config's meters (plus ``add_meters``) and,
when ``recommend`` is on, again with the meters ``gridtwin topology check`` recommends
for the reconfigurations those cannot tell apart (:mod:`gateway.topology_check`; the
scenario is then made with them too). Each row names its ``meters``; an ``analysis`` row
says which cases the first set cannot distinguish and what was added.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from estimator.topology import SwitchSet, Topology
from gateway.config import TwinConfig, load_config
from gateway.config.loader import resolve
from gateway.config.schema import TopologyConfig
from gateway.errors import ConfigError, GatewayError
from gateway.topology import Identifier, TopologyTracker, TopologyTwin, statuses_from_values
from hil.reconfigure import STATUS_MODES, Switching, reconfigure, status_values
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace

__all__ = ["TopologyEval", "Twin", "topology_rows"]

PV_FORECAST_FRAC = 0.041  # the forecaster's RMSE as a fraction of the rating
_LIVE = TopologyConfig()  # the live twin's tracker settings: the defaults here


@dataclass(frozen=True)
class TopologyEval:
    config: str = "ieee33"
    start: str = "1990-06-01"
    step_s: float = 60.0
    before: int = 8  # snapshots before the switching
    after: int = 8  # snapshots from the switching on
    within: int = 5  # snapshots allowed to identify
    seed: int = 0
    modes: tuple[str, ...] = STATUS_MODES
    quiet_hours: float = 24.0  # the reconfiguration-free trace
    max_cases: int | None = None
    only: str | None = None  # cases whose label contains this (e.g. "sw_18_33")
    probe_every_s: float = _LIVE.probe_s  # periodic tests besides the J-rise trigger
    pseudo_rel: float = _LIVE.pseudo_rel  # load pseudo-measurement sigma / nominal load
    ratio: float = _LIVE.ratio  # the tracker's summed-J ratio
    confirm: int = _LIVE.confirm  # the tracker's tests in a row
    add_meters: tuple[str, ...] = ()  # meters added to the config (tx18, flow18_33)
    recommend: bool = True  # rows again with the meters topology check recommends


class Twin:
    """Bank, snapshot assembly (the live twin's :class:`~gateway.topology.Identifier`)
    and a fresh tracker per case, for one config."""

    def __init__(self, cfg: TwinConfig, seed: int = 0, pseudo_rel: float = 0.5) -> None:
        self.cfg = cfg
        self.sw = SwitchSet.of(cfg.network)
        self.ident = Identifier(cfg, self.sw, pseudo_rel)
        self.bank = self.ident.bank
        self.model = self.ident.model
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 2121]))
        self.ratings = np.array([p.rating_mw for p in cfg.plants])

    def snapshot(self, trace: Trace, k: int) -> np.ndarray:
        """The live twin's snapshot of row ``k``: the PV forecast is the truth plus the
        forecaster's error level."""
        pv = trace.pv_mw[k] + self.rng.standard_normal(self.ratings.size) * (
            PV_FORECAST_FRAC * self.ratings)
        return self.ident.z(trace.measured[k], pv)

    def tracker(self, **options: Any) -> TopologyTwin:
        return TopologyTwin(self.bank, TopologyTracker(self.sw, **options))


def _window(trace: Trace, start: int, n: int) -> Trace:
    sl = slice(start, start + n)
    return replace(trace, time=trace.time[sl], measured=trace.measured[sl],
                   truth=trace.truth[sl], bad=trace.bad[sl], missing=trace.missing[sl],
                   v=trace.v[sl], i_branch_from=trace.i_branch_from[sl],
                   s_branch_from=trace.s_branch_from[sl], s_branch_to=trace.s_branch_to[sl],
                   s_inj=trace.s_inj[sl], pv_mw=trace.pv_mw[sl], weather=trace.weather[sl],
                   extras={})


def run_case(twin: Twin, day: Trace, offset: int, truth_after: Topology, mode: str,
             ev: TopologyEval, seed: int) -> int | None:
    """Snapshots from the switching until the tracker holds the true topology for good
    (None: not by the end of the case)."""
    sw = twin.sw
    n = ev.before + ev.after
    states = dict(sw.diff(sw.normal, truth_after))
    plan = [Switching(ev.before, tuple(states.items()))]
    win = _window(day, offset, n)
    phantom = mode == "phantom"
    case = reconfigure(win, twin.cfg, plan, seed=seed, phantom=phantom)
    names, status = status_values(twin.cfg, plan, n, "sent" if phantom else mode)
    true_after = sw.normal if phantom else truth_after
    rt = twin.tracker(probe_every_s=ev.probe_every_s, ratio=ev.ratio, confirm=ev.confirm)
    hit: int | None = None
    for k in range(n):
        st = statuses_from_values(dict(zip(names, status[k], strict=True)))
        rt.step(float(case.time[k]), twin.snapshot(case, k), st)
        if k >= ev.before:
            right = rt.tracker.current == true_after
            hit = (k - ev.before if hit is None else hit) if right else None
    return hit


def false_alarms(twin: Twin, ev: TopologyEval) -> dict[str, Any]:
    day = make_trace(ScenarioSpec(config=ev.config, start=ev.start, hours=ev.quiet_hours,
                                  step_s=ev.step_s, missing_pct=0.0, seed=ev.seed + 1))
    rt = twin.tracker(probe_every_s=min(900.0, ev.probe_every_s), ratio=ev.ratio,
                      confirm=ev.confirm)
    alarms = 0
    for k in range(day.n_steps):
        _, events = rt.step(float(day.time[k]), twin.snapshot(day, k))
        alarms += sum(e.kind == "topology_identified" for e in events)
    return {"row": "topology", "mode": "none", "snapshots": day.n_steps,
            "hypothesis_tests": rt.tests, "false_alarms": alarms}


def topology_rows(ev: TopologyEval = TopologyEval(),
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Per meter set (see the module docstring): one row per status mode (identification
    rate, snapshots to identify) and one of false alarms; between the sets, the
    ``analysis`` row."""
    from gateway.topology_check import check

    with tempfile.TemporaryDirectory(prefix="gridtwin-topology-") as tmp:
        path, cfg = _with_meters(ev.config, ev.add_meters, Path(tmp) / "base.toml")
        rows = meter_set_rows(replace(ev, config=path), cfg, _label(ev.add_meters), log)
        if not ev.recommend:
            return rows
        chk = check(cfg, pseudo_rel=ev.pseudo_rel)
        picks = [p.meter.name for p in chk.result.picks]
        analysis = {"row": "topology", "mode": "analysis", "meters": _label(ev.add_meters),
                    **{k: chk.as_dict()[k] for k in ("indistinguishable", "min_lambda",
                                                     "unresolved")},
                    "recommended": picks}
        analysis["indistinguishable"] = [c["case"] for c in analysis["indistinguishable"]]
        rows.append(analysis)
        if log:
            log(json.dumps(analysis))
        if picks:
            both = (*ev.add_meters, *picks)
            path, cfg = _with_meters(ev.config, both, Path(tmp) / "recommended.toml")
            rows += meter_set_rows(replace(ev, config=path), cfg, _label(both), log)
    return rows


def _label(meters: Sequence[str]) -> str:
    return "+".join(("bundled", *meters))


def _with_meters(config: str, meters: Sequence[str], out: Path) -> tuple[str, TwinConfig]:
    """(config name or path, the config) with ``meters`` added (written to ``out``)."""
    from gateway.topology_check import with_meters

    cfg = load_config(config)
    if not meters:
        return config, cfg
    out.write_text(with_meters(resolve(config)[0], cfg, meters), encoding="utf-8")
    return str(out), load_config(out)


def meter_set_rows(ev: TopologyEval, cfg: TwinConfig, meters: str,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The status-mode rows and the false-alarm row of one config (``ev.config`` names
    it: the scenarios are made with it)."""
    twin = Twin(cfg, ev.seed, ev.pseudo_rel)
    sw = twin.sw
    cases = [t for t in sw.candidates(sw.normal) if sw.radial(t)]
    if ev.only is not None:
        cases = [t for t in cases if ev.only in sw.label(t)]
    if ev.max_cases is not None:
        cases = cases[: ev.max_cases]
    n = ev.before + ev.after
    day = make_trace(ScenarioSpec(config=ev.config, start=ev.start, hours=24.0,
                                  step_s=ev.step_s, missing_pct=0.0, seed=ev.seed))
    stride = max(1, (day.n_steps - n) // max(1, len(cases)))
    rows: list[dict[str, Any]] = []
    for mode in ev.modes:
        times: list[int | None] = []
        for i, topo in enumerate(cases):
            times.append(run_case(twin, day, i * stride, topo, mode, ev, ev.seed + i))
        rows.append({**_row(mode, times, ev.within, [sw.label(t) for t in cases]),
                     "meters": meters})
        if log:
            log(json.dumps(rows[-1]))
    rows.append({**false_alarms(twin, ev), "meters": meters})
    if log:
        log(json.dumps(rows[-1]))
    return rows


def _row(mode: str, times: Sequence[int | None], within: int,
         labels: Sequence[str]) -> dict[str, Any]:
    ok = [t for t in times if t is not None and t <= within]
    got = [t for t in times if t is not None]
    return {"row": "topology", "mode": mode, "cases": len(times),
            "identified": len(ok), "identification_rate": len(ok) / max(1, len(times)),
            "median_snapshots": float(np.median(got)) if got else None,
            "max_snapshots": max(got) if got else None,
            "missed": [lab for lab, t in zip(labels, times, strict=True)
                       if t is None or t > within]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.evaluate_topology",
                                 description="topology identification rows (JSON lines)")
    ap.add_argument("--config", default="ieee33")
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--quiet-hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="cases whose label contains this")
    ap.add_argument("--probe-every", type=float, default=_LIVE.probe_s,
                    help="periodic hypothesis test every this many seconds (inf: only "
                    "when J rises; default: the live twin's [topology] probe_s)")
    ap.add_argument("--pseudo-rel", type=float, default=_LIVE.pseudo_rel,
                    help="load pseudo-measurement sigma as a fraction of the nominal load")
    ap.add_argument("--modes", default=",".join(STATUS_MODES))
    ap.add_argument("--ratio", type=float, default=_LIVE.ratio,
                    help="the tracker's summed-J ratio")
    ap.add_argument("--confirm", type=int, default=_LIVE.confirm,
                    help="the tracker's tests in a row")
    ap.add_argument("--add-meter", action="append", default=[], metavar="NAME",
                    help="add this meter to the config (tx18, flow18_33; repeatable)")
    ap.add_argument("--no-recommend", action="store_true",
                    help="only the config's meters (no rows with the recommended ones)")
    a = ap.parse_args(argv)
    ev = TopologyEval(config=a.config, max_cases=a.max_cases, quiet_hours=a.quiet_hours,
                      seed=a.seed, only=a.only, probe_every_s=a.probe_every,
                      pseudo_rel=a.pseudo_rel, ratio=a.ratio, confirm=a.confirm,
                      modes=tuple(a.modes.split(",")), add_meters=tuple(a.add_meter),
                      recommend=not a.no_recommend)
    try:
        topology_rows(ev, log=lambda s: print(s, flush=True))
    except (GatewayError, ConfigError) as exc:
        print(f"gateway.evaluate_topology: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
