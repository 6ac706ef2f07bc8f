"""``gridtwin topology check``'s core: can a twin config's meters tell its reconfigurations
apart, and which meter would make them so.

The analysis itself is :mod:`estimator.topology_observability` (sans-IO, on networks and
measurement models); this module maps a :class:`~gateway.config.TwinConfig` onto it --
the measurement model the live identification uses (the config's channels, the PV
forecasts, the load pseudo-measurements at ``[topology] pseudo_rel``), the cases (every
exchange of a tie for a sectionaliser on its loop from the normal topology: the
reconfigurations ``gridtwin evaluate`` plays) -- and maps its answer back onto the
config: a ``[[meters]]`` block per recommended meter, and a config text with them added
(their channels on the stream that carries the SCADA injections), so a scenario and a
twin can be built with them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from estimator.network import Network
from estimator.topology import SwitchSet, Topology, with_load_pseudo
from estimator.topology_observability import (
    MIN_LAMBDA,
    Meter,
    TopologyObservability,
    candidate_meters,
    flow_meter,
    recommend,
    transformer_meter,
    with_specs,
)
from gateway.errors import GatewayError
from gateway.se_model import measurement_model

if TYPE_CHECKING:
    from estimator.measurement import MeasurementModel
    from gateway.config import TwinConfig

__all__ = ["MeterNameError", "TopologyCheck", "check", "meter_toml", "parse_meter",
           "with_meters"]


class MeterNameError(GatewayError):
    """A meter named on the command line (``tx<bus>``, ``flow<from>_<to>``) does not fit
    the config's network, or cannot be put on a stream; ``key`` names the option."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def parse_meter(cfg: TwinConfig, name: str, key: str = "--add-meter") -> Meter:
    """``tx18`` (P/Q of bus 18's transformer) or ``flow18_33`` (P/Q flow on branch
    18-33, sending end) on the config's network."""
    net = cfg.network
    m = re.fullmatch(r"tx(\d+)", name)
    if m:
        bus = int(m.group(1))
        if bus not in {int(b) for b in net.bus_ids}:
            raise MeterNameError(key, f"{name!r}: the network {net.name} has no bus {bus}")
        return transformer_meter(net, net.index_of(bus))
    m = re.fullmatch(r"flow(\d+)_(\d+)", name)
    if m:
        br = f"{m.group(1)}-{m.group(2)}"
        if br not in net.branches.names:
            raise MeterNameError(key, f"{name!r}: the network {net.name} has no branch {br}")
        return flow_meter(net, list(net.branches.names).index(br))
    raise MeterNameError(key, f"{name!r} is not a meter name: use tx<bus> (P/Q injection "
                         "at the bus) or flow<from>_<to> (P/Q flow on the branch)")


@dataclass(frozen=True)
class TopologyCheck:
    """The analysis of one config (see :func:`check`); :meth:`as_dict` is the JSON."""

    config: str
    switches: SwitchSet
    result: TopologyObservability
    added: tuple[Meter, ...]  # meters the caller added before the analysis
    pseudo_rel: float
    levels: tuple[float, ...]

    @property
    def observable(self) -> bool:
        return not self.result.indistinguishable

    @property
    def recommended(self) -> tuple[str, ...]:
        """Meters to add: the caller's, then the picks."""
        return (*(m.name for m in self.added), *(p.meter.name for p in self.result.picks))

    def as_dict(self, cfg: TwinConfig | None = None) -> dict[str, Any]:
        sw, r = self.switches, self.result
        lab = sw.label
        weak = sorted(r.cases, key=lambda c: c.lam)
        return {
            "config": self.config, "cases": len(r.cases), "min_lambda": r.min_lambda,
            "load_levels": list(self.levels), "pseudo_rel": self.pseudo_rel,
            "added": [m.name for m in self.added],
            "observable": self.observable,
            "indistinguishable": [_case(sw, c) for c in weak if not c.separable(r.min_lambda)],
            "weakest": [_case(sw, c) for c in weak if c.separable(r.min_lambda)][:3],
            "recommended": [{"meter": p.meter.name, "where": p.meter.where,
                             "separates": [lab(t) for t in p.resolved],
                             "lambda_after": [_r(x) for x in p.lam_after],
                             **({"toml": meter_toml(cfg, p.meter)} if cfg else {})}
                            for p in r.picks],
            "unresolved": [lab(t) for t in r.still],
            "meter_set": list(self.recommended),
        }

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"topology check {d['config']}: {d['cases']} reconfigurations (every "
                 "exchange of a tie for a sectionaliser from the normal topology)",
                 f"  load pseudo-measurement sigma {self.pseudo_rel:g} x the nominal load; "
                 f"load levels {', '.join(f'{x:g}' for x in self.levels)}; "
                 f"indistinguishable below lambda = {d['min_lambda']:g}"]
        if self.added:
            lines.append(f"  meters added: {', '.join(d['added'])}")
        if not d["indistinguishable"]:
            lines.append("  every reconfiguration is distinguishable")
        for c in d["indistinguishable"]:
            lines.append(f"  INDISTINGUISHABLE {c['case']}: from {c['closest']}, lambda "
                         f"{c['lambda']:g} (at {c['level']:g} x load)")
        for c in d["weakest"]:
            lines.append(f"  weakest separable {c['case']}: lambda {c['lambda']:g}")
        for p in d["recommended"]:
            lines.append(f"  add {p['meter']} ({p['where']}): separates "
                         f"{', '.join(p['separates'])} (lambda "
                         f"{', '.join(f'{x:g}' for x in p['lambda_after'])})")
        if d["unresolved"]:
            lines.append(f"  no candidate meter separates: {', '.join(d['unresolved'])}")
        if d["recommended"]:
            lines.append(f"  meter set: bundled + {', '.join(d['meter_set'])}")
        return "\n".join(lines)


