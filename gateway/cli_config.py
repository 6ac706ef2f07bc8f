"""``gridtwin config check FILE|NAME``: what a config describes, or every root problem in it;
``gridtwin config schema``: the JSON Schema of the file, for editors.

``check`` passing means ``run`` starts: beyond the loader's rules it runs the estimator's
observability check on the configured meters, since a twin that cannot estimate its state
is not worth starting.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config package (numpy, scipy) loads only when a command runs
    from gateway.config import Stream, TwinConfig
    from gateway.errors import ConfigError, ConfigProblem


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="check a twin config and show what it describes")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate a config (exit 0 valid, 2 invalid)")
    c.add_argument("config", help="path to a .toml file or a bundled name (e.g. ieee33)")
    c.add_argument("--points", action="store_true",
                   help="list every stream's point list (what to type into RSCAD)")
    c.set_defaults(func=_check)
    s = csub.add_parser("schema", help="print the JSON Schema of a twin config (for editors)")
    s.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write it to FILE instead of standard output")
    s.set_defaults(func=_schema)


def report(source: str, exc: ConfigError) -> str:
    """One line per root problem, then how many follow-ons were left out."""
    roots = exc.roots
    lines = [f"{source}: {len(roots)} error(s)"] + [f"  - {p}" for p in roots]
    if exc.follow_ons:
        lines.append(f"  ({len(exc.follow_ons)} follow-on problem(s) not shown: they "
                     "follow from the above)")
    return "\n".join(lines)


def observability(cfg: TwinConfig) -> ConfigProblem | None:
    """The estimator's observability check on every electrical channel and PV forecast."""
    import numpy as np

    from estimator.errors import EstimatorError
    from estimator.observability import check_observable
    from gateway.config.problems import NotObservable
    from gateway.se_model import measurement_model

    if not any(c.electrical for c in cfg.channels):
        return None  # an ingest-only twin (no electrical meters) estimates nothing
    try:
        model = measurement_model(cfg)
        check_observable(model, np.ones(model.m, bool))
    except EstimatorError as exc:
        return NotObservable("meters", str(exc), "add meters at the buses named (gridtwin "
                             "config check shows m against 2n-1 states)")
    return None


def estimator_method(cfg: TwinConfig) -> ConfigProblem | None:
    """The estimator process builds its solver by this name; an unknown one fails there."""
    from estimator.baselines import METHODS
    from gateway.config.problems import InvalidValue

    if cfg.estimator.method in (*METHODS, "flat"):
        return None
    return InvalidValue("estimator.method", f"unknown method {cfg.estimator.method!r}",
                        f"use one of {', '.join(METHODS)}", value=cfg.estimator.method)


def readiness(cfg: TwinConfig) -> list[ConfigProblem]:
    """Problems of a valid file that would stop ``run``: no stream, an unknown estimator
    method, meters that cannot observe the network."""
    from gateway.config.rules.streams import runnable

    problems: list[ConfigProblem] = list(runnable(cfg.streams))
    method = estimator_method(cfg)
    if method is not None:
        return [*problems, method]
    obs = observability(cfg)
    return problems + ([obs] if obs is not None else [])


