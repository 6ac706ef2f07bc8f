"""Rules for ``[[meters]]``: where each meter sits, what it measures and how accurately;
the channels (one per measured value) follow from them."""

from __future__ import annotations

import re
from typing import Any

from estimator.network import Network
from gateway.config.keys import known
from gateway.config.problems import (
    Duplicate,
    InvalidValue,
    MissingKey,
    Problems,
    UnknownReference,
)
from gateway.config.rules.network import branch_index
from gateway.config.schema import Channel, Meter, Plant
from gateway.config.vocabulary import (
    ACCURACY_FIGURES,
    ALLOWED,
    BRANCH_QUANTITIES,
    BUS_QUANTITIES,
    METER_KINDS,
)

_ACC_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|[A-Za-z/0-9]*)\s*$")


def meters(pr: Problems, net: Network | None, feeder: set[int], plants: list[Plant],
           val: Any) -> list[Meter]:
    """Every meter location; a multi-bus or multi-branch table gives one meter per place."""
    out: list[Meter] = []
    plant_names = {p.name for p in plants}
    for i, t in enumerate(pr.array(val, "meters")):
        mark = pr.mark()
        out.extend(meter(pr, net, feeder, plant_names, t, i))
        if isinstance(t.get("id"), str):
            pr.broken(f"meter:{t['id']}", pr.since(mark))
    seen: set[str] = set()
    for m in out:
        if m.id in seen:
            pr.add(Duplicate("meters", f"meter id {m.id!r} used twice",
                             "give each meter its own id", value=m.id))
        seen.add(m.id)
    return out


def meter(pr: Problems, net: Network | None, feeder: set[int], plant_names: set[str],
          t: dict[str, Any], i: int) -> list[Meter]:
    key = f"meters[{i}]"
    pr.unknown_keys(t, key, known("meters"))
    mid = pr.get(t, "id", key, str)
    kind = pr.get(t, "kind", key, str)
    qs = pr.get(t, "quantities", key, list)
    if mid is None or kind is None or qs is None:
        return []
    key = f"meters[{i}] ({mid})"
    if kind not in METER_KINDS:
        pr.add(InvalidValue(f"{key}.kind", f"unknown meter kind {kind!r}",
                            f"use one of {', '.join(METER_KINDS)}", value=kind))
        return []
    bad_q = [q for q in qs if q not in ALLOWED[kind]]
    if bad_q:
        pr.add(InvalidValue(f"{key}.quantities", f"{bad_q} not measured by a {kind} meter",
                            f"use some of {', '.join(ALLOWED[kind])}", value=bad_q))
        return []
    if kind in ("weather", "pv"):
        plant = pr.get(t, "plant", key, str, default=None)
        if plant is not None and plant not in plant_names:
            pr.follow_on(UnknownReference(
                f"{key}.plant", f"no plant named {plant!r}",
                f"use one of {', '.join(sorted(plant_names)) or '(no plants)'}", value=plant),
                f"plant:{plant}", "network")
        return [Meter(mid, kind, tuple(qs), plant=plant)]
    if net is None:
        return []
    return electrical_meter(pr, net, feeder, t, key, mid, kind, qs)


