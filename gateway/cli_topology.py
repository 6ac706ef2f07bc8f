"""``gridtwin topology check CONFIG``: can the config's meters tell its reconfigurations
apart (a missing or falsified switch status is then found from the measurements), and
which meter to add where they cannot (:mod:`gateway.topology_check`).

Exit status: 0 every reconfiguration distinguishable; 1 some are not (the meters that
would separate them are printed); 2 the config or an option is wrong (the key named).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("topology", help="topology observability of a config's meters")
    tsub = p.add_subparsers(dest="topology_command", metavar="ACTION", required=True)
    c = tsub.add_parser(
        "check", help="which reconfigurations the meters cannot tell apart, and the meter "
        "that would (exit 0 all distinguishable, 1 not, 2 config error)",
        description="For every exchange of a tie for a sectionaliser from the normal "
        "topology: the noise-free objective J of the nearest wrong hypothesis (lambda); "
        "below --min-lambda the two are indistinguishable. Recommends added meters "
        "(tx<bus>: P/Q injection at a load's transformer; flow<from>_<to>: P/Q flow on a "
        "branch) until every case is distinguishable.")
    c.add_argument("config", help="path to a .toml file or a bundled name (e.g. ieee33)")
    c.add_argument("--json", action="store_true", help="one JSON object")
    c.add_argument("--add-meter", action="append", default=[], metavar="NAME",
                   help="analyse with this meter added (tx18, flow18_33; repeatable)")
    c.add_argument("--min-lambda", type=float, default=None,
                   help="indistinguishable below this lambda (default 36)")
    c.add_argument("--pseudo-rel", type=float, default=None,
                   help="load pseudo-measurement sigma / nominal load (default: the "
                   "config's [topology] pseudo_rel)")
    c.add_argument("--write-config", default=None, metavar="FILE",
                   help="write the config with the recommended meters added to FILE")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from estimator.errors import EstimatorError
    from estimator.topology_observability import MIN_LAMBDA
    from gateway.cli_config import report
    from gateway.config import load_config
    from gateway.config.loader import resolve
    from gateway.errors import ConfigError
    from gateway.topology_check import MeterNameError, check, with_meters

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(report(args.config, exc), file=sys.stderr)
        return 2
    for key, val in (("--min-lambda", args.min_lambda), ("--pseudo-rel", args.pseudo_rel)):
        if val is not None and not val > 0:
            print(f"{args.config}: {key}: must be > 0 (got {val:g})", file=sys.stderr)
            return 2
    try:
        res = check(cfg, add=args.add_meter, pseudo_rel=args.pseudo_rel,
                    min_lambda=args.min_lambda or MIN_LAMBDA)
        if args.write_config:
            text = with_meters(resolve(args.config)[0], cfg, res.recommended)
            Path(args.write_config).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"{args.config}: --write-config: {exc}", file=sys.stderr)
        return 2
    except MeterNameError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    except EstimatorError as exc:  # no estimate on some topology: the meters are short
        print(f"{args.config}: meters: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.as_dict(cfg)))
    else:
        print(res.text())
    return 0 if res.observable else 1
