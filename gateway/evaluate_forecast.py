"""The ``forecast`` rows of ``gridtwin evaluate``: the state ahead against the truth.

Scenario: the bundled ieee33 config on a scenario trace of 3 + ``days`` days at 60 s
(``hil.scenario.make_trace``, Greensboro weather, from 1990-06-04, a Monday, so the days
before the scored Thursday are workdays too) with the loads scaled by ``load_scale``
(default 1.5: the evening peak takes the far end of the feeder below 0.95 pu). The first
three days only fill the history, as they would in a twin that has run for three days
(the seasonal lag needs a day, the error scenarios the day before it); the last day is
scored.

The forecaster is the gateway's own (:class:`gateway.forecast.Forecaster`, the code that
runs live) fed every step's true state (the estimator's own error is not part of these
figures: it is ``gridtwin evaluate``'s ``se`` rows), once with the configured method
("learned": seasonal-naive plus the ridge correction, clear-sky PV) and once with
"persistence" (the same code with persistence loads and PV), issuing a forecast every
``every_steps`` steps. Per method and horizon:

* ``vm_mape_pct``: mean over forecasts and buses (slack excluded) of
  ``|vm_forecast - vm_true| / vm_true``, %;
* ``band_coverage``: fraction of (forecast, bus) with the true |V| inside the band;
* ``hit_rate``: of the (forecast, bus) pairs whose true |V| at the target time is outside
  the limits, the fraction forecast outside; ``false_alarms``: (forecast, bus) pairs
  forecast outside that were inside (``false_alarm_rate``: per pair forecast outside);
* ``lead_time_s``: per violation onset (the first minute some bus is outside the limits
  after an hour without), how long before it the horizon's forecast first said so (the
  earliest issue time in ``[onset - h, onset]`` forecasting a violation at its target),
  0 when it never did before the onset; mean over the onsets (``onsets``,
  ``onsets_warned``: those with a lead time above 0).

``python -m gateway.evaluate_forecast [--quick] [--seed N] [--json]`` prints the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from gateway.forecast import Forecaster, ForecastSettings, horizon_label

Log = Callable[[str], None]

START = "1990-06-04"
HISTORY_DAYS = 3  # the days before the scored one (the error scenarios look a day back)
LOAD_SCALE = 1.5
STEP_S = 60.0
QUIET_S = 3600.0  # an onset follows at least this long without a violation


def _quiet(msg: str) -> None:
    """The default log: nothing."""


def make_eval_trace(*, seed: int, days: float = 1.0, load_scale: float = LOAD_SCALE,
                    start: str = START) -> Any:
    """The scenario: :data:`HISTORY_DAYS` days of history, then ``days`` scored (60 s
    steps, no gaps)."""
    from hil.scenario import ScenarioSpec, make_trace

    return make_trace(ScenarioSpec(config="ieee33", start=start, hours=24.0 * (HISTORY_DAYS + days),
                                   step_s=STEP_S, missing_pct=0.0, load_scale=load_scale,
                                   seed=seed))


def run_method(cfg: Any, trace: Any, settings: ForecastSettings, *, first: int,
               every_steps: int) -> dict[str, np.ndarray]:
    """Feed the true states, forecast at every ``every_steps``-th step from ``first``;
    arrays (n_forecasts, n_h, n_bus) of mean, low, high |V| and the violation flags,
    plus the issue step of each forecast."""
    f = Forecaster(cfg.network, cfg.plants, settings, seed=1)
    vm_all, va_all = np.abs(trace.v), np.angle(trace.v)
    n = trace.time.size
    max_h = int(max(settings.horizons_s) / STEP_S)
    out: dict[str, list[np.ndarray]] = {"vm": [], "lo": [], "hi": [], "viol": []}
    steps: list[int] = []
    for k in range(n):
        t = float(trace.time[k])
        f.feed_state(t, vm_all[k], va_all[k])
        if k < first or (k - first) % every_steps or k + max_h >= n:
            continue
        job = f.poll(t)
        if job is None:
            continue
        res = job()
        f.complete(res, t)
        if res.error is not None:
            raise RuntimeError(f"forecast at step {k} failed: {res.error}")
        out["vm"].append(np.stack([v.vm for v in res.volts]))
        out["lo"].append(np.stack([v.vm_lo for v in res.volts]))
        out["hi"].append(np.stack([v.vm_hi for v in res.volts]))
        out["viol"].append(np.stack([(v.vm < settings.vmin) | (v.vm > settings.vmax)
                                     for v in res.volts]))
        steps.append(k)
    arrays = {key: np.array(v) for key, v in out.items()}
    arrays["step"] = np.array(steps, dtype=np.int64)
    return arrays


def score(trace: Any, res: dict[str, np.ndarray], settings: ForecastSettings, *,
          slack: int, method: str) -> list[dict[str, Any]]:
    """The rows of one method (one per horizon); see the module docstring."""
    vm_true = np.abs(trace.v)
    keep = np.arange(vm_true.shape[1]) != slack
    outside = (vm_true < settings.vmin) | (vm_true > settings.vmax)
    feeder = outside[:, keep].any(axis=1)
    rows = []
    steps = res["step"]
    quiet = int(QUIET_S / STEP_S)
    for i, h in enumerate(settings.horizons_s):
        hs = round(h / STEP_S)
        tgt = steps + hs
        truth = vm_true[tgt][:, keep]
        fc = res["vm"][:, i][:, keep]
        act = outside[tgt][:, keep]
        pred = res["viol"][:, i][:, keep]
        inside = (truth >= res["lo"][:, i][:, keep]) & (truth <= res["hi"][:, i][:, keep])
        hits = int((pred & act).sum())
        fa = int((pred & ~act).sum())
        warned_at = {int(s): bool(p.any()) for s, p in zip(steps, pred, strict=True)}
        onsets = [j for j in range(int(steps[0]) + hs, int(steps[-1]) + 1)
                  if feeder[j] and not feeder[max(0, j - quiet):j].any()]
        leads = []
        for j in onsets:
            early = [s for s in range(j - hs, j + 1) if warned_at.get(s, False)]
            leads.append(float(j - early[0]) * STEP_S if early else 0.0)
        rows.append({
            "kind": "forecast", "method": method, "horizon": horizon_label(h),
            "horizon_s": h, "forecasts": int(steps.size),
            "vm_mape_pct": float(100.0 * np.mean(np.abs(fc - truth) / truth)),
            "band_coverage": float(inside.mean()),
            "violations_true": int(act.sum()),
            "hit_rate": float(hits / act.sum()) if act.sum() else None,
            "false_alarms": fa,
            "false_alarm_rate": float(fa / pred.sum()) if pred.sum() else None,
            "onsets": len(onsets),
            "onsets_warned": int(sum(x > 0 for x in leads)),
            "lead_time_s": float(np.mean(leads)) if leads else None,
        })
    return rows


def forecast_rows(*, quick: bool = False, seed: int = 21, every_steps: int | None = None,
                  scenarios: int = 20, log: Log = _quiet) -> list[dict[str, Any]]:
    """The ``forecast`` rows (learned and persistence, every horizon) over the scored day.

    ``quick``: 6 scored hours from 14:00 local (the evening peak) at every 5th step.
    """
    from gateway.config import load_config

    cfg = load_config("ieee33")
    t0 = time.perf_counter()
    trace = make_eval_trace(seed=seed)
    day = int(86400.0 / STEP_S)
    first = HISTORY_DAYS * day + (14 * 60 if quick else 0)
    n = first + 6 * 60 + 61 if quick else trace.time.size
    trace_cut = _head(trace, n)
    every = every_steps or (5 if quick else 1)
    base = ForecastSettings(scenarios=scenarios, every_s=0.0, history_days=HISTORY_DAYS)
    rows: list[dict[str, Any]] = []
    for method in ("learned", "persistence"):
        s = replace(base, method=method)
        res = run_method(cfg, trace_cut, s, first=first, every_steps=every)
        rows.extend(score(trace_cut, res, s, slack=cfg.network.slack, method=method))
        log(f"  forecast {method}: {res['step'].size} forecasts "
            f"({time.perf_counter() - t0:.1f} s so far)")
    return rows


def _head(trace: Any, n: int) -> Any:
    """The first ``n`` rows of what the evaluation reads (time, v)."""
    from types import SimpleNamespace

    return SimpleNamespace(time=trace.time[:n], v=trace.v[:n])


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (what docs/forecast.md shows)."""
    head = ("| method | horizon | vm MAPE % | band coverage | hit rate | false alarms | "
            "onsets warned | lead time (min) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        hit = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.2f}"
        lead = "-" if r["lead_time_s"] is None else f"{r['lead_time_s'] / 60:.1f}"
        lines.append(f"| {r['method']} | {r['horizon']} | {r['vm_mape_pct']:.3f} | "
                     f"{r['band_coverage']:.2f} | {hit} | {r['false_alarms']} | "
                     f"{r['onsets_warned']}/{r['onsets']} | {lead} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.evaluate_forecast",
                                description="forecast rows of gridtwin evaluate")
    p.add_argument("--quick", action="store_true", help="6 evening hours, every 5th step")
    p.add_argument("--seed", type=int, default=21, help="scenario seed")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    rows = forecast_rows(quick=args.quick, seed=args.seed,
                         log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
