"""``gridtwin bench``: run the registered benchmarks (see :mod:`gateway.bench`)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="measure speed against peers (JSON with --json)")
    p.add_argument("--quick", action="store_true", help="fewer samples, smaller cases")
    p.add_argument("--only", metavar="PREFIX", help="only benchmarks whose name starts so")
    p.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway import bench

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = bench.run(args.only, args.quick, progress)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        print(f"{'name':36} {'value':>12} {'unit':10} {'peer':40} {'ratio':>8}")
        for r in results:
            ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
            print(f"{r.name:36} {r.value:12.4g} {r.unit:10} {r.peer or '-':40} {ratio:>8}")
    if args.only and not results:
        print(f"no benchmark matches --only {args.only!r}", file=sys.stderr)
        return 2
    return 0
