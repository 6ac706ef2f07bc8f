"""The ``gridtwin`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module adds
its parser and sets ``func`` (called with the parsed args, returning an exit status).
Heavy imports stay inside the ``func`` so ``gridtwin --help`` is fast. This module imports
``hil`` and ``models`` lazily: only the CLI and tests may depend on them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand module paths, in the order ``--help`` lists them
COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli_demo",
    "gateway.cli_run",
    "gateway.cli_fleet",
    "gateway.cli_config",
    "gateway.cli_topology",
    "hil.cli",
    "gateway.cli_decode",
    "gateway.cli_estimate",
    "models.cli",
    "gateway.historian.cli",
    "gateway.cli_bench",
)


def package_version() -> str:
    """The installed distribution's version (what a bug report should quote).

    A source tree run without ``pip install`` has no distribution metadata; say so rather
    than invent a number.
    """
    from importlib import metadata

    try:
        return metadata.version("gridtwin")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridtwin",
        description="Real-time digital twin of a distribution feeder.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version()}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMAND_MODULES:
        importlib.import_module(path).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        status = func(args)
    except KeyboardInterrupt:
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
