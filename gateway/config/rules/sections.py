"""Rules for the sections that refer to the rest: ``[commands]``, ``[estimator]``,
``[quality]``, ``[align]``, ``[historian]`` and ``[metrics]``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.config.keys import known
from gateway.config.problems import InvalidValue, MissingKey, Problems, UnknownReference
from gateway.config.rules.streams import check_bind, check_url, points
from gateway.config.schema import (
    AlignConfig,
    BusConfig,
    CommandsConfig,
    EstimatorConfig,
    Plant,
    Point,
    QualityConfig,
    TopologyConfig,
)
from gateway.config.vocabulary import (
    BUS_ESTIMATE,
    COMMAND_POLICIES,
    COMMAND_SEQ,
    command_point_plant,
)
from gateway.errors import ConfigProblem, HistorianError
from gateway.historian.mysql import parse_mysql_url

_NUM = (int, float)
_CMD_URL_FIX = 'url = "udp://RTDS_IP:PORT" of the GTNET-SKT receive side'


def commands(pr: Problems, t: dict[str, Any], plants: list[Plant]) -> CommandsConfig:
    d = CommandsConfig()
    pr.unknown_keys(t, "commands", known("commands"))
    enabled = pr.get(t, "enabled", "commands", bool, default=False)
    url = pr.get(t, "url", "commands", str, default="")
    if enabled and not url:
        pr.add(MissingKey("commands.url", "commands are enabled but have no url", _CMD_URL_FIX))
    if url and urlsplit(url).scheme != "udp":
        pr.add(InvalidValue("commands.url", f"{url!r}: commands go out as UDP datagrams",
                            _CMD_URL_FIX, value=url))
    elif url:
        check_url(pr, url, "commands.url")
    pts = points(pr, t.get("points", []), "commands.points", [])
    named = command_points(pr, pts, plants, bool(enabled))
    policy = pr.get(t, "policy", "commands", str, default=d.policy)
    if policy not in (None, *COMMAND_POLICIES):
        pr.add(InvalidValue("commands.policy", f"unknown policy {policy!r}",
                            'policy = "volt-watt" (IEEE 1547-2018), the only one', value=policy))
    v = {k: pr.get(t, k, "commands", _NUM, default=getattr(d, k))
         for k in ("v1_pu", "v2_pu", "p2", "min_interval_s", "deadband", "refresh_s")}
    volt_watt_ranges(pr, v)
    ctl = pr.get(t, "plants", "commands", list, default=[])
    for n in ctl:
        if n not in named:
            pr.follow_on(UnknownReference(
                "commands.plants", f"{n!r} has no command point",
                f"add \"{n}_curtail\" to commands.points or use one of "
                f"{', '.join(sorted(named)) or '(no plant points)'}", value=n), f"plant:{n}")
    return CommandsConfig(
        bool(enabled), url, tuple(pts), policy or d.policy,
        float(v["v1_pu"] or d.v1_pu), float(v["v2_pu"] or d.v2_pu),
        float(d.p2 if v["p2"] is None else v["p2"]),
        float(v["min_interval_s"] or d.min_interval_s),
        float(d.deadband if v["deadband"] is None else v["deadband"]),
        float(v["refresh_s"] or d.refresh_s), tuple(str(n) for n in ctl))


def volt_watt_ranges(pr: Problems, v: dict[str, Any]) -> None:
    """The volt-watt curve's numbers: voltages in (0, 2) pu, v2 above v1, p2 a fraction."""
    v1, v2, p2 = v["v1_pu"], v["v2_pu"], v["p2"]
    gap, band, refresh = v["min_interval_s"], v["deadband"], v["refresh_s"]
    checks = [
        ("v1_pu", v1, v1 is not None and not 0 < v1 < 2,
         f"must be a voltage in (0, 2) pu, got {v1}", "e.g. 1.06 (IEEE 1547-2018 default)"),
        ("v2_pu", v2, v1 is not None and v2 is not None and not v2 > v1,
         f"must be above v1_pu ({v1}), got {v2}",
         "e.g. v1_pu = 1.06, v2_pu = 1.10 (IEEE 1547-2018 defaults)"),
        ("p2", p2, p2 is not None and not 0 <= p2 <= 1,
         f"must be a fraction of rating in [0, 1], got {p2}",
         "e.g. 0.2 (IEEE 1547-2018 default; 0 for storage that can absorb)"),
        ("min_interval_s", gap, gap is not None and not gap > 0, f"must be > 0 s, got {gap}",
         "e.g. 1.0"),
        ("deadband", band, band is not None and not 0 <= band < 1,
         f"must be in [0, 1) of rating, got {band}", "e.g. 0.01"),
        ("refresh_s", refresh, refresh is not None and gap is not None and not refresh >= gap,
         f"must be >= min_interval_s ({gap}), got {refresh}", "e.g. 10.0"),
    ]
    for key, value, bad, message, fix in checks:
        if bad:
            pr.add(InvalidValue(f"commands.{key}", message, fix, value=value))