def electrical_meter(pr: Problems, net: Network, feeder: set[int], t: dict[str, Any],
                     key: str, mid: str, kind: str, qs: list[str]) -> list[Meter]:
    """A PMU or SCADA table: its buses, its branches (and PMU currents) as meters."""
    bus_q = tuple(q for q in qs if q in BUS_QUANTITIES)
    br_q = tuple(q for q in qs if q in BRANCH_QUANTITIES)
    buses = meter_buses(pr, net, t, key)
    branches = meter_branches(pr, net, feeder, t, key)
    if buses is None or branches is None:
        return []
    currents = t.get("currents")
    if currents is not None:
        if len(buses) != 1:
            pr.add(InvalidValue(f"{key}.currents", "currents needs exactly one bus",
                                "add bus = N", value=currents))
            return []
        branches += bus_currents(net, feeder, buses[0], currents)
        br_q = br_q or ("im", "ia")
    if bus_q and not buses:
        pr.add(MissingKey(key, f"{list(bus_q)} need a bus", "add bus = N or buses = [...]"))
        return []
    if br_q and not branches:
        pr.add(MissingKey(key, f"{list(br_q)} need a branch",
                          'add branches = ["f-t", ...] (or currents = "feeder" for a PMU)'))
        return []
    if not bus_q and len(buses) == 1 and not branches:
        pr.add(InvalidValue(key, "a bus meter without bus quantities", "add vm/va/pinj/qinj"))
    multi_bus = len(buses) > 1 or bool(bus_q and branches)
    out = [Meter(f"{mid}.{b}" if len(buses) > 1 else mid, kind, bus_q, bus=b)
           for b in buses if bus_q]
    for idx, end in branches:
        name = net.branches.names[idx]
        m_id = f"{mid}.{name}" if (len(branches) > 1 or multi_bus) else mid
        out.append(Meter(m_id, kind, br_q, branch=idx, end=end))
    return out


def meter_buses(pr: Problems, net: Network, t: dict[str, Any], key: str) -> list[int] | None:
    ids = set(int(b) for b in net.bus_ids)
    buses: list[int] = []
    if "bus" in t:
        b = pr.get(t, "bus", key, int)
        buses = [] if b is None else [b]
    elif "buses" in t:
        buses = pr.get(t, "buses", key, list, default=[])
    for b in buses:
        if not isinstance(b, int) or b not in ids:
            pr.add(UnknownReference(f"{key}.bus", f"bus {b!r} is not in the network",
                                    f"use a bus id of the case ({min(ids)}..{max(ids)})",
                                    value=b))
            return None
    return buses


def meter_branches(pr: Problems, net: Network, feeder: set[int], t: dict[str, Any],
                   key: str) -> list[tuple[int, int]] | None:
    """(branch index, metered end bus id) of ``branch``/``branches``; None on a problem."""
    if "branch" not in t and "branches" not in t:
        return []
    specs = t.get("branches", t.get("branch"))
    br = net.branches
    if specs == "all" or specs == ["all"]:
        specs = [br.names[k] for k in range(net.n_branch)
                 if br.in_service[k] and int(net.bus_ids[br.from_idx[k]]) in feeder
                 and int(net.bus_ids[br.to_idx[k]]) in feeder]
    elif isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, list):
        pr.add(InvalidValue(f"{key}.branches", "must be a list of 'from-to' strings or \"all\"",
                            'branches = ["1-2", "2-3"]', value=specs))
        return None
    end_spec = t.get("end", "from")
    out: list[tuple[int, int]] = []
    for s in specs:
        idx = branch_index(pr, net, str(s), f"{key}.branches")
        if idx is None:
            return None
        ends = (int(net.bus_ids[br.from_idx[idx]]), int(net.bus_ids[br.to_idx[idx]]))
        end = {"from": ends[0], "to": ends[1]}.get(end_spec) if isinstance(end_spec, str) \
            else (end_spec if end_spec in ends else None)
        if end is None:
            pr.add(InvalidValue(f"{key}.end", f"end {end_spec!r} is not an end of branch {s}",
                                f'use "from", "to", {ends[0]} or {ends[1]}', value=end_spec))
            return None
        if not br.in_service[idx]:
            pr.add(InvalidValue(f"{key}.branches", f"branch {s} is open (out of service)",
                                "meter an in-service branch or close it in network.switches",
                                value=s))
            return None
        out.append((idx, end))
    return out


def bus_currents(net: Network, feeder: set[int], bus: int, currents: object
                 ) -> list[tuple[int, int]]:
    """The in-service branches at ``bus`` (feeder branches only for ``"feeder"``)."""
    b_idx = net.index_of(bus)
    br = net.branches
    out = []
    for k in range(net.n_branch):
        if not br.in_service[k] or b_idx not in (br.from_idx[k], br.to_idx[k]):
            continue
        other = br.to_idx[k] if br.from_idx[k] == b_idx else br.from_idx[k]
        if currents == "feeder" and int(net.bus_ids[other]) not in feeder:
            continue
        out.append((k, bus))
    return out


