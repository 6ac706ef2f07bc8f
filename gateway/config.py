"""The twin config: one TOML file describes a deployment, validated up front.

Validation follows power-grid-model's ``validation`` module: it collects every problem
(a :class:`~gateway.errors.ConfigProblem` naming the dotted key, what is wrong and the
fix) instead of stopping at the first, and :func:`load_config` raises one
:class:`~gateway.errors.ConfigError` holding them all.

The order of :attr:`TwinConfig.channels` is the measurement-model order: the order of
``Snapshot.values``, of the historian's value blobs and of the estimator's measurement
vector. It is meters in file order, each meter's quantities in the order given.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from estimator.errors import NetworkError
from estimator.network import Network, load_case
from gateway.errors import ConfigError, ConfigProblem

BUNDLED_DIR = "configs"

METER_KINDS = ("pmu", "scada", "weather", "pv")
BUS_QUANTITIES = {"vm": "kV", "va": "rad", "pinj": "MW", "qinj": "MVAr"}
BRANCH_QUANTITIES = {"im": "kA", "ia": "rad", "p": "MW", "q": "MVAr"}
WEATHER_QUANTITIES = {
    "ghi": "W/m2", "dni": "W/m2", "dhi": "W/m2",
    "temp_air": "degC", "wind_speed": "m/s", "wind_dir": "deg",
}
PV_QUANTITIES = {"ppv": "MW"}
ALLOWED = {
    "pmu": {**BUS_QUANTITIES, **BRANCH_QUANTITIES},
    "scada": {**BUS_QUANTITIES, **BRANCH_QUANTITIES},
    "weather": WEATHER_QUANTITIES,
    "pv": PV_QUANTITIES,
}
ANGLES = {"va", "ia"}
STREAM_FORMATS = ("gtnet-skt", "c37.118")
POINT_TYPES = ("int32", "float32")
MAX_SKT_POINTS = 300
MAX_RATE_HZ = 1000.0
TRANSPORT_SCHEMES = ("udp", "tcp", "file")


@dataclass(frozen=True)
class Plant:
    """A PV plant on its own node behind its interconnection transformer."""

    name: str
    bus: int  # external id of the feeder bus it connects to
    node: int  # external id of the plant's own node
    rating_mw: float
    r_pu: float
    x_pu: float
    site: str
    weather: str | None  # id of the weather meter at the plant
    latitude: float | None = None  # degrees north; the PV forecaster's sun position
    longitude: float | None = None  # degrees east


@dataclass(frozen=True)
class Meter:
    """One device location: a bus, or a branch end (``branch`` index, ``end`` bus id)."""

    id: str
    kind: str
    quantities: tuple[str, ...]
    bus: int | None = None
    branch: int | None = None
    end: int | None = None
    plant: str | None = None  # for weather and pv meters: the plant they belong to


@dataclass(frozen=True)
class Channel:
    """One measured value per snapshot, in engineering units.

    ``rel`` is a fraction of the reading, ``abs`` an absolute figure (channel units);
    ``figure`` says whether the stated accuracy is a maximum error (``"max"``: taken as
    3 sigma, the usual convention for instrument classes) or a standard deviation.
    """

    index: int
    name: str
    meter: str
    kind: str
    quantity: str
    unit: str
    bus: int | None
    branch: int | None
    end: int | None
    plant: str | None
    rel: float
    abs: float
    figure: str

    @property
    def electrical(self) -> bool:
        return self.kind in ("pmu", "scada")

    @property
    def k(self) -> float:
        """Divisor from the stated figure to one standard deviation."""
        return 3.0 if self.figure == "max" else 1.0

    def sigma_at(self, value: float) -> float:
        """Standard deviation of the error at ``value``: max(rel*|value|, abs) / k."""
        return max(self.rel * abs(value), self.abs) / self.k


@dataclass(frozen=True)
class Point:
    """One word of a frame: a channel's value (``channel`` index) or a free status point."""

    name: str
    type: str
    channel: int | None
    scale: float = 1.0  # engineering value = wire value * scale


@dataclass(frozen=True)
class C37Phasor:
    """One C37.118 phasor made of a magnitude and an angle channel.

    On the wire a phasor is per phase, RMS, in volts or amperes (IEEE C37.118.1 sec. 4.2):
    ``wire = channel * wire_factor`` with 1000/sqrt(3) for a voltage (our ``vm`` channels
    are line-to-line kV) and 1000 for a current (kA).
    """

    name: str
    mag: int  # channel index of the magnitude
    ang: int  # channel index of the angle
    kind: str  # "v" or "i"

    @property
    def wire_factor(self) -> float:
        return 1000.0 / math.sqrt(3.0) if self.kind == "v" else 1000.0


@dataclass(frozen=True)
class C37Pmu:
    station: str
    idcode: int
    phasors: tuple[C37Phasor, ...]


@dataclass(frozen=True)
class Stream:
    name: str
    url: str
    format: str
    header: bool
    rate_hz: float
    allow: tuple[str, ...]
    points: tuple[Point, ...]
    enabled: bool = True
    idcode: int = 0
    pmus: tuple[C37Pmu, ...] = ()

    @property
    def scheme(self) -> str:
        return url_parts(self.url)[0]

    @property
    def host(self) -> str:
        return url_parts(self.url)[1]

    @property
    def port(self) -> int:
        return url_parts(self.url)[2]

    @property
    def channels(self) -> tuple[int, ...]:
        """Channel indices this stream carries, in point order."""
        if self.format == "c37.118":
            return tuple(i for pmu in self.pmus for ph in pmu.phasors for i in (ph.mag, ph.ang))
        return tuple(p.channel for p in self.points if p.channel is not None)