def _r(x: float) -> float:
    return round(x, 2) if math.isfinite(x) else x


def _case(sw: SwitchSet, c: Any) -> dict[str, Any]:
    return {"case": sw.label(c.truth), "closest": sw.label(c.closest), "lambda": _r(c.lam),
            "lambda_reported": _r(c.lam_reported), "level": c.level}


def model_maker(cfg: TwinConfig, pseudo_rel: float, extra: Sequence[Meter] = ()) -> Any:
    """The identification's measurement model on a switched network (as
    :class:`gateway.topology.Identifier` builds it), plus ``extra`` meters."""
    specs = [s for m in extra for s in m.specs]

    def make(net: Network) -> MeasurementModel:
        model = with_load_pseudo(measurement_model(replace(cfg, network=net)), cfg.network,
                                 rel=pseudo_rel)
        return with_specs(model, specs)

    return make


def reconfigurations(sw: SwitchSet) -> list[Topology]:
    """The cases: every radial exchange from the normal topology."""
    return [t for t in sw.candidates(sw.normal) if sw.radial(t)]


def check(cfg: TwinConfig, *, add: Sequence[str] = (), pseudo_rel: float | None = None,
          min_lambda: float = MIN_LAMBDA, levels: Sequence[float] = (0.5, 1.0),
          recommend_meters: bool = True) -> TopologyCheck:
    """Analyse ``cfg``'s meters (plus the meters named in ``add``) over its
    reconfigurations; recommend meters for the indistinguishable ones."""
    added = tuple(parse_meter(cfg, n) for n in add)
    rel = cfg.topology.pseudo_rel if pseudo_rel is None else float(pseudo_rel)
    sw = SwitchSet.of(cfg.network)
    make = model_maker(cfg, rel, added)
    pool = candidate_meters(cfg.network, make(cfg.network)) if recommend_meters else []
    result = recommend(sw, make, reconfigurations(sw), pool, min_lambda=min_lambda,
                       levels=levels)
    return TopologyCheck(cfg.source, sw, result, added, rel, tuple(levels))


# ----------------------------------------------------------------------------- config text


def meter_toml(cfg: TwinConfig | None, meter: Meter) -> str:
    """The ``[[meters]]`` block of ``meter`` (accuracies of the bundled SCADA meters)."""
    if meter.specs[0].kind == "pinj":
        bus = meter.name.removeprefix("tx")
        return (f'[[meters]]\nid = "{meter.name}"\nkind = "scada"\nbuses = [{bus}]\n'
                'quantities = ["pinj", "qinj"]\naccuracy = { pinj = "0.5%", qinj = "0.5%" }\n'
                "floor = { pinj = 0.001, qinj = 0.001 }\n")
    branch = meter.name.removeprefix("flow").replace("_", "-")
    return (f'[[meters]]\nid = "{meter.name}"\nkind = "scada"\nbranches = ["{branch}"]\n'
            'end = "from"\nquantities = ["p", "q"]\naccuracy = { p = "1%", q = "1%" }\n'
            "floor = { p = 0.002, q = 0.002 }\n")


_POINTS = re.compile(r"(?m)^(points\s*=\s*\[)([^\]]*)(\])")


def with_meters(text: str, cfg: TwinConfig, names: Sequence[str],
                key: str = "--add-meter") -> str:
    """``text`` (the config ``cfg`` was parsed from) with the named meters added: their
    ``[[meters]]`` blocks, and their channels (``<id>.*``) on the enabled GTNET-SKT
    stream that carries SCADA channels (what an RTDS point list would get)."""
    if not names:
        return text
    meters = [parse_meter(cfg, n, key) for n in names]
    scada = {c.name for c in cfg.channels if c.kind == "scada"}
    stream = next((s for s in cfg.enabled_streams if s.format == "gtnet-skt"
                   and any(p.name in scada for p in s.points)), None)
    if stream is None:
        raise MeterNameError(key, "the config has no enabled GTNET-SKT stream carrying "
                             "SCADA channels to put the added meters on")
    pats = ", ".join(f'"{m.name}.*"' for m in meters)

    def extend(mt: re.Match[str]) -> str:
        return f"{mt.group(1)}{mt.group(2)}, {pats}{mt.group(3)}"

    blocks = re.split(r"(?m)^(?=\[)", text)
    for i, block in enumerate(blocks):
        if block.startswith("[[streams]]") and re.search(
                rf'(?m)^name\s*=\s*"{re.escape(stream.name)}"\s*$', block):
            new, n = _POINTS.subn(extend, block, count=1)
            if n != 1:
                break
            blocks[i] = new
            added = "\n".join(meter_toml(cfg, m) for m in meters)
            return "".join(blocks).rstrip("\n") + "\n\n# --- added meters (gridtwin " \
                "topology check)\n" + added
    raise MeterNameError(key, f"stream {stream.name!r}: no one-line points = [...] list in "
                         "the config text to add the meters' channels to")