def command_points(pr: Problems, pts: list[Point], plants: list[Plant], enabled: bool
                   ) -> set[str]:
    """Check the command point names and types; the plants they name."""
    names = [p.name for p in plants]
    hint = f"cmd_seq:int32, <plant>_curtail or <plant>_p_max_mw with a plant of " \
           f"{', '.join(names) or '(no plants)'}"
    named: set[str] = set()
    seen: set[str] = set()
    causes: list[ConfigProblem] = []
    for j, p in enumerate(pts):
        key = f"commands.points[{j}]"
        if p.name in seen:
            pr.add(InvalidValue(key, f"point {p.name!r} listed twice", "list each point once",
                                value=p.name))
        seen.add(p.name)
        if p.name == COMMAND_SEQ:
            if p.type != "int32":
                pr.add(InvalidValue(key, "cmd_seq carries a sequence number",
                                    'write "cmd_seq:int32"', value=p.type))
            continue
        pp = command_point_plant(p.name)
        plant = pp[0] if pp is not None and pp[0] in names else None
        if plant is None:
            unknown = pr.follow_on(UnknownReference(key, f"unknown command point {p.name!r}",
                                                    f"use {hint}", value=p.name),
                                   *((f"plant:{pp[0]}",) if pp else ()), "network")
            causes += [unknown.cause or unknown]
            continue
        if p.type != "float32":
            pr.add(InvalidValue(key, f"{p.name} is a float32 point (NaN leaves the cap as it "
                                "is)", f'write "{p.name}" or "{p.name}:float32"', value=p.type))
        named.add(plant)
    if enabled and not named:
        pr.add(MissingKey("commands.points", "no point names a plant: nothing to command",
                          f'e.g. points = ["cmd_seq:int32", "{names[0] if names else "pv1"}'
                          '_curtail"]', cause=causes[0] if causes else pr.root_of("network")))
    return named


def estimator(pr: Problems, t: dict[str, Any], rate: float) -> EstimatorConfig:
    pr.unknown_keys(t, "estimator", known("estimator"))
    deadline_ms = pr.get(t, "deadline_ms", "estimator", _NUM, default=1000.0 / rate)
    tol = pr.get(t, "tolerance", "estimator", float, default=1e-7)
    it = pr.get(t, "max_iterations", "estimator", int, default=20)
    method = pr.get(t, "method", "estimator", str, default="linear")
    if deadline_ms is not None and deadline_ms <= 0:
        pr.add(InvalidValue("estimator.deadline_ms", f"must be > 0, got {deadline_ms}",
                            "default is the stream period (1000 / rate_hz)", value=deadline_ms))
        deadline_ms = 1000.0 / rate
    if tol is not None and not 0 < tol < 1:
        pr.add(InvalidValue("estimator.tolerance", f"must be in (0, 1) pu, got {tol}",
                            "e.g. 1e-7", value=tol))
    if it is not None and it < 1:
        pr.add(InvalidValue("estimator.max_iterations", f"must be >= 1, got {it}", "e.g. 20",
                            value=it))
    return EstimatorConfig(float(deadline_ms or 1000.0 / rate) / 1000.0,
                           float(tol or 1e-7), int(it or 20), method or "linear")


def quality(pr: Problems, t: dict[str, Any]) -> QualityConfig:
    pr.unknown_keys(t, "quality", known("quality"))
    enabled = pr.get(t, "enabled", "quality", bool, default=True)
    remote = pr.get(t, "predictor_process", "quality", bool, default=True)
    thr = pr.get(t, "threshold", "quality", _NUM, default=None)
    window = pr.get(t, "window", "quality", int, default=10)
    models = pr.get(t, "models", "quality", str, default="bundled")
    if thr is not None and thr <= 0:
        pr.add(InvalidValue("quality.threshold", f"must be > 0, got {thr}",
                            "omit it for the card's", value=thr))
    if window is not None and window != 10:
        pr.add(InvalidValue("quality.window", f"the bundled models use a window of 10, got "
                            f"{window}", "remove quality.window or retrain with gridtwin "
                            "train --window", value=window))
    return QualityConfig(bool(enabled), None if thr is None else float(thr), 10,
                         models or "bundled", bool(remote))


def align(pr: Problems, t: dict[str, Any], rate: float) -> AlignConfig:
    pr.unknown_keys(t, "align", known("align"))
    lag = pr.get(t, "lag_ms", "align", _NUM, default=min(10.0, 500.0 / rate))
    if lag is not None and lag < 0:
        pr.add(InvalidValue("align.lag_ms", f"must be >= 0, got {lag}", "e.g. 10", value=lag))
        lag = 10.0
    d = AlignConfig()
    extra: dict[str, float] = {}
    for key, attr, scale, hi in (("reorder_ms", "reorder_s", 1e-3, 60_000.0),
                                 ("max_jump_s", "max_jump_s", 1.0, 86_400.0),
                                 ("max_ahead_s", "max_ahead_s", 1.0, 86_400.0),
                                 ("jitter", "jitter", 1.0, 1.0)):
        v = pr.get(t, key, "align", _NUM, default=getattr(d, attr) / scale)
        if v is not None and not 0.0 < v < hi:
            pr.add(InvalidValue(f"align.{key}", f"must be in (0, {hi:g}), got {v}",
                                f"e.g. {getattr(d, attr) / scale:g}", value=v))
        elif v is not None:
            extra[attr] = float(v) * scale
    return AlignConfig(float(lag if lag is not None else 10.0) / 1000.0, **extra)