def channels(pr: Problems, meters_: list[Meter], raw: Any) -> list[Channel]:
    """One channel per meter and quantity, with its accuracy, in measurement-model order."""
    tables = {t["id"]: (i, t) for i, t in enumerate(raw if isinstance(raw, list) else [])
              if isinstance(t, dict) and isinstance(t.get("id"), str)}
    out: list[Channel] = []
    for m in meters_:
        root = m.id.split(".")[0]
        mark = pr.mark()
        _meter_channels(pr, m, root, tables, out)
        # a channel that failed here is "missing" for the streams that name it
        pr.broken(f"meter:{root}", pr.since(mark))
    return out


def _meter_channels(pr: Problems, m: Meter, root: str,
                    tables: dict[str, tuple[int, dict[str, Any]]], out: list[Channel]) -> None:
    """The channels of one meter (location), appended to ``out``."""
    i, t = tables.get(root, (0, {}))
    key = f"meters[{i}] ({root})"
    acc = t.get("accuracy", {})
    floor = t.get("floor", {})
    figure = t.get("figure", "max")
    if figure not in ACCURACY_FIGURES:
        pr.add(InvalidValue(f"{key}.figure", f"must be 'max' or 'std', got {figure!r}",
                            'figure = "max" (maximum error) or "std" (one sigma)',
                            value=figure))
        figure = "max"
    if not isinstance(acc, dict) or not isinstance(floor, dict):
        pr.add(InvalidValue(f"{key}.accuracy", "must be a table like {vm = \"0.05%\"}", ""))
        return
    for q in m.quantities:
        ch = channel(pr, m, q, acc, floor, figure, key, len(out))
        if ch is not None:
            out.append(ch)


def channel(pr: Problems, m: Meter, q: str, acc: dict[str, Any], floor: dict[str, Any],
            figure: str, key: str, index: int) -> Channel | None:
    unit = ALLOWED[m.kind][q]
    if q not in acc:
        pr.add(MissingKey(f"{key}.accuracy.{q}", f"no accuracy for {q}",
                          f'add {q} = "1%" (of reading) or an absolute figure in {unit}'))
        return None
    rel, absval = accuracy(pr, acc[q], unit, f"{key}.accuracy.{q}")
    fl = floor.get(q, 0.0)
    if not isinstance(fl, (int, float)) or fl < 0:
        pr.add(InvalidValue(f"{key}.floor.{q}", f"must be a number >= 0, got {fl!r}",
                            f"give the smallest error in {unit}", value=fl))
        fl = 0.0
    return Channel(index=index, name=f"{m.id}.{q}", meter=m.id, kind=m.kind, quantity=q,
                   unit=unit, bus=m.bus, branch=m.branch, end=m.end, plant=m.plant, rel=rel,
                   abs=max(absval, float(fl)), figure=figure)


def accuracy(pr: Problems, spec: Any, unit: str, key: str) -> tuple[float, float]:
    """(fraction of reading, absolute figure) of ``"0.5%"``, ``"0.005rad"`` or a number."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec <= 0:
            pr.add(InvalidValue(key, f"must be > 0, got {spec}", "give the stated accuracy",
                                value=spec))
        return 0.0, float(spec)
    m = _ACC_RE.match(str(spec))
    if not m:
        pr.add(InvalidValue(key, f"cannot read accuracy {spec!r}",
                            f'write "0.5%" (of reading) or "0.005{unit}" (absolute)',
                            value=spec))
        return 0.0, 0.0
    val = float(m[1])
    if val <= 0:
        pr.add(InvalidValue(key, f"must be > 0, got {spec!r}", "give the stated accuracy",
                            value=spec))
    if m[2] == "%":
        return val / 100.0, 0.0
    if m[2] and m[2] != unit:
        pr.add(InvalidValue(key, f"unit {m[2]!r} does not match the channel unit {unit!r}",
                            f'write "{m[1]}{unit}" or a percentage', value=spec))
    return 0.0, val
