"""The ``[mqtt]`` table and ``[[sensors]]`` array of a twin config (edge sensors over MQTT).

Self-contained: it reads the parsed TOML (a dict) and the names of the config's channels,
and reports problems as :class:`~gateway.errors.ConfigProblem` naming the key, like the
rest of the config. The config loader calls :func:`sensor_problems` during validation;
:func:`sensors_of` builds the typed settings from a loaded config's TOML text.

.. code-block:: toml

    [mqtt]
    url = "mqtt://127.0.0.1:1883/spBv1.0/feeder/#"   # broker and subscription filter
    topics = ["spBv1.0/feeder/#", "senml/#"]        # allowlist (default: the URL's filter)
    username = "twin"                               # optional
    password_env = "GRIDTWIN_MQTT_PASSWORD"          # the password is read from here
    tls = false            # true: TLS (ca_file, cert_file, key_file, tls_insecure)
    qos = 1                # 0 or 1
    max_payload = 65536    # bytes; larger messages are dropped and counted
    publish = ""           # topic prefix for outputs, e.g. "gridtwin/ieee33" ("": none)
    publish_interval_s = 1.0  # at most one set of outputs per interval

    [[sensors]]
    id = "ls7"                         # registry id
    kind = "line_current"              # line_current, transformer_meter, weather_station,
                                       # inverter or other
    device = "feeder/lat/ls7"          # Sparkplug group/node[/device] or SenML base name
    channels = { I = "ls7.im" }        # metric -> channel of a [[meters]] entry
    period_s = 10                      # longest interval between two reports
    stale_s = 30                       # flagged STALE past this age (default 3 periods)
    max_age_s = 120                    # left out past this age (default 10 periods)
    model = "LS-100"                   # optional: what the registry shows
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.errors import ConfigError, ConfigProblem

#: the top-level keys this module reads
SECTIONS = frozenset({"mqtt", "sensors"})
SENSOR_KINDS = ("line_current", "transformer_meter", "weather_station", "inverter", "other")
MQTT_KEYS = {"url", "topics", "username", "password_env", "tls", "ca_file", "cert_file",
             "key_file", "tls_insecure", "qos", "max_payload", "publish", "client_id",
             "keepalive_s", "publish_interval_s"}
SENSOR_KEYS = {"id", "kind", "device", "channels", "period_s", "stale_s", "max_age_s",
               "model", "firmware", "enabled"}
DEFAULT_MAX_PAYLOAD = 65536


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    topic: str  # the subscription filter (from the URL's path)
    topics: tuple[str, ...]  # allowlist of topic filters
    username: str | None = None
    password_env: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    qos: int = 1
    max_payload: int = DEFAULT_MAX_PAYLOAD
    publish: str = ""
    publish_interval_s: float = 1.0
    client_id: str = ""
    keepalive_s: int = 30


@dataclass(frozen=True)
class SensorSpec:
    id: str
    kind: str
    device: str
    channels: dict[str, str]  # metric -> channel name
    period_s: float
    stale_s: float
    max_age_s: float
    model: str | None = None
    firmware: str | None = None


@dataclass(frozen=True)
class SensorsConfig:
    mqtt: MqttSettings | None
    sensors: tuple[SensorSpec, ...] = field(default_factory=tuple)


def parse_mqtt_url(url: str, key: str = "mqtt.url") -> tuple[str, int, str]:
    """``mqtt://HOST:PORT/TOPIC-FILTER`` (or ``mqtts://``) -> (host, port, filter)."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError([ConfigProblem(key, f"{url!r} is not mqtt://HOST:PORT/TOPIC",
                                         'write url = "mqtt://127.0.0.1:1883/spBv1.0/#"')])
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError([ConfigProblem(key, f"bad port in {url!r}", "")]) from None
    # the filter is everything after the authority, verbatim: '#' is MQTT's wildcard
    # here, not a URL fragment
    rest = url.split("://", 1)[1]
    topic = unquote(rest.split("/", 1)[1]) if "/" in rest else ""
    if not topic:
        raise ConfigError([ConfigProblem(key, f"{url!r} has no topic filter",
                                         "end the URL with /TOPIC-FILTER, e.g. /spBv1.0/#")])
    return u.hostname, port, topic


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    f = filt.split("/")
    t = topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def _check_filter(filt: Any, key: str, out: list[ConfigProblem]) -> None:
    if not isinstance(filt, str) or not filt:
        out.append(ConfigProblem(key, f"must be a topic filter string, got {filt!r}", ""))
        return
    parts = filt.split("/")
    if any(("#" in p and (p != "#" or i != len(parts) - 1)) or ("+" in p and p != "+")
           for i, p in enumerate(parts)):
        out.append(ConfigProblem(key, f"{filt!r} is not a valid MQTT topic filter",
                                 "'+' stands for a whole level, '#' only at the end"))


