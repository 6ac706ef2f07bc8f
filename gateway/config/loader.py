"""TOML to a validated :class:`~gateway.config.schema.TwinConfig`.

The loader parses the file, runs the rules in dependency order (each reports into one
:class:`~gateway.config.problems.Problems`) and raises one
:class:`~gateway.errors.ConfigError` holding every problem, roots first; only a config
with no problem is built.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.config.forecast import parse_settings
from gateway.config.keys import TOP
from gateway.config.problems import Problems, Unreadable
from gateway.config.rules import meters as meter_rules
from gateway.config.rules import network as network_rules
from gateway.config.rules import sections, streams
from gateway.config.schema import Plant, TwinConfig
from gateway.config.sensors import sensor_problems
from gateway.errors import ConfigError, ConfigProblem

BUNDLED_DIR = "configs"


def bundled_configs() -> list[str]:
    root = resources.files("gateway") / BUNDLED_DIR
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def resolve(name_or_path: str | Path) -> tuple[str, Path | None]:
    """The TOML text and its directory for a bundled name or a file path."""
    s = str(name_or_path)
    p = Path(s)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "not found"
            raise ConfigError([Unreadable("", f"config file {s} {what}",
                                          "pass a .toml path or a bundled name: "
                                          + ", ".join(bundled_configs()), value=s)])
        return p.read_text(encoding="utf-8"), p.resolve().parent
    res = resources.files("gateway") / BUNDLED_DIR / f"{s}.toml"
    if not res.is_file():
        raise ConfigError([Unreadable("", f"no bundled config {s!r} and no such file",
                                      "use one of: " + ", ".join(bundled_configs()), value=s)])
    return res.read_text(encoding="utf-8"), None


def load_config(name_or_path: str | Path) -> TwinConfig:
    """Load and validate a config; raise ConfigError listing every problem found."""
    text, base_dir = resolve(name_or_path)
    return parse_config(text, source=str(name_or_path), base_dir=base_dir)


def parse_config(text: str, *, source: str = "<string>", base_dir: Path | None = None
                 ) -> TwinConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Unreadable("", f"{source} is not valid TOML: {exc}",
                                      "fix the syntax at the line shown")]) from None
    pr = Problems()
    cfg = build(pr, raw, text, source, base_dir)
    if pr or cfg is None:
        raise ConfigError(roots_first(pr.items))
    return cfg


def roots_first(items: list[ConfigProblem]) -> list[ConfigProblem]:
    return [p for p in items if p.cause is None] + [p for p in items if p.cause is not None]


def build(pr: Problems, raw: dict[str, Any], text: str, source: str, base_dir: Path | None
          ) -> TwinConfig | None:
    """Run every rule in dependency order; the config, or None if a rule found a problem."""
    pr.unknown_keys(raw, "", set(TOP))
    twin = pr.table(raw, "twin")
    name = pr.get(twin, "name", "twin", str, default="twin")
    net, declared = network_rules.network(pr, pr.table(raw, "network"), base_dir)
    feeder = set() if net is None else {int(b) for b in net.bus_ids}
    plants: list[Plant] = []
    if net is not None:
        net, plants = network_rules.plants(pr, net, raw.get("plants", []))
    meters = meter_rules.meters(pr, net, feeder, plants, raw.get("meters", []))
    network_rules.plant_weather(pr, plants, meters, raw.get("plants", []))
    channels = meter_rules.channels(pr, meters, raw.get("meters", []))
    stream_list = streams.streams(pr, raw.get("streams", []), channels)
    for problem in sensor_problems(raw, [c.name for c in channels], [
            channels[i].name for s in stream_list if s.enabled for i in s.channels]):
        pr.add(problem)
    switches = network_rules.switch_points(pr, net, stream_list, declared)
    topology = sections.topology(pr, pr.table(raw, "topology"))
    commands = sections.commands(pr, pr.table(raw, "commands"), plants)
    rate = max((s.rate_hz for s in stream_list if s.enabled), default=50.0)
    estimator = sections.estimator(pr, pr.table(raw, "estimator"), rate)
    quality = sections.quality(pr, pr.table(raw, "quality"))
    align = sections.align(pr, pr.table(raw, "align"), rate)
    historian_url = sections.historian(pr, pr.table(raw, "historian"))
    bind = sections.metrics(pr, pr.table(raw, "metrics"))
    bus = sections.bus(pr, pr.table(raw, "bus"))
    for problem in parse_settings(raw.get("forecast", {}))[1]:
        pr.add(problem)
    if net is None or pr:
        return None
    canonical = json.dumps(raw, sort_keys=True, default=str).encode()
    return TwinConfig(
        name=name, source=source, network=net, plants=plants, meters=meters,
        channels=channels, streams=stream_list, commands=commands, estimator=estimator,
        quality=quality, align=align, historian_url=historian_url, metrics_bind=bind,
        digest=hashlib.sha256(canonical).hexdigest(), text=text,
        channel_index={c.name: c.index for c in channels}, warnings=tuple(pr.warnings),
        bus=bus, switches=switches, topology=topology,
    )
