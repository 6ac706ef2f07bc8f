"""Rules for ``[[streams]]``: transport URL, format, rate, senders, and the point list
(checked with the codec's own word count, so what passes here is what the codec builds)."""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from gateway.config.keys import known
from gateway.config.problems import (
    Duplicate,
    InvalidValue,
    Problems,
    StreamTooLong,
    UnknownReference,
)
from gateway.config.schema import C37Phasor, C37Pmu, Channel, Point, Stream
from gateway.config.vocabulary import (
    MAX_RATE_HZ,
    MAX_SKT_WORDS,
    POINT_TYPES,
    SKT_HEADER_WORDS,
    STREAM_FORMATS,
    TRANSPORT_SCHEMES,
    skt_words,
)


def streams(pr: Problems, val: Any, channels: list[Channel]) -> list[Stream]:
    out: list[Stream] = []
    for i, t in enumerate(pr.array(val, "streams")):
        s = stream(pr, t, f"streams[{i}]", channels)
        if s is not None:
            out.append(s)
    carried_once(pr, out, channels, val)
    names = [s.name for s in out]
    for n in sorted(set(names)):
        if names.count(n) > 1:
            pr.add(Duplicate("streams", f"stream name {n!r} used twice", "name each stream once",
                             value=n))
    ports = [(s.scheme, s.port) for s in out if s.enabled and s.port]
    for p in sorted(set(ports)):
        if ports.count(p) > 1:
            pr.add(Duplicate("streams", f"two enabled streams listen on {p[0]} port {p[1]}",
                             "give each stream its own port", value=p[1]))
    return out


def stream(pr: Problems, t: dict[str, Any], key: str, channels: list[Channel]
           ) -> Stream | None:
    """One ``[[streams]]`` table; None when its name, URL or format cannot be used."""
    pr.unknown_keys(t, key, known("streams"))
    name = pr.get(t, "name", key, str)
    url = pr.get(t, "url", key, str, fix='url = "udp://127.0.0.1:7100"')
    fmt = pr.get(t, "format", key, str)
    if None in (name, url, fmt):
        return None
    key = f"{key} ({name})"
    header = pr.get(t, "header", key, bool, default=False)
    rate = pr.get(t, "rate_hz", key, (int, float), default=50.0)
    allow = pr.get(t, "allow", key, list, default=["127.0.0.1"])
    enabled = pr.get(t, "enabled", key, bool, default=True)
    idcode = pr.get(t, "idcode", key, int, default=1)
    read_timeout = pr.get(t, "read_timeout_s", key, (int, float), default=0.0)
    if read_timeout is not None and read_timeout < 0:
        pr.add(InvalidValue(f"{key}.read_timeout_s", f"must be >= 0 s, got {read_timeout}",
                            "0 picks a few frame periods (at least 2 s)", value=read_timeout))
    if fmt not in STREAM_FORMATS:
        pr.add(InvalidValue(f"{key}.format", f"unknown format {fmt!r}",
                            f"use one of {', '.join(STREAM_FORMATS)}", value=fmt))
        return None
    url_ok = check_url(pr, url, f"{key}.url")
    if not 0 < float(rate) <= MAX_RATE_HZ:
        pr.add(InvalidValue(f"{key}.rate_hz", f"must be in (0, {MAX_RATE_HZ:g}] Hz, got {rate}",
                            "GTNET-SKT and GTNET-PMU send at most 1 kHz", value=rate))
    for a in allow:
        try:
            ipaddress.ip_network(str(a), strict=False)
        except ValueError:
            pr.add(InvalidValue(f"{key}.allow", f"{a!r} is not an IP address or network",
                                'write allow = ["192.168.1.10"] (the GTNET card address)',
                                value=a))
    mark = pr.mark()
    pts = points(pr, t.get("points", []), f"{key}.points", channels)
    if fmt == "gtnet-skt":
        word_budget(pr, len(pts), bool(header), f"{key}.points")
    if not pts:
        # an empty list because its entries failed is a follow-on of their problem
        first = pr.since(mark)
        pr.add(InvalidValue(f"{key}.points", "no points", 'list the channels, e.g. ["pmu1.*"]',
                            cause=(first.cause or first) if first else pr.root_of("network")))
    pmus: tuple[C37Pmu, ...] = ()
    if fmt == "c37.118":
        pmus = c37_layout(pr, pts, channels, f"{key}.points", idcode)
    digs = digitals(pr, t.get("digitals"), f"{key}.digitals", fmt, pmus)
    if not url_ok:
        return None
    return Stream(name, url, fmt, bool(header), float(rate), tuple(str(a) for a in allow),
                  tuple(pts), bool(enabled), int(idcode), pmus,
                  max(0.0, float(read_timeout or 0.0)), digs)


