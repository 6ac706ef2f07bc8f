"""``gridtwin scenario ...`` (and, when present, ``gridtwin emulate`` from hil/emulate_cli.py).

``scenario make`` writes one trace file (see :mod:`hil.trace`); ``scenario info`` prints a
trace's metadata and label counts; ``scenario sites`` lists the TMY sites.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "scenario", help="generate ground-truth scenario traces",
        description="Generate scenario traces: true grid states from a batch power flow, "
                    "realistic weather, PV and loads, and the noisy, partly bad or missing "
                    "measurements of every configured channel, all labelled.")
    ssub = p.add_subparsers(dest="scenario_command", metavar="ACTION")
    m = ssub.add_parser(
        "make", help="write a scenario trace (.npz)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate a scenario and write it as one .npz trace. Example: gridtwin "
                    "scenario make --config ieee33 --start 1990-06-01 --hours 24 --step 1s "
                    "--bad-data 10 --seed 1 -o day.npz")
    m.add_argument("--config", default="ieee33",
                   help="twin config: bundled name or path to a .toml")
    m.add_argument("--start", default="1990-06-01",
                   help="start, ISO date/time; without a UTC offset it is the local standard "
                        "time of the site (--site, else the first plant's)")
    m.add_argument("--hours", type=float, default=24.0, help="duration in hours")
    m.add_argument("--step", default="1s", help="time step: e.g. 1s, 20ms, 1min")
    m.add_argument("--bad-data", type=float, default=0.0, metavar="PCT",
                   help="percent of electrical values corrupted (paper: 5, 10, 15)")
    m.add_argument("--missing", type=float, default=0.5, metavar="PCT",
                   help="percent of values missing (half isolated, half device dropouts)")
    m.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    m.add_argument("--site", default=None,
                   help="TMY site for every plant, overriding the config's plant sites "
                        "(see `gridtwin scenario sites`)")
    m.add_argument("--load-scale", type=float, default=1.0, metavar="X",
                   help="multiply every bus's peak load (the case's nominal load) by X")
    m.add_argument("-o", "--output", required=True, help="output .npz path")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_run_make)
    i = ssub.add_parser("info", help="print a trace's metadata and label counts (JSON)")
    i.add_argument("path", help="trace .npz")
    i.set_defaults(func=_run_info)
    s = ssub.add_parser("sites", help="list the TMY weather sites")
    s.set_defaults(func=_run_sites)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    _maybe_register_emulate(sub)


def _maybe_register_emulate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    try:
        module = importlib.import_module("hil.emulate_cli")
    except ModuleNotFoundError as exc:
        if exc.name in ("hil.emulate_cli",):
            return
        raise
    module._register_emulate(sub)


def _run_make(args: argparse.Namespace) -> int:
    from hil.errors import HilError
    from hil.scenario import ScenarioSpec, make_scenario, parse_step

    try:
        spec = ScenarioSpec(config=args.config, start=args.start, hours=args.hours,
                            step_s=parse_step(args.step), bad_pct=args.bad_data,
                            missing_pct=args.missing, seed=args.seed, site=args.site,
                            load_scale=args.load_scale)
        path = make_scenario(spec, args.output, progress=not args.quiet)
    except HilError as exc:
        print(f"gridtwin scenario make: {exc}", file=sys.stderr)
        return 2
    print(str(path))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    import json

    from hil.errors import HilError
    from hil.trace import load_trace

    try:
        tr = load_trace(args.path)
    except HilError as exc:
        print(f"gridtwin scenario info: {exc}", file=sys.stderr)
        return 2
    out = {k: v for k, v in tr.meta.items() if k not in ("load_profiles",)}
    out["shape"] = {"steps": tr.n_steps, "channels": len(tr.channel_names),
                    "buses": int(tr.v.shape[1]), "plants": len(tr.plant_names)}
    print(json.dumps(out, indent=1, default=str))
    return 0


def _run_sites(args: argparse.Namespace) -> int:
    from hil.weather import SITES

    for key in sorted(SITES):
        print(f"{key:12} {SITES[key].description}")
    return 0