def _check(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(report(args.config, exc), file=sys.stderr)
        return 2
    problems = readiness(cfg)
    if problems:
        print(report(args.config, ConfigError(problems)), file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(f"{args.config}: warning: {w}", file=sys.stderr)
    return _write(describe(cfg, points=args.points) + "\n")


def _write(text: str, path: str | None = None) -> int:
    """Write to stdout (a closed pipe, as with ``| head``, ends quietly) or to ``path``."""
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
        return 0
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader is gone: send the rest (and Python's exit flush) to /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _schema(args: argparse.Namespace) -> int:
    from gateway.config.json_schema import schema_text

    return _write(schema_text(), args.output)


def _kv(levels: set[float]) -> str:
    return ", ".join(f"{v:g}" for v in sorted(levels)) + " kV"


def describe(cfg: TwinConfig, *, points: bool = False) -> str:
    net = cfg.network
    n = net.n_bus
    in_service = int(net.branches.in_service.sum())
    kinds = Counter(m.kind for m in cfg.meters)
    ch_kinds = Counter(c.kind for c in cfg.channels)
    electrical = sum(1 for c in cfg.channels if c.electrical)
    lines = [
        f"twin {cfg.name!r} from {cfg.source} (digest {cfg.digest[:12]})",
        f"network {net.name}: {n} buses, {net.n_branch} branches "
        f"({in_service} in service, {net.n_branch - in_service} open), base "
        f"{net.base_mva:g} MVA, {_kv(set(float(k) for k in net.base_kv))}, "
        f"load {net.p_load.sum() * net.base_mva:.3f} MW / "
        f"{net.q_load.sum() * net.base_mva:.3f} MVAr",
    ]
    for p in cfg.plants:
        lines.append(f"  plant {p.name}: {p.rating_mw:g} MW at bus {p.bus} via node {p.node} "
                     f"(z = {p.r_pu:g} + j{p.x_pu:g} pu), site {p.site or '-'}")
    lines.append("meter locations: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    lines.append("channels: " + ", ".join(f"{k} {v}" for k, v in sorted(ch_kinds.items()))
                 + f" = {len(cfg.channels)}")
    pseudo = len(cfg.plants)
    lines.append(f"measurements m = {electrical} electrical + {pseudo} PV pseudo "
                 f"vs 2n-1 = {2 * n - 1} states (redundancy "
                 f"{(electrical + pseudo) / (2 * n - 1):.2f})")
    for s in cfg.streams:
        lines += _stream_lines(cfg, s, points)
    lines += _switch_lines(cfg)
    lines.append(f"estimator: {cfg.estimator.method}, deadline "
                 f"{cfg.estimator.deadline_s * 1000:g} ms; historian {cfg.historian_url}; "
                 f"metrics {cfg.metrics_bind}; commands "
                 f"{'ENABLED ' + cfg.commands.url if cfg.commands.enabled else 'off'}")
    return "\n".join(lines)


def _switch_lines(cfg: TwinConfig) -> list[str]:
    """Each switch with where its status comes from (topology tracking on or off)."""
    if not cfg.switches:
        return []
    src: dict[str, list[str]] = {}
    for s in cfg.streams:
        for p in s.points:
            if p.channel is None:
                src.setdefault(p.name, []).append(f"{s.name} int32 point")
        for station, bit, name in s.digitals:
            src.setdefault(name, []).append(f"{s.name} {station} DIGITAL{bit // 16} bit "
                                            f"{bit % 16}")
    t = cfg.topology
    lines = [f"switches {len(cfg.switches)}, topology tracking "
             + (f"on (identify {'on' if t.identify else 'off'}, a hypothesis test "
                + (f"at least every {t.probe_s:g} s)" if t.probe_s else "after every estimate)")
                if cfg.tracks_topology else "off")]
    net = cfg.network
    for sw in cfg.switches:
        state = "closed" if net.branches.in_service[sw.branch] else "open"
        lines.append(f"  switch {sw.name}: branch {net.branches.names[sw.branch]} ({state}), "
                     f"status {'; '.join(src.get(sw.name, [])) or 'not on the wire'}")
    return lines


def _stream_lines(cfg: TwinConfig, s: Stream, points: bool) -> list[str]:
    from gateway.config import skt_words

    state = "" if s.enabled else " [disabled]"
    extra = f", {len(s.pmus)} PMUs" if s.format == "c37.118" else \
        f", header {'on' if s.header else 'off'}, frame " \
        f"{4 * skt_words(len(s.points), s.header)} B"
    lines = [f"stream {s.name}{state}: {s.format} {s.url} @ {s.rate_hz:g} Hz, "
             f"{len(s.points)} points{extra}, allow {', '.join(s.allow)}"]
    if points:
        for i, pt in enumerate(s.points):
            unit = cfg.channels[pt.channel].unit if pt.channel is not None else "-"
            lines.append(f"    {i:3d} {pt.name:28} {pt.type:7} {unit}")
    return lines
