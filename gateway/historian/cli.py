"""``gridtwin history``: export a time range of the twin database to CSV or Parquet.

    gridtwin history states --db sqlite:///twin.db --from 2026-11-21T10:00 --to 2026-11-21T11:00 \\
        -o states.parquet
    gridtwin history measurements --corrected ... -o clean.csv
    gridtwin history buses --bus 18 --from ... --to ...      # one bus's voltage
    gridtwin history runs                                    # which runs are stored
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from gateway.errors import GatewayError

KINDS = ("measurements", "corrected", "states", "buses", "events", "forecasts", "flagged",
         "runs")


def parse_time(text: str) -> float:
    """Epoch seconds from a number or an ISO 8601 time (naive times are UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time "
            "(e.g. 2026-11-21T10:00:00)") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "history", help="export states/measurements/events of a time range (CSV, Parquet)",
        description="Export a time range of the twin database. Without --from/--to the "
                    "whole history; --from is inclusive, --to exclusive.")
    p.add_argument("kind", choices=KINDS,
                   help="what to export (buses: one row per state and bus; --bus picks one)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--db", metavar="URL",
                     help="historian URL (sqlite:///twin.db, mysql://user:pw@host:port/db); "
                          "default: the config's [historian] url, else sqlite:///twin.db")
    src.add_argument("--config", metavar="TOML", help="take the URL from this twin config")
    p.add_argument("--from", dest="start", type=parse_time, metavar="TIME",
                   help="start (epoch seconds or ISO 8601, UTC if naive)")
    p.add_argument("--to", dest="end", type=parse_time, metavar="TIME", help="end (exclusive)")
    p.add_argument("--run", type=int, metavar="RUN_ID", help="only this run")
    p.add_argument("--bus", type=int, help="with 'buses': only this bus id")
    p.add_argument("--corrected", action="store_true",
                   help="with 'measurements': the corrected values (same as kind corrected)")
    p.add_argument("--format", choices=("csv", "parquet"),
                   help="default: parquet for *.parquet, else csv")
    p.add_argument("-o", "--output", metavar="FILE", help="output file (default: CSV on stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.historian.reader import HistorianReader

    url = args.db
    if url is None and args.config is not None:
        from gateway.config import load_config

        url = load_config(args.config).historian_url
    url = url or "sqlite:///twin.db"
    kind = "corrected" if args.kind == "measurements" and args.corrected else args.kind
    try:
        with HistorianReader(url) as db:
            n = db.export(kind, args.output, fmt=args.format, start=args.start,
                          end=args.end, run_id=args.run, bus=args.bus)
    except GatewayError as exc:
        print(f"gridtwin history: {exc}", file=sys.stderr)
        return 1
    if args.output:
        print(f"{n} rows of {kind} -> {args.output}", file=sys.stderr)
    return 0