def historian(pr: Problems, t: dict[str, Any]) -> str:
    pr.unknown_keys(t, "historian", known("historian"))
    url = pr.get(t, "url", "historian", str, default="sqlite:///twin.db")
    if url is None:
        return "sqlite:///twin.db"
    check_historian_url(pr, url, "historian.url")
    return str(url)


def check_historian_url(pr: Problems, url: str, key: str) -> None:
    """A database URL the historian can open (checked again for a --historian override)."""
    if not url or url == "none":
        return
    if not url.startswith(("sqlite://", "mysql://")):
        pr.add(InvalidValue(key, f"unsupported database URL {url!r}",
                            "use sqlite:///path/to/twin.db or mysql://user:pw@host:3306/db",
                            value=url))
        return
    if url.startswith("mysql://"):
        try:
            parse_mysql_url(url)
        except HistorianError as exc:
            pr.add(InvalidValue(key, str(exc), "mysql://user:pw@host:3306/db[?connect_timeout"
                                "=5]", value=url))


def metrics(pr: Problems, t: dict[str, Any]) -> str:
    pr.unknown_keys(t, "metrics", known("metrics"))
    bind = pr.get(t, "bind", "metrics", str, default="127.0.0.1:9108")
    if bind:
        check_bind(pr, bind, "metrics.bind")
    return "" if bind is None else str(bind)


def bus(pr: Problems, t: dict[str, Any]) -> BusConfig:
    """The [bus] table: off unless ``url`` is set; URLs and files checked here."""
    pr.unknown_keys(t, "bus", known("bus"))
    url = pr.get(t, "url", "bus", str, default="") or ""
    if url:
        u = urlsplit(url)
        try:
            port_ok = u.port is None or 0 < u.port < 65536
        except ValueError:
            port_ok = False
        if u.scheme not in ("nats", "tls") or not u.hostname or not port_ok:
            pr.add(InvalidValue("bus.url", f"{url!r} is not nats://HOST:PORT or tls://HOST:PORT",
                                'url = "nats://127.0.0.1:4222"', value=url))
    estimate = pr.get(t, "estimate", "bus", str, default="local") or "local"
    if estimate not in BUS_ESTIMATE:
        pr.add(InvalidValue("bus.estimate", f"unknown value {estimate!r}",
                            f"use one of {', '.join(BUS_ESTIMATE)}", value=estimate))
    text = {k: pr.get(t, k, "bus", str, default=None) for k in
            ("user", "password", "token", "creds", "nkey", "tls_ca", "tls_cert", "tls_key")}
    buffer = pr.get(t, "buffer", "bus", int, default=50_000)
    replicas = pr.get(t, "replicas", "bus", int, default=1)
    for key, val, lo in (("buffer", buffer, 1), ("replicas", replicas, 1)):
        if val is not None and val < lo:
            pr.add(InvalidValue(f"bus.{key}", f"must be >= {lo}, got {val}", f"{key} = {lo}",
                                value=val))
    return BusConfig(url=url, estimate=estimate, buffer=int(buffer or 50_000),
                     replicas=int(replicas or 1), **text)


def topology(pr: Problems, t: dict[str, Any]) -> TopologyConfig:
    """The [topology] table: the tracker's settings (see :mod:`gateway.topology`)."""
    d = TopologyConfig()
    pr.unknown_keys(t, "topology", known("topology"))
    track = pr.get(t, "track", "topology", bool, default=None)
    ident = pr.get(t, "identify", "topology", bool, default=d.identify)
    probe = pr.get(t, "probe_s", "topology", _NUM, default=d.probe_s)
    confirm = pr.get(t, "confirm", "topology", int, default=d.confirm)
    ratio = pr.get(t, "ratio", "topology", _NUM, default=d.ratio)
    rel = pr.get(t, "pseudo_rel", "topology", _NUM, default=d.pseudo_rel)
    checks = (("probe_s", probe, probe is None or probe >= 0, "probe_s = 60 (0: every estimate)"),
              ("confirm", confirm, confirm is None or confirm >= 1, "confirm = 3"),
              ("ratio", ratio, ratio is None or ratio > 1, "ratio = 1.15 (must exceed 1)"),
              ("pseudo_rel", rel, rel is None or rel > 0, "pseudo_rel = 0.25"))
    for key, val, ok, fix in checks:
        if not ok:
            pr.add(InvalidValue(f"topology.{key}", f"out of range: {val!r}", fix, value=val))
            return d
    return TopologyConfig(track, bool(ident), float(probe if probe is not None else d.probe_s),
                          int(confirm or d.confirm), float(ratio or d.ratio),
                          float(rel or d.pseudo_rel))