def url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a stream URL; host defaults to 127.0.0.1 and port to 0.
    A port that is not a number raises ValueError."""
    u = urlsplit(url)
    return u.scheme, u.hostname or "127.0.0.1", u.port or 0


#: the command point carrying the sequence number a decision reacts to
COMMAND_SEQ = "cmd_seq"
#: command point suffixes after a plant name, and what the value is
COMMAND_KINDS = (("_curtail", "curtail"), ("_p_max_mw", "p_max_mw"))


def command_point_plant(name: str) -> tuple[str, str] | None:
    """(plant, kind) a command point names (``<plant>_curtail``: cap as a fraction of
    rating, ``<plant>_p_max_mw``: cap in MW), else None. Both ends of ``[commands]`` (the
    gateway's sender, the emulator's closed loop) read point names through this."""
    for suffix, kind in COMMAND_KINDS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None


@dataclass(frozen=True)
class CommandsConfig:
    """Commands back to the simulator: off unless enabled.

    The policy (:mod:`gateway.commands`) is IEEE 1547-2018 volt-watt: no cap at or below
    ``v1_pu``, falling linearly to ``p2`` x rating at ``v2_pu``; Table 10's defaults.
    """

    enabled: bool = False
    url: str = ""
    points: tuple[Point, ...] = ()
    policy: str = "volt-watt"
    v1_pu: float = 1.06
    v2_pu: float = 1.10
    p2: float = 0.2  # cap at and above v2_pu, fraction of rating
    min_interval_s: float = 1.0  # at most one command per interval
    deadband: float = 0.01  # send when a cap moves by more (fraction of rating)
    refresh_s: float = 10.0  # re-send the current caps at least this often
    plants: tuple[str, ...] = ()  # plants the policy controls; (): every plant a point names


@dataclass(frozen=True)
class EstimatorConfig:
    deadline_s: float
    tolerance: float = 1e-7
    max_iterations: int = 20
    method: str = "linear"


@dataclass(frozen=True)
class QualityConfig:
    enabled: bool = True
    threshold: float | None = None  # None: the model card's threshold
    window: int = 10
    models: str = "bundled"
    #: run the measurement predictor in its own process (python -m models.serve)
    predictor_process: bool = True


@dataclass(frozen=True)
class AlignConfig:
    """openPDC-style alignment: wait for all streams or ``lag_s`` after the first."""

    lag_s: float = 0.01


@dataclass
class TwinConfig:
    name: str
    source: str
    network: Network
    plants: list[Plant]
    meters: list[Meter]
    channels: list[Channel]
    streams: list[Stream]
    commands: CommandsConfig
    estimator: EstimatorConfig
    quality: QualityConfig
    align: AlignConfig
    historian_url: str
    metrics_bind: str
    digest: str
    text: str
    channel_index: dict[str, int] = field(default_factory=dict)

    @property
    def enabled_streams(self) -> list[Stream]:
        return [s for s in self.streams if s.enabled]

    @property
    def rate_hz(self) -> float:
        return max((s.rate_hz for s in self.enabled_streams), default=50.0)

    def stream(self, name: str) -> Stream:
        for s in self.streams:
            if s.name == name:
                return s
        raise ConfigError([ConfigProblem(
            "streams", f"no stream named {name!r}",
            f"use one of {', '.join(s.name for s in self.streams)}")])

    def channels_of(self, kind: str) -> list[Channel]:
        return [c for c in self.channels if c.kind == kind]

    def plant(self, name: str) -> Plant:
        for p in self.plants:
            if p.name == name:
                return p
        raise ConfigError([ConfigProblem("plants", f"no plant named {name!r}", "")])


# --------------------------------------------------------------------------- loading


def bundled_configs() -> list[str]:
    root = resources.files("gateway") / BUNDLED_DIR
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def resolve(name_or_path: str | Path) -> tuple[str, Path | None]:
    """The TOML text and its directory for a bundled name or a file path."""
    s = str(name_or_path)
    p = Path(s)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError([ConfigProblem("", f"config file {s} not found",
                                             "pass a .toml path or a bundled name: "
                                             + ", ".join(bundled_configs()))])
        return p.read_text(encoding="utf-8"), p.resolve().parent
    res = resources.files("gateway") / BUNDLED_DIR / f"{s}.toml"
    if not res.is_file():
        raise ConfigError([ConfigProblem("", f"no bundled config {s!r} and no such file",
                                         "use one of: " + ", ".join(bundled_configs()))])
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
        raise ConfigError([ConfigProblem("", f"{source} is not valid TOML: {exc}",
                                         "fix the syntax at the line shown")]) from None
    v = _Validator(raw, source, base_dir)
    cfg = v.build(text)
    if v.problems:
        raise ConfigError(v.problems)
    assert cfg is not None
    return cfg


# --------------------------------------------------------------------------- validation

_ACC_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|[A-Za-z/0-9]*)\s*$")


class _Validator:
    """Builds a TwinConfig from parsed TOML, recording every problem with its key."""

    def __init__(self, raw: dict[str, Any], source: str, base_dir: Path | None) -> None:
        self.raw = raw
        self.source = source
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        self._case_ids: set[int] = set()
        self._meter_tables: dict[str, tuple[int, dict[str, Any]]] = {}

    def err(self, key: str, message: str, fix: str = "") -> None:
        self.problems.append(ConfigProblem(key, message, fix))

    # -- small typed getters ---------------------------------------------------------
    def get(self, table: dict[str, Any], key: str, path: str, typ: type | tuple[type, ...],
            default: Any = ..., fix: str = "") -> Any:
        if key not in table:
            if default is ...:
                self.err(f"{path}.{key}".lstrip("."), "is required", fix or f"add {key} = ...")
                return None
            return default
        val = table[key]
        ok = isinstance(val, typ) and not (isinstance(val, bool) and bool not in _tuple(typ))
        if not ok:
            names = "/".join(t.__name__ for t in _tuple(typ))
            self.err(f"{path}.{key}".lstrip("."), f"must be {names}, got {val!r}",
                     fix or f"write {key} as a {names}")
            return None if default is ... else default
        return val

    def unknown_keys(self, table: dict[str, Any], path: str, known: set[str]) -> None:
        for k in table:
            if k not in known:
                self.err(f"{path}.{k}".lstrip("."), "unknown key",
                         f"remove it or use one of: {', '.join(sorted(known))}")

    # -- sections ---------------------------------------------------------------------
    def build(self, text: str) -> TwinConfig | None:
        raw = self.raw
        self.unknown_keys(raw, "", {"twin", "network", "plants", "meters", "streams",
                                    "commands", "estimator", "quality", "align",
                                    "historian", "metrics", "forecast"})
        from gateway.forecast import parse_settings  # the [forecast] schema lives there

        self.problems.extend(parse_settings(raw.get("forecast", {}))[1])
        twin = self.table(raw, "twin")
        name = self.get(twin, "name", "twin", str, default="twin")
        net = self.network(self.table(raw, "network"))
        plants: list[Plant] = []
        if net is not None:
            net, plants = self.plants(net, raw.get("plants", []))
        meters = self.meters(net, plants, raw.get("meters", []))
        channels = self.channels(meters)
        index = {c.name: c.index for c in channels}
        streams = self.streams(raw.get("streams", []), channels, index)
        commands = self.commands(self.table(raw, "commands"), plants)
        rate = max((s.rate_hz for s in streams if s.enabled), default=50.0)
        estimator = self.estimator(self.table(raw, "estimator"), rate)
        quality = self.quality(self.table(raw, "quality"))
        align = self.align(self.table(raw, "align"), rate)
        hist = self.table(raw, "historian")
        self.unknown_keys(hist, "historian", {"url"})
        historian_url = self.get(hist, "url", "historian", str, default="sqlite:///twin.db")
        if historian_url and not historian_url.startswith(("sqlite://", "mysql://")):
            self.err("historian.url", f"unsupported database URL {historian_url!r}",
                     "use sqlite:///path/to/twin.db or mysql://user:pw@host:3306/db")
        met = self.table(raw, "metrics")
        self.unknown_keys(met, "metrics", {"bind"})
        bind = self.get(met, "bind", "metrics", str, default="127.0.0.1:9108")
        if bind:
            self.check_bind(bind, "metrics.bind")
        if net is None or self.problems:
            return None
        canonical = json.dumps(raw, sort_keys=True, default=str).encode()
        return TwinConfig(
            name=name, source=self.source, network=net, plants=plants, meters=meters,
            channels=channels, streams=streams, commands=commands, estimator=estimator,
            quality=quality, align=align, historian_url=historian_url, metrics_bind=bind,
            digest=hashlib.sha256(canonical).hexdigest(), text=text, channel_index=index,
        )

    def table(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        val = raw.get(key, {})
        if not isinstance(val, dict):
            self.err(key, f"must be a table [{key}], got {type(val).__name__}",
                     f"write it as a [{key}] section")
            return {}
        return val

    def array(self, val: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(val, list) or not all(isinstance(x, dict) for x in val):
            self.err(key, "must be an array of tables", f"write each entry as [[{key}]]")
            return []
        return val

    def network(self, t: dict[str, Any]) -> Network | None:
        self.unknown_keys(t, "network", {"case", "switches"})
        case = self.get(t, "case", "network", str,
                        fix="case = \"ieee33\" or a path to a MATPOWER .m file")
        if case is None:
            return None
        path = Path(case)
        if not path.is_absolute() and self.base_dir is not None and path.suffix == ".m":
            path = self.base_dir / path
        try:
            net = load_case(str(path) if path.suffix == ".m" else case)
        except NetworkError as exc:
            self.err("network.case", str(exc), "fix the case file or choose a bundled case")
            return None
        self._case_ids = {int(b) for b in net.bus_ids}
        for i, sw in enumerate(self.array(t.get("switches", []), "network.switches")):
            key = f"network.switches[{i}]"
            self.unknown_keys(sw, key, {"branch", "closed"})
            br = self.get(sw, "branch", key, str, fix='branch = "from-to", e.g. "8-21"')
            closed = self.get(sw, "closed", key, bool)
            if br is None or closed is None:
                continue
            idx = self.branch_index(net, br, f"{key}.branch")
            if idx is not None:
                net = net.with_switch(idx, closed)
        return net

    def branch_index(self, net: Network, spec: str, key: str) -> int | None:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", spec)
        if not m:
            self.err(key, f"branch {spec!r} is not 'from-to'", 'write it as "3-4"')
            return None
        try:
            return net.find_branch(int(m[1]), int(m[2]))
        except NetworkError:
            self.err(key, f"no branch {spec} in the network",
                     "use bus ids of an existing branch (see gridtwin config check)")
            return None

    def plants(self, net: Network, val: Any) -> tuple[Network, list[Plant]]:
        out: list[Plant] = []
        ids = set(int(b) for b in net.bus_ids)
        for i, t in enumerate(self.array(val, "plants")):
            key = f"plants[{i}]"
            self.unknown_keys(t, key, {"name", "bus", "node", "rating_mw", "transformer",
                                       "site", "weather", "latitude", "longitude"})
            name = self.get(t, "name", key, str)
            bus = self.get(t, "bus", key, int)
            node = self.get(t, "node", key, int)
            rating = self.get(t, "rating_mw", key, (int, float))
            tr = self.get(t, "transformer", key, dict, default={})
            r = self.get(tr, "r_pu", f"{key}.transformer", (int, float), default=0.0)
            x = self.get(tr, "x_pu", f"{key}.transformer", (int, float))
            site = self.get(t, "site", key, str, default="")
            weather = self.get(t, "weather", key, str, default=None)
            lat = self.get(t, "latitude", key, (int, float), default=None)
            lon = self.get(t, "longitude", key, (int, float), default=None)
            if lat is not None and not -90 <= lat <= 90:
                self.err(f"{key}.latitude", f"must be in [-90, 90] degrees, got {lat}",
                         "give the plant's latitude in degrees north")
            if lon is not None and not -180 <= lon <= 180:
                self.err(f"{key}.longitude", f"must be in [-180, 180] degrees, got {lon}",
                         "give the plant's longitude in degrees east (west is negative)")
            if None in (name, bus, node, rating, x):
                continue
            if rating <= 0:
                self.err(f"{key}.rating_mw", f"must be > 0, got {rating}", "give MW")
                continue
            if bus not in ids:
                self.err(f"{key}.bus", f"bus {bus} is not in the network",
                         f"use one of the case's bus ids ({min(ids)}..{max(ids)})")
                continue
            if node in ids:
                self.err(f"{key}.node", f"node {node} already exists in the network",
                         "give the plant a new, unused bus id")
                continue
            if math.hypot(r, x) == 0:
                self.err(f"{key}.transformer", "zero impedance",
                         "give the transformer's r_pu and x_pu on the system base")
                continue
            base_kv = float(net.base_kv[net.index_of(bus)])
            net = net.with_bus(node, base_kv).with_branch(bus, node, float(r), float(x))
            ids.add(node)
            out.append(Plant(name, bus, node, float(rating), float(r), float(x), site, weather,
                             None if lat is None else float(lat),
                             None if lon is None else float(lon)))
        names = [p.name for p in out]
        for n in set(names):
            if names.count(n) > 1:
                self.err("plants", f"plant name {n!r} used twice", "give each plant its own name")
        return net, out

    def meters(self, net: Network | None, plants: list[Plant], val: Any) -> list[Meter]:
        out: list[Meter] = []
        plant_names = {p.name for p in plants}
        for i, t in enumerate(self.array(val, "meters")):
            key = f"meters[{i}]"
            self.unknown_keys(t, key, {"id", "kind", "bus", "buses", "branch", "branches",
                                       "end", "quantities", "currents", "accuracy",
                                       "figure", "floor", "plant"})
            mid = self.get(t, "id", key, str)
            kind = self.get(t, "kind", key, str)
            qs = self.get(t, "quantities", key, list)
            if mid is None or kind is None or qs is None:
                continue
            key = f"meters[{i}] ({mid})"
            if kind not in METER_KINDS:
                self.err(f"{key}.kind", f"unknown meter kind {kind!r}",
                         f"use one of {', '.join(METER_KINDS)}")
                continue
            bad_q = [q for q in qs if q not in ALLOWED[kind]]
            if bad_q:
                self.err(f"{key}.quantities", f"{bad_q} not measured by a {kind} meter",
                         f"use some of {', '.join(ALLOWED[kind])}")
                continue
            if kind in ("weather", "pv"):
                plant = self.get(t, "plant", key, str, default=None)
                if plant is not None and plant not in plant_names:
                    self.err(f"{key}.plant", f"no plant named {plant!r}",
                             f"use one of {', '.join(sorted(plant_names)) or '(no plants)'}")
                out.append(Meter(mid, kind, tuple(qs), plant=plant))
                continue
            if net is None:
                continue
            out.extend(self.electrical_meter(net, t, key, mid, kind, qs))
        ids = [m.id for m in out]
        seen: set[str] = set()
        for m_id in ids:
            if m_id in seen:
                self.err("meters", f"meter id {m_id!r} used twice", "give each meter its own id")
            seen.add(m_id)
        # accuracy is per channel; remember the raw tables by meter id prefix
        for i, t in enumerate(self.array(val, "meters")):
            if isinstance(t.get("id"), str):
                self._meter_tables[t["id"]] = (i, t)
        return out

    def electrical_meter(self, net: Network, t: dict[str, Any], key: str, mid: str,
                         kind: str, qs: list[str]) -> list[Meter]:
        bus_q = tuple(q for q in qs if q in BUS_QUANTITIES)
        br_q = tuple(q for q in qs if q in BRANCH_QUANTITIES)
        ids = set(int(b) for b in net.bus_ids)
        out: list[Meter] = []
        buses: list[int] = []
        if "bus" in t:
            b = self.get(t, "bus", key, int)
            if b is not None:
                buses = [b]
        elif "buses" in t:
            buses = self.get(t, "buses", key, list, default=[])
        for b in buses:
            if not isinstance(b, int) or b not in ids:
                self.err(f"{key}.bus", f"bus {b!r} is not in the network",
                         f"use a bus id of the case ({min(ids)}..{max(ids)})")
                return []
        branches: list[tuple[int, int]] = []  # (branch index, end bus id)
        if "branch" in t or "branches" in t:
            specs = t.get("branches", t.get("branch"))
            specs = [specs] if isinstance(specs, str) else specs
            if specs == ["all"] or specs == "all":
                br = net.branches
                feeder = self._feeder_ids
                specs = [br.names[k] for k in range(net.n_branch)
                         if br.in_service[k] and int(net.bus_ids[br.from_idx[k]]) in feeder
                         and int(net.bus_ids[br.to_idx[k]]) in feeder]
            if not isinstance(specs, list):
                self.err(f"{key}.branches", "must be a list of 'from-to' strings or \"all\"",
                         'branches = ["1-2", "2-3"]')
                return []
            end_spec = t.get("end", "from")
            for s in specs:
                idx = self.branch_index(net, str(s), f"{key}.branches")
                if idx is None:
                    return []
                f_id = int(net.bus_ids[net.branches.from_idx[idx]])
                t_id = int(net.bus_ids[net.branches.to_idx[idx]])
                if end_spec == "from":
                    end = f_id
                elif end_spec == "to":
                    end = t_id
                elif isinstance(end_spec, int) and end_spec in (f_id, t_id):
                    end = end_spec
                else:
                    self.err(f"{key}.end", f"end {end_spec!r} is not an end of branch {s}",
                             f'use "from", "to", {f_id} or {t_id}')
                    return []
                if not net.branches.in_service[idx]:
                    self.err(f"{key}.branches", f"branch {s} is open (out of service)",
                             "meter an in-service branch or close it in network.switches")
                    return []
                branches.append((idx, end))
        currents = t.get("currents")
        if currents is not None:
            if len(buses) != 1:
                self.err(f"{key}.currents", "currents needs exactly one bus", "add bus = N")
                return []
            b_idx = net.index_of(buses[0])
            br = net.branches
            for k in range(net.n_branch):
                if not br.in_service[k] or b_idx not in (br.from_idx[k], br.to_idx[k]):
                    continue
                other = br.to_idx[k] if br.from_idx[k] == b_idx else br.from_idx[k]
                if currents == "feeder" and int(net.bus_ids[other]) not in self._feeder_ids:
                    continue
                branches.append((k, buses[0]))
            if not br_q:
                br_q = ("im", "ia")
        if bus_q and not buses:
            self.err(key, f"{list(bus_q)} need a bus", "add bus = N or buses = [...]")
            return []
        if br_q and not branches:
            self.err(key, f"{list(br_q)} need a branch",
                     'add branches = ["f-t", ...] (or currents = "feeder" for a PMU)')
            return []
        multi_bus = len(buses) > 1 or (bus_q and branches)
        for b in buses:
            if bus_q:
                m_id = f"{mid}.{b}" if len(buses) > 1 else mid
                out.append(Meter(m_id, kind, bus_q, bus=b))
        if not bus_q and len(buses) == 1 and not branches:
            self.err(key, "a bus meter without bus quantities", "add vm/va/pinj/qinj")
        for idx, end in branches:
            name = net.branches.names[idx]
            m_id = f"{mid}.{name}" if (len(branches) > 1 or multi_bus) else mid
            out.append(Meter(m_id, kind, br_q, branch=idx, end=end))
        return out

    @property
    def _feeder_ids(self) -> set[int]:
        """Bus ids of the case itself (plant nodes excluded)."""
        return self._case_ids

    def channels(self, meters: list[Meter]) -> list[Channel]:
        out: list[Channel] = []
        for m in meters:
            root = m.id.split(".")[0]
            i, t = self._meter_tables.get(root, (0, {}))
            key = f"meters[{i}] ({root})"
            acc = t.get("accuracy", {})
            floor = t.get("floor", {})
            figure = t.get("figure", "max")
            if figure not in ("max", "std"):
                self.err(f"{key}.figure", f"must be 'max' or 'std', got {figure!r}",
                         'figure = "max" (maximum error) or "std" (one sigma)')
                figure = "max"
            if not isinstance(acc, dict) or not isinstance(floor, dict):
                self.err(f"{key}.accuracy", "must be a table like {vm = \"0.05%\"}", "")
                continue
            for q in m.quantities:
                if q not in acc:
                    self.err(f"{key}.accuracy.{q}", f"no accuracy for {q}",
                             f'add {q} = "1%" (of reading) or an absolute figure in '
                             f"{ALLOWED[m.kind][q]}")
                    continue
                rel, absval = self.accuracy(acc[q], q, ALLOWED[m.kind][q],
                                            f"{key}.accuracy.{q}")
                fl = floor.get(q, 0.0)
                if not isinstance(fl, (int, float)) or fl < 0:
                    self.err(f"{key}.floor.{q}", f"must be a number >= 0, got {fl!r}",
                             f"give the smallest error in {ALLOWED[m.kind][q]}")
                    fl = 0.0
                out.append(Channel(
                    index=len(out), name=f"{m.id}.{q}", meter=m.id, kind=m.kind, quantity=q,
                    unit=ALLOWED[m.kind][q], bus=m.bus, branch=m.branch, end=m.end,
                    plant=m.plant, rel=rel, abs=max(absval, float(fl)), figure=figure,
                ))
        return out

    def accuracy(self, spec: Any, q: str, unit: str, key: str) -> tuple[float, float]:
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if spec <= 0:
                self.err(key, f"must be > 0, got {spec}", "give the stated accuracy")
            return 0.0, float(spec)
        m = _ACC_RE.match(str(spec))
        if not m:
            self.err(key, f"cannot read accuracy {spec!r}",
                     f'write "0.5%" (of reading) or "0.005{unit}" (absolute)')
            return 0.0, 0.0
        val = float(m[1])
        if val <= 0:
            self.err(key, f"must be > 0, got {spec!r}", "give the stated accuracy")
        if m[2] == "%":
            return val / 100.0, 0.0
        if m[2] and m[2] != unit:
            self.err(key, f"unit {m[2]!r} does not match the channel unit {unit!r}",
                     f'write "{m[1]}{unit}" or a percentage')
        return 0.0, val

    def streams(self, val: Any, channels: list[Channel], index: dict[str, int]
                ) -> list[Stream]:
        out: list[Stream] = []
        names = [c.name for c in channels]
        carried: dict[int, str] = {}
        for i, t in enumerate(self.array(val, "streams")):
            key = f"streams[{i}]"
            self.unknown_keys(t, key, {"name", "url", "format", "header", "rate_hz", "allow",
                                       "points", "enabled", "idcode"})
            name = self.get(t, "name", key, str)
            url = self.get(t, "url", key, str, fix='url = "udp://127.0.0.1:7100"')
            fmt = self.get(t, "format", key, str)
            if None in (name, url, fmt):
                continue
            key = f"streams[{i}] ({name})"
            header = self.get(t, "header", key, bool, default=False)
            rate = self.get(t, "rate_hz", key, (int, float), default=50.0)
            allow = self.get(t, "allow", key, list, default=["127.0.0.1"])
            enabled = self.get(t, "enabled", key, bool, default=True)
            idcode = self.get(t, "idcode", key, int, default=1)
            if fmt not in STREAM_FORMATS:
                self.err(f"{key}.format", f"unknown format {fmt!r}",
                         f"use one of {', '.join(STREAM_FORMATS)}")
                continue
            self.check_url(url, f"{key}.url")
            if not 0 < float(rate) <= MAX_RATE_HZ:
                self.err(f"{key}.rate_hz", f"must be in (0, {MAX_RATE_HZ:g}] Hz, got {rate}",
                         "GTNET-SKT and GTNET-PMU send at most 1 kHz")
            for a in allow:
                try:
                    ipaddress.ip_network(str(a), strict=False)
                except ValueError:
                    self.err(f"{key}.allow", f"{a!r} is not an IP address or network",
                             'write allow = ["192.168.1.10"] (the GTNET card address)')
            pts = self.points(t.get("points", []), f"{key}.points", names, index)
            if fmt == "gtnet-skt" and len(pts) > MAX_SKT_POINTS:
                self.err(f"{key}.points", f"{len(pts)} points, a GTNET-SKT frame holds at most "
                         f"{MAX_SKT_POINTS}", "split the points over two streams")
            if not pts:
                self.err(f"{key}.points", "no points", 'list the channels, e.g. ["pmu1.*"]')
            pmus: tuple[C37Pmu, ...] = ()
            if fmt == "c37.118":
                pmus = self.c37_layout(pts, channels, f"{key}.points", idcode)
            s = Stream(name, url, fmt, bool(header), float(rate),
                       tuple(str(a) for a in allow), tuple(pts), bool(enabled), int(idcode),
                       pmus)
            if s.enabled:
                for ch in s.channels:
                    if ch in carried:
                        self.err(f"{key}.points", f"channel {names[ch]} is also carried by "
                                 f"stream {carried[ch]}", "carry each channel in one enabled "
                                 "stream (set enabled = false on the other)")
                    carried[ch] = name
            out.append(s)
        s_names = [s.name for s in out]
        for n in set(s_names):
            if s_names.count(n) > 1:
                self.err("streams", f"stream name {n!r} used twice", "name each stream once")
        ports = [(s.scheme, s.port) for s in out if s.enabled and s.port]
        for p in set(ports):
            if ports.count(p) > 1:
                self.err("streams", f"two enabled streams listen on {p[0]} port {p[1]}",
                         "give each stream its own port")
        return out

    def points(self, val: Any, key: str, names: list[str], index: dict[str, int]
               ) -> list[Point]:
        if not isinstance(val, list):
            self.err(key, "must be a list", 'points = ["pmu1.vm", "status:int32"]')
            return []
        out: list[Point] = []
        for j, p in enumerate(val):
            pkey = f"{key}[{j}]"
            if isinstance(p, str):
                spec, _, typ = p.partition(":")
                scale = 1.0
                typ = typ or "float32"
            elif isinstance(p, dict):
                spec = p.get("name", "")
                typ = p.get("type", "float32")
                scale = p.get("scale", 1.0)
                if not isinstance(scale, (int, float)) or scale == 0:
                    self.err(f"{pkey}.scale", f"must be a non-zero number, got {scale!r}", "")
                    scale = 1.0
            else:
                self.err(pkey, f"must be a string or a table, got {p!r}", "")
                continue
            if typ not in POINT_TYPES:
                self.err(pkey, f"point type {typ!r} unknown", "use int32 or float32")
                continue
            if any(ch in spec for ch in "*?["):
                matched = [n for n in names if fnmatch.fnmatchcase(n, spec)]
                if not matched:
                    self.err(pkey, f"pattern {spec!r} matches no channel",
                             "check the meter ids (gridtwin config check lists channels)")
                out.extend(Point(n, typ, index[n], float(scale)) for n in matched)
            elif spec in index:
                out.append(Point(spec, typ, index[spec], float(scale)))
            elif "." in spec:
                self.err(pkey, f"no channel named {spec!r}",
                         "use meter.quantity of a configured meter, or a name without '.' "
                         "for a status point")
            elif spec:
                out.append(Point(spec, typ, None, float(scale)))
            else:
                self.err(pkey, "empty point name", "")
        return out

    def c37_layout(self, pts: list[Point], channels: list[Channel], key: str, idcode: int
                   ) -> tuple[C37Pmu, ...]:
        """Group channels into PMUs (by device id) and phasors (magnitude+angle pairs)."""
        by_dev: dict[str, list[C37Phasor]] = {}
        chans = [channels[p.channel] for p in pts if p.channel is not None]
        lookup = {c.name: c for c in chans}
        for c in chans:
            if c.quantity in ("vm", "im"):
                ang = c.name[:-2] + ("va" if c.quantity == "vm" else "ia")
                if ang not in lookup:
                    self.err(key, f"{c.name} has no angle channel {ang} in the stream",
                             "a C37.118 phasor needs magnitude and angle")
                    continue
                label = c.meter.split(".", 1)[1] if "." in c.meter else "V"
                by_dev.setdefault(c.meter.split(".")[0], []).append(C37Phasor(
                    ("I " + label) if c.quantity == "im" else "V", c.index,
                    lookup[ang].index, "i" if c.quantity == "im" else "v"))
            elif c.quantity not in ("va", "ia"):
                self.err(key, f"{c.name}: a C37.118 stream carries phasors only",
                         "move non-phasor channels to a gtnet-skt stream")
        return tuple(C37Pmu(dev.upper()[:16], idcode + k, tuple(phs))
                     for k, (dev, phs) in enumerate(by_dev.items()))

    def check_url(self, url: str, key: str) -> None:
        u = urlsplit(url)
        if u.scheme not in TRANSPORT_SCHEMES:
            self.err(key, f"unsupported transport {u.scheme!r} in {url!r}",
                     "use udp://HOST:PORT, tcp://HOST:PORT or file://PATH")
            return
        if u.scheme == "file":
            return
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None:
            self.err(key, f"{url!r} needs a host and a port", "write udp://127.0.0.1:7100")

    def check_bind(self, bind: str, key: str) -> None:
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.err(key, f"{bind!r} is not HOST:PORT", 'bind = "127.0.0.1:9108"')

    def commands(self, t: dict[str, Any], plants: list[Plant]) -> CommandsConfig:
        d = CommandsConfig()
        self.unknown_keys(t, "commands", {"enabled", "url", "points", "policy", "v1_pu",
                                          "v2_pu", "p2", "min_interval_s", "deadband",
                                          "refresh_s", "plants"})
        enabled = self.get(t, "enabled", "commands", bool, default=False)
        url = self.get(t, "url", "commands", str, default="")
        if enabled and not url:
            self.err("commands.url", "commands are enabled but have no url",
                     'url = "udp://RTDS_IP:PORT" of the GTNET-SKT receive side')
        if url:
            if urlsplit(url).scheme != "udp":
                self.err("commands.url", f"{url!r}: commands go out as UDP datagrams",
                         'url = "udp://RTDS_IP:PORT" of the GTNET-SKT receive side')
            else:
                self.check_url(url, "commands.url")
        pts = self.points(t.get("points", []), "commands.points", [], {})
        named = self.command_points(pts, plants, bool(enabled))
        policy = self.get(t, "policy", "commands", str, default=d.policy)
        if policy not in (None, "volt-watt"):
            self.err("commands.policy", f"unknown policy {policy!r}",
                     'policy = "volt-watt" (IEEE 1547-2018), the only one')
        num = (int, float)
        v1 = self.get(t, "v1_pu", "commands", num, default=d.v1_pu)
        v2 = self.get(t, "v2_pu", "commands", num, default=d.v2_pu)
        p2 = self.get(t, "p2", "commands", num, default=d.p2)
        gap = self.get(t, "min_interval_s", "commands", num, default=d.min_interval_s)
        band = self.get(t, "deadband", "commands", num, default=d.deadband)
        refresh = self.get(t, "refresh_s", "commands", num, default=d.refresh_s)
        if v1 is not None and not 0 < v1 < 2:
            self.err("commands.v1_pu", f"must be a voltage in (0, 2) pu, got {v1}",
                     "e.g. 1.06 (IEEE 1547-2018 default)")
        if v1 is not None and v2 is not None and not v2 > v1:
            self.err("commands.v2_pu", f"must be above v1_pu ({v1}), got {v2}",
                     "e.g. v1_pu = 1.06, v2_pu = 1.10 (IEEE 1547-2018 defaults)")
        if p2 is not None and not 0 <= p2 <= 1:
            self.err("commands.p2", f"must be a fraction of rating in [0, 1], got {p2}",
                     "e.g. 0.2 (IEEE 1547-2018 default; 0 for storage that can absorb)")
        if gap is not None and not gap > 0:
            self.err("commands.min_interval_s", f"must be > 0 s, got {gap}", "e.g. 1.0")
        if band is not None and not 0 <= band < 1:
            self.err("commands.deadband", f"must be in [0, 1) of rating, got {band}",
                     "e.g. 0.01")
        if refresh is not None and gap is not None and not refresh >= gap:
            self.err("commands.refresh_s", f"must be >= min_interval_s ({gap}), got "
                     f"{refresh}", "e.g. 10.0")
        ctl = self.get(t, "plants", "commands", list, default=[])
        for n in ctl:
            if n not in named:
                self.err("commands.plants", f"{n!r} has no command point",
                         f"add \"{n}_curtail\" to commands.points or use one of "
                         f"{', '.join(sorted(named)) or '(no plant points)'}")
        return CommandsConfig(bool(enabled), url, tuple(pts), policy or d.policy,
                              float(v1 or d.v1_pu), float(v2 or d.v2_pu),
                              float(d.p2 if p2 is None else p2), float(gap or d.min_interval_s),
                              float(d.deadband if band is None else band),
                              float(refresh or d.refresh_s), tuple(str(n) for n in ctl))

    def command_points(self, pts: list[Point], plants: list[Plant], enabled: bool
                       ) -> set[str]:
        """Check the command point names and types; the plants they name."""
        names = [p.name for p in plants]
        hint = f"cmd_seq:int32, <plant>_curtail or <plant>_p_max_mw with a plant of " \
               f"{', '.join(names) or '(no plants)'}"
        named: set[str] = set()
        seen: set[str] = set()
        for j, p in enumerate(pts):
            key = f"commands.points[{j}]"
            if p.name in seen:
                self.err(key, f"point {p.name!r} listed twice", "list each point once")
            seen.add(p.name)
            if p.name == COMMAND_SEQ:
                if p.type != "int32":
                    self.err(key, "cmd_seq carries a sequence number", 'write "cmd_seq:int32"')
                continue
            pp = command_point_plant(p.name)
            plant = pp[0] if pp is not None and pp[0] in names else None
            if plant is None:
                self.err(key, f"unknown command point {p.name!r}", f"use {hint}")
                continue
            if p.type != "float32":
                self.err(key, f"{p.name} is a float32 point (NaN leaves the cap as it is)",
                         f'write "{p.name}" or "{p.name}:float32"')
            named.add(plant)
        if enabled and not named:
            self.err("commands.points", "no point names a plant: nothing to command",
                     f'e.g. points = ["cmd_seq:int32", "{names[0] if names else "pv1"}'
                     '_curtail"]')
        return named

    def estimator(self, t: dict[str, Any], rate: float) -> EstimatorConfig:
        self.unknown_keys(t, "estimator", {"deadline_ms", "tolerance", "max_iterations",
                                           "method"})
        deadline_ms = self.get(t, "deadline_ms", "estimator", (int, float),
                               default=1000.0 / rate)
        tol = self.get(t, "tolerance", "estimator", float, default=1e-7)
        it = self.get(t, "max_iterations", "estimator", int, default=20)
        method = self.get(t, "method", "estimator", str, default="linear")
        if deadline_ms is not None and deadline_ms <= 0:
            self.err("estimator.deadline_ms", f"must be > 0, got {deadline_ms}",
                     "default is the stream period (1000 / rate_hz)")
            deadline_ms = 1000.0 / rate
        if tol is not None and not 0 < tol < 1:
            self.err("estimator.tolerance", f"must be in (0, 1) pu, got {tol}", "e.g. 1e-7")
        if it is not None and it < 1:
            self.err("estimator.max_iterations", f"must be >= 1, got {it}", "e.g. 20")
        return EstimatorConfig(float(deadline_ms or 1000.0 / rate) / 1000.0,
                               float(tol or 1e-7), int(it or 20), method or "linear")

    def quality(self, t: dict[str, Any]) -> QualityConfig:
        self.unknown_keys(t, "quality", {"enabled", "threshold", "window", "models",
                                         "predictor_process"})
        enabled = self.get(t, "enabled", "quality", bool, default=True)
        remote = self.get(t, "predictor_process", "quality", bool, default=True)
        thr = self.get(t, "threshold", "quality", (int, float), default=None)
        window = self.get(t, "window", "quality", int, default=10)
        models = self.get(t, "models", "quality", str, default="bundled")
        if thr is not None and thr <= 0:
            self.err("quality.threshold", f"must be > 0, got {thr}", "omit it for the card's")
        if window is not None and window != 10:
            self.err("quality.window", f"the bundled models use a window of 10, got {window}",
                     "remove quality.window or retrain with gridtwin train --window")
        return QualityConfig(bool(enabled), None if thr is None else float(thr), 10,
                             models or "bundled", bool(remote))

    def align(self, t: dict[str, Any], rate: float) -> AlignConfig:
        self.unknown_keys(t, "align", {"lag_ms"})
        lag = self.get(t, "lag_ms", "align", (int, float), default=min(10.0, 500.0 / rate))
        if lag is not None and lag < 0:
            self.err("align.lag_ms", f"must be >= 0, got {lag}", "e.g. 10")
            lag = 10.0
        return AlignConfig(float(lag if lag is not None else 10.0) / 1000.0)


def _tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)