def digitals(pr: Problems, val: Any, key: str, fmt: str, pmus: tuple[C37Pmu, ...]
             ) -> tuple[tuple[str, int, str], ...]:
    """A C37.118 stream's ``digitals = { STATION = ["sw_8_21", "", ...] }``: bit ``k`` of
    the station's DIGITAL words (word ``k // 16``, bit ``k % 16``) carries the named
    switch's status (1 closed); the names are resolved against the switches later."""
    if val is None:
        return ()
    if fmt != "c37.118":
        pr.add(InvalidValue(key, "only a c37.118 stream has DIGITAL words",
                            'map GTNET-SKT statuses with an int32 point named after the '
                            'switch, e.g. "sw_8_21:int32"'))
        return ()
    if not isinstance(val, dict):
        pr.add(InvalidValue(key, "must be a table of station = [switch names]",
                            'digitals = { PMU1 = ["sw_8_21", "sw_7_8"] }', value=val))
        return ()
    stations = {p.station for p in pmus}
    out: list[tuple[str, int, str]] = []
    for station, names in val.items():
        if station not in stations:
            pr.add(UnknownReference(f"{key}.{station}", f"no PMU station {station!r} in "
                                    "this stream", f"use one of {', '.join(sorted(stations))}",
                                    value=station))
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            pr.add(InvalidValue(f"{key}.{station}", "must be a list of switch names ('' for "
                                "an unused bit)", value=names))
            continue
        out.extend((station, k, n) for k, n in enumerate(names) if n)
    return tuple(out)


def word_budget(pr: Problems, n_points: int, header: bool, key: str) -> None:
    """The GTNET-SKT component's limit counts words, header words included."""
    words = skt_words(n_points, header)
    if words > MAX_SKT_WORDS:
        hdr = f" + {SKT_HEADER_WORDS} header words" if header else ""
        pr.add(StreamTooLong(key, f"{n_points} points{hdr} = {words} words, a GTNET-SKT frame "
                             f"holds at most {MAX_SKT_WORDS}", "split the points over two "
                             "streams" + (" or set header = false" if header else ""),
                             value=words))


def carried_once(pr: Problems, out: list[Stream], channels: list[Channel], raw: Any) -> None:
    """Each channel in one enabled stream: one problem per pair of streams, not per channel."""
    carried: dict[int, str] = {}
    index = {t.get("name"): i for i, t in enumerate(raw) if isinstance(t, dict)}
    for s in out:
        if not s.enabled:
            continue
        twice: dict[str, list[str]] = {}
        for ch in s.channels:
            if ch in carried:
                twice.setdefault(carried[ch], []).append(channels[ch].name)
            carried.setdefault(ch, s.name)
        for other, names in twice.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                             else "")
            pr.add(Duplicate(f"streams[{index.get(s.name, 0)}] ({s.name}).points",
                             f"{len(names)} channel(s) ({shown}) are also carried by stream "
                             f"{other}", "carry each channel in one enabled stream (set "
                             "enabled = false on the other)", value=len(names)))


def points(pr: Problems, val: Any, key: str, channels: list[Channel]) -> list[Point]:
    """A point list: channel names, patterns over them, or status points (no ``.``)."""
    if not isinstance(val, list):
        pr.add(InvalidValue(key, "must be a list", 'points = ["pmu1.vm", "status:int32"]',
                            value=val))
        return []
    names = [c.name for c in channels]
    index = {c.name: c.index for c in channels}
    out: list[Point] = []
    for j, p in enumerate(val):
        spec = point_spec(pr, p, f"{key}[{j}]")
        if spec is not None:
            out.extend(resolve_point(pr, *spec, names, index, f"{key}[{j}]"))
    return out


def point_spec(pr: Problems, p: Any, key: str) -> tuple[str, str, float] | None:
    """(name or pattern, type, scale) of one entry, or None when it cannot be read."""
    if isinstance(p, str):
        spec, _, typ = p.partition(":")
        scale: Any = 1.0
        typ = typ or "float32"
    elif isinstance(p, dict):
        spec = p.get("name", "")
        typ = p.get("type", "float32")
        scale = p.get("scale", 1.0)
        if not isinstance(scale, (int, float)) or scale == 0:
            pr.add(InvalidValue(f"{key}.scale", f"must be a non-zero number, got {scale!r}",
                                "", value=scale))
            scale = 1.0
    else:
        pr.add(InvalidValue(key, f"must be a string or a table, got {p!r}", "", value=p))
        return None
    if typ not in POINT_TYPES:
        pr.add(InvalidValue(key, f"point type {typ!r} unknown",
                            f"use {' or '.join(POINT_TYPES)}", value=typ))
        return None
    return str(spec), typ, float(scale)


