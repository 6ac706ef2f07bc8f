"""``gridtwin bench``: run the registered benchmarks (see :mod:`gateway.bench`).

Three renderings of the same results: a plain table for a terminal, ``--json`` for
programs, and ``--markdown`` for the documentation, so the figures published in
``docs/measured.md`` are pasted from a command's output, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gateway.bench import BenchResult


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="measure speed against peers (JSON with --json)")
    p.add_argument("--quick", action="store_true", help="fewer samples, smaller cases")
    p.add_argument("--only", metavar="PREFIX", help="only benchmarks whose name starts so")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    out.add_argument(
        "--markdown",
        action="store_true",
        help="print a Markdown table (name, value, unit, peer, peer value, ratio)",
    )
    p.set_defaults(func=_run)


def _number(x: float | None) -> str:
    """Four significant digits: what a table of timings on a shared machine can carry."""
    return "" if x is None else f"{x:.4g}"


def _cell(text: str) -> str:
    """A table cell: a ``|`` inside a peer's description would split the column."""
    return text.replace("|", "\\|")


def markdown_table(results: Sequence[BenchResult]) -> str:
    """The results as a GitHub-flavoured Markdown table, one row per figure.

    ``ratio`` is ``value / peer value`` (below 1: faster or smaller than the peer); rows
    without a peer leave the three peer columns empty rather than writing a dash, so a
    reader never mistakes a placeholder for a measurement.
    """
    lines = [
        "| name | value | unit | peer | peer value | ratio |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for r in results:
        cells = [
            f"`{r.name}`",
            _number(r.value),
            _cell(r.unit),
            _cell(r.peer or ""),
            _number(r.peer_value),
            _number(r.ratio),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain_table(results: Sequence[BenchResult]) -> str:
    lines = [f"{'name':36} {'value':>12} {'unit':10} {'peer':40} {'ratio':>8}"]
    for r in results:
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        lines.append(f"{r.name:36} {r.value:12.4g} {r.unit:10} {r.peer or '-':40} {ratio:>8}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from gateway import bench

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = bench.run(args.only, args.quick, progress)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    elif args.markdown:
        print(markdown_table(results))
    else:
        print(_plain_table(results))
    if args.only and not results:
        print(f"no benchmark matches --only {args.only!r}", file=sys.stderr)
        return 2
    return 0
