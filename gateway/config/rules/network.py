"""Rules for ``[network]`` and ``[[plants]]``: the case, its switches, the plant nodes,
and the plausibility of the case's numbers."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse.linalg import spsolve

from estimator.errors import NetworkError
from estimator.network import Network, load_case
from gateway.config.keys import known
from gateway.config.problems import (
    Duplicate,
    Implausible,
    InvalidValue,
    Problems,
    UnknownReference,
    Unreadable,
)
from gateway.config.schema import Meter, Plant, SwitchSpec

_CASE_FIX = 'case = "ieee33" or a path to a MATPOWER .m file'


def network(pr: Problems, t: dict[str, Any], base_dir: Path | None
            ) -> tuple[Network | None, list[SwitchSpec]]:
    """The case the config names, with its switch states applied, and the switches
    declared in ``[[network.switches]]`` (named, for their status on the wire)."""
    pr.unknown_keys(t, "network", known("network"))
    case = pr.get(t, "case", "network", str, fix=_CASE_FIX)
    if case is None:
        pr.broken("network", pr.items[-1] if pr else None)
        return None, []
    path = Path(case)
    if not path.is_absolute() and base_dir is not None and path.suffix == ".m":
        path = base_dir / path
    try:
        net = load_case(str(path) if path.suffix == ".m" else case)
    except NetworkError as exc:
        pr.broken("network", pr.add(Unreadable(
            "network.case", str(exc), "fix the case file or choose a bundled case",
            value=case)))
        return None, []
    if not plausible(pr, net):
        pr.broken("network", pr.items[-1])
        return None, []
    declared: list[SwitchSpec] = []
    for i, sw in enumerate(pr.array(t.get("switches", []), "network.switches")):
        key = f"network.switches[{i}]"
        pr.unknown_keys(sw, key, known("switch"))
        br = pr.get(sw, "branch", key, str, fix='branch = "from-to", e.g. "8-21"')
        closed = pr.get(sw, "closed", key, bool, default=None)
        name = pr.get(sw, "name", key, str, default=None)
        if br is None:
            continue
        idx = branch_index(pr, net, br, f"{key}.branch")
        if idx is None:
            continue
        if closed is not None:
            net = net.with_switch(idx, closed)
        declared.append(SwitchSpec(name or switch_name(net.branches.names[idx]), idx))
    _unique_switches(pr, net, declared)
    return net, declared


def switch_name(branch_name: str) -> str:
    """Default switch name of branch ``"8-21"``: ``"sw_8_21"`` (as estimator.topology)."""
    return "sw_" + branch_name.replace("-", "_")


def _unique_switches(pr: Problems, net: Network, declared: list[SwitchSpec]) -> None:
    names = [s.name for s in declared]
    branches = [str(net.branches.names[s.branch]) for s in declared]
    for what, vals in (("name", names), ("on branch", branches)):
        for v in sorted({v for v in vals if vals.count(v) > 1}):
            pr.add(Duplicate("network.switches", f"switch {what} {v!r} declared twice",
                             "declare each switch once", value=v))


#: refuse a case whose first-order voltage drop at its own load exceeds this (pu)
MAX_DROP_PU = 0.5
#: warn about a branch whose series impedance exceeds this (pu on the system base)
WARN_BRANCH_Z_PU = 2.0
#: a load (MW) more than this many times baseMVA is a unit mistake (kW read as MW)
MAX_LOAD_PER_BASE = 20.0
#: a base voltage above this (kV) is no distribution or transmission level
MAX_BASE_KV = 1200.0
_UNIT_FIX = "convert impedances to per unit and loads to MW (MATPOWER: savecase)"


def plausible(pr: Problems, net: Network) -> bool:
    """Refuse a case whose numbers say the units are wrong; warn about doubtful ones.

    MATPOWER cases state impedances in per unit and loads in MW. A file that keeps ohms
    and kW (and converts them in code the loader did not evaluate) shows up here as a load
    of thousands of MW on a 10 MVA base, or as a voltage drop of more than half the
    nominal voltage at the case's own load.
    """
    problems = [p for p in (load_level(net), voltage_levels(net), voltage_drop(net))
                if p is not None]
    for p in problems:
        pr.add(p)
    z = np.hypot(net.branches.r, net.branches.x)
    big = np.flatnonzero(z > WARN_BRANCH_Z_PU)
    if big.size:
        k = int(big[np.argmax(z[big])])
        pr.warn(Implausible("network.case", f"{net.name}: {big.size} branch(es) with |r + jx| "
                            f"above {WARN_BRANCH_Z_PU:g} pu (largest: {net.branches.names[k]}, "
                            f"{z[k]:.4g} pu)", "check that impedances are in per unit on "
                            f"baseMVA = {net.base_mva:g}", value=float(z[k])))
    return not problems


def load_level(net: Network) -> Implausible | None:
    load = float(np.abs(net.p_load).sum() * net.base_mva)
    if load <= MAX_LOAD_PER_BASE * net.base_mva:
        return None
    return Implausible("network.case", f"{net.name}: total load {load:.6g} MW is "
                       f"{load / net.base_mva:.0f} x baseMVA ({net.base_mva:g} MVA): loads "
                       "look like kW, not MW", _UNIT_FIX, value=load)


def voltage_levels(net: Network) -> Implausible | None:
    kv = np.asarray(net.base_kv, float)
    bad = sorted({float(v) for v in kv if not 0 < v <= MAX_BASE_KV})
    if not bad:
        return None
    return Implausible("network.case", f"{net.name}: base voltage(s) {bad} kV out of (0, "
                       f"{MAX_BASE_KV:g}] kV", "give every bus its baseKV in kV", value=bad)


def voltage_drop(net: Network) -> Implausible | None:
    """The first-order (one current-injection step from a flat start) voltage at the
    case's own net load: ohms read as per unit make it fall far below zero."""
    keep = np.setdiff1d(np.arange(net.n_bus), [net.slack])
    if keep.size == 0:
        return None
    s_inj = (net.p_gen - net.p_load) + 1j * (net.q_gen - net.q_load)
    y = net.ybus().tocsc()
    v_s = net.vm_slack * np.exp(1j * net.va_slack)
    rhs = np.conj(s_inj[keep]) - y[keep][:, [net.slack]].toarray().ravel() * v_s
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            v = spsolve(y[keep][:, keep], rhs)
        except (RuntimeError, ValueError):
            return None
    drop = np.abs(np.atleast_1d(v) - v_s)
    if not np.all(np.isfinite(drop)) or float(drop.max()) <= MAX_DROP_PU:
        return None
    k = int(np.argmax(drop))
    return Implausible("network.case", f"{net.name}: at its own load the voltage at bus "
                       f"{int(net.bus_ids[keep[k]])} would move by {drop[k]:.3g} pu: "
                       "impedances look like ohms (or loads like kW)", _UNIT_FIX,
                       value=float(drop[k]))