def _mqtt(t: Any, out: list[ConfigProblem]) -> MqttSettings | None:
    if not isinstance(t, dict):
        out.append(ConfigProblem("mqtt", "must be a table [mqtt]", "write a [mqtt] section"))
        return None
    for k in t:
        if k not in MQTT_KEYS:
            out.append(ConfigProblem(f"mqtt.{k}", "unknown key",
                                     f"use one of: {', '.join(sorted(MQTT_KEYS))}"))
    if "password" in t:
        out.append(ConfigProblem("mqtt.password", "passwords are not written in configs",
                                 "set password_env to the name of an environment variable"))
    url = t.get("url")
    if not isinstance(url, str):
        out.append(ConfigProblem("mqtt.url", "is required",
                                 'url = "mqtt://127.0.0.1:1883/spBv1.0/#"'))
        return None
    try:
        host, port, topic = parse_mqtt_url(url)
    except ConfigError as exc:
        out.extend(exc.problems)
        return None
    _check_filter(topic, "mqtt.url", out)
    topics = t.get("topics", [topic])
    if not isinstance(topics, list) or not topics:
        out.append(ConfigProblem("mqtt.topics", "must be a non-empty list of topic filters",
                                 'topics = ["spBv1.0/feeder/#"]'))
        topics = [topic]
    for i, f in enumerate(topics):
        _check_filter(f, f"mqtt.topics[{i}]", out)
    typed: dict[str, Any] = {}
    for k, typ in (("username", str), ("password_env", str), ("tls", bool), ("ca_file", str),
                   ("cert_file", str), ("key_file", str), ("tls_insecure", bool),
                   ("qos", int), ("max_payload", int), ("publish", str),
                   ("client_id", str), ("keepalive_s", int), ("publish_interval_s", float)):
        if k in t:
            v = t[k]
            if typ is float and isinstance(v, int) and not isinstance(v, bool) and v > 0:
                v = float(v)
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                out.append(ConfigProblem(f"mqtt.{k}", f"must be {typ.__name__}, got {v!r}", ""))
            else:
                typed[k] = v
    if typed.get("qos", 1) not in (0, 1):
        out.append(ConfigProblem("mqtt.qos", f"must be 0 or 1, got {typed['qos']}", ""))
    if not 0 < typed.get("max_payload", DEFAULT_MAX_PAYLOAD) <= 256 * 1024 * 1024:
        out.append(ConfigProblem("mqtt.max_payload", "must be in 1..268435456 bytes", ""))
    if url.startswith("mqtts://"):
        typed.setdefault("tls", True)
    return MqttSettings(host, port, topic, tuple(str(x) for x in topics), **typed)