def resolve_point(pr: Problems, spec: str, typ: str, scale: float, names: list[str],
                  index: dict[str, int], key: str) -> list[Point]:
    if any(ch in spec for ch in "*?["):
        matched = [n for n in names if fnmatch.fnmatchcase(n, spec)]
        if not matched:
            meter = spec.split(".")[0]
            pr.follow_on(UnknownReference(
                key, f"pattern {spec!r} matches no channel",
                "check the meter ids (gridtwin config check lists channels)", value=spec),
                *(() if any(c in meter for c in "*?[") else (f"meter:{meter}",)), "network")
        return [Point(n, typ, index[n], scale) for n in matched]
    if spec in index:
        return [Point(spec, typ, index[spec], scale)]
    if "." in spec:
        pr.follow_on(UnknownReference(
            key, f"no channel named {spec!r}", "use meter.quantity of a configured meter, or "
            "a name without '.' for a status point", value=spec),
            f"meter:{spec.split('.')[0]}", "network")
        return []
    if spec:
        return [Point(spec, typ, None, scale)]
    pr.add(InvalidValue(key, "empty point name", ""))
    return []


def c37_layout(pr: Problems, pts: list[Point], channels: list[Channel], key: str,
               idcode: int) -> tuple[C37Pmu, ...]:
    """Group channels into PMUs (by device id) and phasors (magnitude+angle pairs)."""
    by_dev: dict[str, list[C37Phasor]] = {}
    chans = [channels[p.channel] for p in pts if p.channel is not None]
    lookup = {c.name: c for c in chans}
    for c in chans:
        if c.quantity in ("vm", "im"):
            ang = c.name[:-2] + ("va" if c.quantity == "vm" else "ia")
            if ang not in lookup:
                pr.add(InvalidValue(key, f"{c.name} has no angle channel {ang} in the stream",
                                    "a C37.118 phasor needs magnitude and angle"))
                continue
            label = c.meter.split(".", 1)[1] if "." in c.meter else "V"
            by_dev.setdefault(c.meter.split(".")[0], []).append(C37Phasor(
                ("I " + label) if c.quantity == "im" else "V", c.index,
                lookup[ang].index, "i" if c.quantity == "im" else "v"))
        elif c.quantity not in ("va", "ia"):
            pr.add(InvalidValue(key, f"{c.name}: a C37.118 stream carries phasors only",
                                "move non-phasor channels to a gtnet-skt stream"))
    return tuple(C37Pmu(dev.upper()[:16], idcode + k, tuple(phs))
                 for k, (dev, phs) in enumerate(by_dev.items()))


def check_url(pr: Problems, url: str, key: str) -> bool:
    """A transport URL the gateway can open: scheme, host, and a port in 0..65535."""
    u = urlsplit(url)
    if u.scheme not in TRANSPORT_SCHEMES:
        pr.add(InvalidValue(key, f"unsupported transport {u.scheme!r} in {url!r}",
                            "use udp://HOST:PORT, tcp://HOST:PORT or file://PATH", value=url))
        return False
    if u.scheme == "file":
        return True
    try:
        port = u.port
    except ValueError:
        pr.add(InvalidValue(key, f"{url!r}: port out of range", "give a port in 1..65535, "
                            "e.g. udp://127.0.0.1:7100", value=url))
        return False
    if not u.hostname or port is None:
        pr.add(InvalidValue(key, f"{url!r} needs a host and a port",
                            "write udp://127.0.0.1:7100", value=url))
        return False
    return True


def check_bind(pr: Problems, bind: str, key: str) -> None:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        pr.add(InvalidValue(key, f"{bind!r} is not HOST:PORT", 'bind = "127.0.0.1:9108"',
                            value=bind))


def runnable(streams_: list[Stream]) -> list[InvalidValue]:
    """What stops ``gridtwin run`` although the file is valid: no stream to listen on.
    (A network-only config still loads, for ``estimate`` and the emulator's tools.)"""
    if any(s.enabled for s in streams_):
        return []
    what = "no streams" if not streams_ else f"all {len(streams_)} stream(s) disabled"
    return [InvalidValue("streams", f"{what}: gridtwin run would have nothing to listen on",
                         "add a [[streams]] table or set enabled = true on one")]
