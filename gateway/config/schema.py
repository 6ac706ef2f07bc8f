"""The twin config's schema: what a validated config holds, as frozen dataclasses.

The order of :attr:`TwinConfig.channels` is the measurement-model order: the order of
``Snapshot.values``, of the historian's value blobs and of the estimator's measurement
vector. It is meters in file order, each meter's quantities in the order given.

Nothing here validates: :mod:`gateway.config.rules` checks a parsed TOML document and
:mod:`gateway.config.loader` builds these objects from it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from estimator.network import Network
from gateway.errors import ConfigError, ConfigProblem


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
    read_timeout_s: float = 0.0  # TCP: silent-peer timeout; 0 = a few periods, >= 2 s
    #: C37.118 switch statuses: (station, bit over the station's DIGITAL words, switch)
    digitals: tuple[tuple[str, int, str], ...] = ()

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


@functools.lru_cache(maxsize=1024)
def url_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a stream URL; host defaults to 127.0.0.1 and port to 0.
    A port that is not a number raises ValueError. Cached: senders read a stream's
    ``host`` and ``port`` per frame (the fleet demo's emulators, thousands a second)."""
    u = urlsplit(url)
    return u.scheme, u.hostname or "127.0.0.1", u.port or 0



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
class SwitchSpec:
    """A switch the twin tracks: ``name`` (the status point or digital bit carrying its
    state) on branch index ``branch`` of the network."""

    name: str
    branch: int


@dataclass(frozen=True)
class TopologyConfig:
    """Topology tracking (:mod:`gateway.topology`): on when a switch status is mapped,
    unless ``track`` is false. ``probe_s``: a hypothesis test at least this often (0:
    after every estimate); ``confirm``/``ratio``: the tracker's decision rule;
    ``pseudo_rel``: the identification's load pseudo-measurement sigma.

    Defaults from ``python -m gateway.evaluate_topology --seed 21`` (IEEE33, 59
    reconfigurations): ``ratio`` 1.15 and ``pseudo_rel`` 0.25 identify 96.6 % of the
    withheld/stuck cases with the bundled meters and 100 % with the meter ``gridtwin
    topology check`` recommends (main ran 1.5 and 0.5, tested only when J rose: 88.1 %),
    with 0 false alarms over a
    switching-free day (1440 tests) either way."""

    track: bool | None = None
    identify: bool = True
    probe_s: float = 60.0
    confirm: int = 3
    ratio: float = 1.15
    pseudo_rel: float = 0.25


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
    reorder_s: float = 0.2  # a key further back than this is a restart candidate
    max_jump_s: float = 2.0  # a key further ahead than this is a jump candidate
    max_ahead_s: float = 2.0  # timestamps further ahead of the local clock are refused
    jitter: float = 0.45  # timestamp jitter tolerated, as a fraction of the period


@dataclass(frozen=True)
class BusConfig:
    """Edge publishing on NATS JetStream (off while ``url`` is empty). ``estimate``:
    ``local`` (this gateway's estimator process; states also published) or ``workers``
    (the fleet's workers estimate; their states come back over the bus). Secrets are
    better given as files (``creds``, ``nkey``) or the GRIDTWIN_BUS_PASSWORD environment
    variable than written here."""

    url: str = ""
    estimate: str = "local"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    buffer: int = 50_000  # messages held while the bus is away (oldest dropped beyond)
    replicas: int = 1

    @property
    def enabled(self) -> bool:
        return bool(self.url)


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
    #: doubts that did not stop the config (``gridtwin config check`` prints them)
    warnings: tuple[ConfigProblem, ...] = ()
    bus: BusConfig = field(default_factory=BusConfig)
    #: switches with a status on the wire, or declared in [[network.switches]]
    switches: tuple[SwitchSpec, ...] = ()
    topology: TopologyConfig = field(default_factory=TopologyConfig)

    @property
    def tracks_topology(self) -> bool:
        """Follow switch statuses (and identify the topology) on the live path."""
        if self.topology.track is not None:
            return self.topology.track
        return any(s.digitals for s in self.enabled_streams) or any(
            p.channel is None and p.name in {w.name for w in self.switches}
            for s in self.enabled_streams for p in s.points)

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