def branch_index(pr: Problems, net: Network, spec: str, key: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
    if not m:
        pr.add(InvalidValue(key, f"branch {spec!r} is not 'from-to'", 'write it as "3-4"',
                            value=spec))
        return None
    try:
        return net.find_branch(int(m[1]), int(m[2]))
    except NetworkError:
        pr.add(UnknownReference(key, f"no branch {spec} in the network",
                                "use bus ids of an existing branch (see gridtwin config "
                                "check)", value=spec))
        return None


def plants(pr: Problems, net: Network, val: Any) -> tuple[Network, list[Plant]]:
    """Each plant becomes its own node behind its transformer, appended to the network."""
    out: list[Plant] = []
    ids = set(int(b) for b in net.bus_ids)
    for i, t in enumerate(pr.array(val, "plants")):
        mark = pr.mark()
        p = plant(pr, net, ids, t, f"plants[{i}]")
        if p is None:
            if isinstance(t.get("name"), str):
                pr.broken(f"plant:{t['name']}", pr.since(mark))
            continue
        base_kv = float(net.base_kv[net.index_of(p.bus)])
        net = net.with_bus(p.node, base_kv).with_branch(p.bus, p.node, p.r_pu, p.x_pu)
        ids.add(p.node)
        out.append(p)
    names = [p.name for p in out]
    for n in sorted(set(names)):
        if names.count(n) > 1:
            pr.add(Duplicate("plants", f"plant name {n!r} used twice",
                             "give each plant its own name", value=n))
    return net, out


def plant(pr: Problems, net: Network, ids: set[int], t: dict[str, Any], key: str
          ) -> Plant | None:
    """One ``[[plants]]`` table, or None when it has a problem."""
    mark = pr.mark()
    pr.unknown_keys(t, key, known("plants"))
    name = pr.get(t, "name", key, str)
    bus = pr.get(t, "bus", key, int)
    node = pr.get(t, "node", key, int)
    rating = pr.get(t, "rating_mw", key, (int, float))
    tr = pr.get(t, "transformer", key, dict, default={})
    r = pr.get(tr, "r_pu", f"{key}.transformer", (int, float), default=0.0)
    x = pr.get(tr, "x_pu", f"{key}.transformer", (int, float))
    site = pr.get(t, "site", key, str, default="")
    weather = pr.get(t, "weather", key, str, default=None)
    lat = pr.get(t, "latitude", key, (int, float), default=None)
    lon = pr.get(t, "longitude", key, (int, float), default=None)
    if lat is not None and not -90 <= lat <= 90:
        pr.add(InvalidValue(f"{key}.latitude", f"must be in [-90, 90] degrees, got {lat}",
                            "give the plant's latitude in degrees north", value=lat))
    if lon is not None and not -180 <= lon <= 180:
        pr.add(InvalidValue(f"{key}.longitude", f"must be in [-180, 180] degrees, got {lon}",
                            "give the plant's longitude in degrees east (west is negative)",
                            value=lon))
    if None in (name, bus, node, rating, x):
        return None
    if rating <= 0:
        pr.add(InvalidValue(f"{key}.rating_mw", f"must be > 0, got {rating}", "give MW",
                            value=rating))
    elif bus not in ids:
        pr.add(UnknownReference(f"{key}.bus", f"bus {bus} is not in the network",
                                f"use one of the case's bus ids ({min(ids)}..{max(ids)})",
                                value=bus))
    elif node in ids:
        pr.add(InvalidValue(f"{key}.node", f"node {node} already exists in the network",
                            "give the plant a new, unused bus id", value=node))
    elif math.hypot(r, x) == 0:
        pr.add(InvalidValue(f"{key}.transformer", "zero impedance",
                            "give the transformer's r_pu and x_pu on the system base"))
    if pr.since(mark) is not None:
        return None
    return Plant(name, bus, node, float(rating), float(r), float(x), site, weather,
                 None if lat is None else float(lat), None if lon is None else float(lon))


def plant_weather(pr: Problems, plants_: list[Plant], meters: list[Meter], raw: Any) -> None:
    """A plant's ``weather`` must name a weather meter: its PV forecaster reads it."""
    kinds = {m.id: m.kind for m in meters}
    names = [t.get("name") for t in raw] if isinstance(raw, list) else []
    for p in plants_:
        i = names.index(p.name) if p.name in names else 0
        if p.weather is None or kinds.get(p.weather) == "weather":
            continue
        weather = sorted(m for m, k in kinds.items() if k == "weather")
        what = "is a " + kinds[p.weather] + " meter" if p.weather in kinds else "does not exist"
        pr.follow_on(UnknownReference(
            f"plants[{i}].weather", f"weather meter {p.weather!r} {what}",
            f"use one of {', '.join(weather) or '(no weather meters)'} or remove weather "
            "(the forecaster would fall back to the nameplate guess)", value=p.weather),
            f"meter:{p.weather}")


#: status points named ``sw_<from>_<to>`` carry the state of the switch on that branch
SWITCH_POINT = re.compile(r"sw_(\d+)_(\d+)")


def switch_points(pr: Problems, net: Network | None, streams: list[Any],
                  declared: list[SwitchSpec]) -> tuple[SwitchSpec, ...]:
    """The switches with a status on the wire, resolved by name: a GTNET-SKT status point
    named after a declared switch (or ``sw_<from>_<to>`` after a branch) must be an
    ``int32`` (0 open, 1 closed); every name in a C37.118 stream's ``digitals`` must be
    such a switch. Returns the declared switches, then those named by points only."""
    if net is None:
        return ()
    found = {s.name: s for s in declared}
    for i, s in enumerate(streams):
        key = f"streams[{i}] ({s.name})"
        for p in s.points:
            if p.channel is not None:
                continue
            sw = _resolve_switch(pr, net, found, p.name, f"{key}.points", strict=False)
            if sw is not None and p.type != "int32":
                pr.add(InvalidValue(f"{key}.points", f"switch status {p.name} is {p.type}",
                                    f'write "{p.name}:int32" (0 open, 1 closed)',
                                    value=p.type))
        for station, bit, name in s.digitals:
            _resolve_switch(pr, net, found, name, f"{key}.digitals.{station}[{bit}]",
                            strict=True)
    return tuple(found.values())


def _resolve_switch(pr: Problems, net: Network, found: dict[str, SwitchSpec], name: str,
                    key: str, *, strict: bool) -> SwitchSpec | None:
    """The switch called ``name`` (declared, or ``sw_<from>_<to>`` of a branch, then
    added to ``found``); an unknown name is a problem when ``strict`` or when it looks
    like a switch (``sw_...``), else None (an ordinary status point)."""
    if name in found:
        return found[name]
    m = SWITCH_POINT.fullmatch(name)
    if m is not None:
        try:
            idx = net.find_branch(int(m[1]), int(m[2]))
        except NetworkError:
            pr.add(UnknownReference(key, f"switch status {name}: no branch {m[1]}-{m[2]} "
                                    "in the network", "name a switch sw_<from>_<to> after an "
                                    "existing branch", value=name))
            return None
        found[name] = SwitchSpec(name, idx)
        return found[name]
    if strict:
        known_ = ", ".join(found) or "none declared"
        pr.add(UnknownReference(key, f"no switch named {name!r} (switches: {known_})",
                                "declare it in [[network.switches]] (name, branch) or use "
                                "sw_<from>_<to>", value=name))
    return None
