"""``gridtwin config check FILE|NAME``: what a config describes, or every error in it."""

from __future__ import annotations

import argparse
import sys
from collections import Counter


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="check a twin config and show what it describes")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate a config (exit 0 valid, 2 invalid)")
    c.add_argument("config", help="path to a .toml file or a bundled name (e.g. ieee33)")
    c.add_argument("--points", action="store_true",
                   help="list every stream's point list (what to type into RSCAD)")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} error(s)", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    print(describe(cfg, points=args.points))
    return 0


def describe(cfg: object, *, points: bool = False) -> str:
    from gateway.config import TwinConfig

    assert isinstance(cfg, TwinConfig)
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
        f"{net.base_mva:g} MVA, {sorted(set(float(k) for k in net.base_kv))} kV, "
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
        state = "" if s.enabled else " [disabled]"
        extra = f", {len(s.pmus)} PMUs" if s.format == "c37.118" else \
            f", header {'on' if s.header else 'off'}, frame {4 * (len(s.points) + 3 * s.header)} B"
        lines.append(f"stream {s.name}{state}: {s.format} {s.url} @ {s.rate_hz:g} Hz, "
                     f"{len(s.points)} points{extra}, allow {', '.join(s.allow)}")
        if points:
            for i, pt in enumerate(s.points):
                unit = cfg.channels[pt.channel].unit if pt.channel is not None else "-"
                lines.append(f"    {i:3d} {pt.name:28} {pt.type:7} {unit}")
    lines.append(f"estimator: {cfg.estimator.method}, deadline "
                 f"{cfg.estimator.deadline_s * 1000:g} ms; historian {cfg.historian_url}; "
                 f"metrics {cfg.metrics_bind}; commands "
                 f"{'ENABLED ' + cfg.commands.url if cfg.commands.enabled else 'off'}")
    return "\n".join(lines)