def _number(t: dict[str, Any], k: str, key: str, default: float | None,
            out: list[ConfigProblem]) -> float | None:
    v = t.get(k, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        out.append(ConfigProblem(f"{key}.{k}", f"must be a number > 0 (seconds), got {v!r}",
                                 ""))
        return None
    return float(v)


def _sensor(i: int, t: Any, channels: set[str], carried: set[str],
            out: list[ConfigProblem]) -> SensorSpec | None:
    key = f"sensors[{i}]"
    if not isinstance(t, dict):
        out.append(ConfigProblem(key, "must be a table", "write each sensor as [[sensors]]"))
        return None
    for k in t:
        if k not in SENSOR_KEYS:
            out.append(ConfigProblem(f"{key}.{k}", "unknown key",
                                     f"use one of: {', '.join(sorted(SENSOR_KEYS))}"))
    sid, kind, device = t.get("id"), t.get("kind", "other"), t.get("device")
    if not isinstance(sid, str) or not sid:
        out.append(ConfigProblem(f"{key}.id", "is required (a string)", 'id = "ls7"'))
        return None
    key = f"sensors[{i}] ({sid})"
    if kind not in SENSOR_KINDS:
        out.append(ConfigProblem(f"{key}.kind", f"unknown sensor kind {kind!r}",
                                 f"use one of {', '.join(SENSOR_KINDS)}"))
    if not isinstance(device, str) or not device:
        out.append(ConfigProblem(f"{key}.device", "is required",
                                 'the Sparkplug "group/node[/device]" or SenML base name'))
        return None
    chans = t.get("channels", {})
    if not isinstance(chans, dict):
        out.append(ConfigProblem(f"{key}.channels", "must be a table metric = \"channel\"",
                                 'channels = { I = "ls7.im" }'))
        return None
    for metric, ch in chans.items():
        if ch not in channels:
            out.append(ConfigProblem(f"{key}.channels.{metric}", f"no channel named {ch!r}",
                                     "name a channel of a [[meters]] entry (meter.quantity)"))
        elif ch in carried:
            out.append(ConfigProblem(f"{key}.channels.{metric}",
                                     f"channel {ch} is also carried by a stream",
                                     "a channel comes from one stream or one sensor"))
    period = _number(t, "period_s", key, 60.0, out) or 60.0
    stale = _number(t, "stale_s", key, 3 * period, out) or 3 * period
    hard = _number(t, "max_age_s", key, 10 * period, out) or 10 * period
    if hard < stale:
        out.append(ConfigProblem(f"{key}.max_age_s", f"{hard:g} s is below stale_s "
                                 f"{stale:g} s", "max_age_s >= stale_s"))
    if not t.get("enabled", True):
        return None
    return SensorSpec(sid, str(kind), device, {str(k): str(v) for k, v in chans.items()},
                      period, stale, hard, t.get("model"), t.get("firmware"))


def _parse(raw: dict[str, Any], channels: set[str], carried: set[str]
           ) -> tuple[SensorsConfig, list[ConfigProblem]]:
    out: list[ConfigProblem] = []
    mqtt = _mqtt(raw["mqtt"], out) if "mqtt" in raw else None
    arr = raw.get("sensors", [])
    if not isinstance(arr, list):
        out.append(ConfigProblem("sensors", "must be an array of tables",
                                 "write each sensor as [[sensors]]"))
        arr = []
    specs = [s for i, t in enumerate(arr) if (s := _sensor(i, t, channels, carried, out))]
    seen: dict[str, str] = {}
    for s in specs:
        for ch in s.channels.values():
            if ch in seen:
                out.append(ConfigProblem("sensors", f"channel {ch} is fed by sensors "
                                         f"{seen[ch]} and {s.id}", "one sensor per channel"))
            seen[ch] = s.id
    ids = [s.id for s in specs]
    for d in {x for x in ids if ids.count(x) > 1}:
        out.append(ConfigProblem("sensors", f"sensor id {d!r} used twice", ""))
    if specs and "mqtt" not in raw:
        out.append(ConfigProblem("mqtt", "[[sensors]] need an [mqtt] table",
                                 'add [mqtt] url = "mqtt://127.0.0.1:1883/spBv1.0/#"'))
    return SensorsConfig(mqtt, tuple(specs)), out


def sensor_problems(raw: dict[str, Any], channels: Collection[str],
                    carried: Collection[str] = ()) -> list[ConfigProblem]:
    """Every problem of the ``[mqtt]`` table and the ``[[sensors]]`` array (the config
    loader's validation step); ``carried``: channel names that streams already carry."""
    return _parse(raw, set(channels), set(carried))[1]


def sensors_of(cfg: Any) -> SensorsConfig:
    """The sensors settings of a loaded twin config (from the TOML text it keeps)."""
    raw = tomllib.loads(cfg.text)
    carried = {cfg.channels[i].name for s in cfg.enabled_streams for i in s.channels}
    res, problems = _parse(raw, {c.name for c in cfg.channels}, carried)
    if problems:
        raise ConfigError(problems)
    return res
