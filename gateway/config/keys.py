"""The keys a twin config file may hold, declared once.

The rules use these tables to report unknown keys, and :mod:`gateway.config.jsonschema`
turns them into the JSON Schema editors validate against, so the two cannot drift apart.
A key is described by its JSON type(s), a one-line description and, where the set of
values is closed, the vocabulary it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.vocabulary import (
    ACCURACY_FIGURES,
    ALLOWED,
    BUS_ESTIMATE,
    COMMAND_POLICIES,
    METER_KINDS,
    SENSOR_KINDS,
    STREAM_FORMATS,
)


@dataclass(frozen=True)
class Key:
    """One key: JSON type(s), description, closed set of values, and whether it is required."""

    types: tuple[str, ...]
    doc: str
    enum: tuple[object, ...] = ()
    required: bool = False
    items: str | None = None  # JSON type of array items
    table: str | None = None  # name of the nested table for "object" keys


def _k(types: str, doc: str, **kw: object) -> Key:
    return Key(tuple(types.split("|")), doc, **kw)  # type: ignore[arg-type]


_QUANTITIES = tuple(sorted({q for qs in ALLOWED.values() for q in qs}))

#: table name -> its keys. Arrays of tables are named without brackets.
TABLES: dict[str, dict[str, Key]] = {
    "twin": {"name": _k("string", "name of the twin (labels, historian runs)")},
    "network": {
        "case": _k("string", 'bundled case name ("ieee33") or a MATPOWER .m file, relative to '
                   "the config file", required=True),
        "switches": _k("array", "switch states that differ from the case", table="switch"),
    },
    "switch": {
        "branch": _k("string", 'branch as "from-to" bus ids, e.g. "8-21"', required=True),
        "closed": _k("boolean", "true: in service; false: open (default: the case's state)"),
        "name": _k("string", "switch name: an int32 GTNET-SKT point or a C37.118 digital "
                   "bit of this name carries its status (default sw_<from>_<to>)"),
    },
    "plants": {
        "name": _k("string", "plant name (command points are <name>_curtail)", required=True),
        "bus": _k("integer", "feeder bus the plant connects to", required=True),
        "node": _k("integer", "new bus id of the plant's own node", required=True),
        "rating_mw": _k("number", "rated power in MW", required=True),
        "transformer": _k("object", "interconnection transformer on the system base",
                          required=True, table="transformer"),
        "site": _k("string", "site name (weather data set)"),
        "weather": _k("string", "id of the weather meter at the plant"),
        "latitude": _k("number", "degrees north"),
        "longitude": _k("number", "degrees east (west is negative)"),
    },
    "transformer": {
        "r_pu": _k("number", "resistance in pu on the system base"),
        "x_pu": _k("number", "reactance in pu on the system base", required=True),
    },
    "meters": {
        "id": _k("string", "meter id; channels are <id>.<quantity>", required=True),
        "kind": _k("string", "meter kind", enum=METER_KINDS, required=True),
        "quantities": _k("array", "measured quantities", items="string", enum=_QUANTITIES,
                         required=True),
        "bus": _k("integer", "bus id of a bus meter"),
        "buses": _k("array", "bus ids (one meter per bus)", items="integer"),
        "branch": _k("string", 'one branch "from-to"'),
        "branches": _k("string|array", 'branches "from-to", or "all" feeder branches',
                       items="string"),
        "end": _k("string|integer", 'the metered end: "from", "to" or a bus id'),
        "currents": _k("string", 'PMU current phasors of the branches at the bus ("feeder": '
                       "feeder branches only)"),
        "accuracy": _k("object", 'stated accuracy per quantity: "0.5%" of reading or an '
                       'absolute figure with the unit, e.g. "0.005rad"'),
        "figure": _k("string", "accuracy is a maximum error (3 sigma) or one sigma",
                     enum=ACCURACY_FIGURES),
        "floor": _k("object", "smallest error per quantity, in channel units"),
        "plant": _k("string", "for weather and pv meters: the plant they belong to"),
    },
    "streams": {
        "name": _k("string", "stream name", required=True),
        "url": _k("string", "udp://HOST:PORT, tcp://HOST:PORT or file://PATH", required=True),
        "format": _k("string", "wire format", enum=STREAM_FORMATS, required=True),
        "header": _k("boolean", "GTNET-SKT frames start with VILLASnode's 3-word header"),
        "rate_hz": _k("number", "frame rate in Hz (at most 1000)"),
        "allow": _k("array", "sender addresses or networks accepted", items="string"),
        "points": _k("array", 'point list: channel names or patterns ("pmu*"), status points '
                     '("name:int32") or tables {name, type, scale}', items="string|object"),
        "enabled": _k("boolean", "false: configured but not listened on"),
        "idcode": _k("integer", "C37.118 IDCODE of the first PMU"),
        "read_timeout_s": _k("number", "TCP: a peer silent this long is reconnected (0: five "
                             "frame periods, at least 2 s)"),
        "digitals": _k("object", "C37.118: per PMU station, the switch whose status each bit "
                       "of its DIGITAL words carries (bit 0 of word 0 first; \"\" unused)"),
    },
    "topology": {
        "track": _k("boolean", "follow switch statuses and identify the topology (default: "
                    "true when a switch status is mapped)"),
        "identify": _k("boolean", "test topology hypotheses against the measurements"),
        "probe_s": _k("number", "a hypothesis test at least this often (s; 0: every estimate)"),
        "confirm": _k("integer", "tests in a row a topology must win to be declared"),
        "ratio": _k("number", "summed-J ratio the winner must reach over those tests"),
        "pseudo_rel": _k("number", "load pseudo-measurement sigma, fraction of the nominal load"),
    },
    "commands": {
        "enabled": _k("boolean", "send commands back to the simulator"),
        "url": _k("string", "udp://RTDS_IP:PORT of the GTNET-SKT receive side"),
        "points": _k("array", 'command point list: "cmd_seq:int32", "<plant>_curtail", '
                     '"<plant>_p_max_mw"', items="string|object"),
        "policy": _k("string", "control policy (IEEE 1547-2018 volt-watt)",
                     enum=COMMAND_POLICIES),
        "v1_pu": _k("number", "no cap at or below this voltage (pu)"),
        "v2_pu": _k("number", "cap p2 x rating at and above this voltage (pu)"),
        "p2": _k("number", "cap at and above v2_pu, fraction of rating"),
        "min_interval_s": _k("number", "at most one command per interval (s)"),
        "deadband": _k("number", "send when a cap moves by more (fraction of rating)"),
        "refresh_s": _k("number", "re-send the current caps at least this often (s)"),
        "plants": _k("array", "plants the policy controls (default: every plant a point "
                     "names)", items="string"),
    },
    "estimator": {
        "deadline_ms": _k("number", "deadline per snapshot (default: the stream period)"),
        "tolerance": _k("number", "convergence tolerance (pu)"),
        "max_iterations": _k("integer", "iteration limit"),
        "method": _k("string", "estimation method"),
    },
    "quality": {
        "enabled": _k("boolean", "run the data-quality stage"),
        "threshold": _k("number", "detector threshold (default: the model card's)"),
        "window": _k("integer", "window length of the models (the bundled ones use 10)"),
        "models": _k("string", '"bundled" or a directory of ONNX models'),
        "predictor_process": _k("boolean", "run the measurement predictor in its own process"),
    },
    "align": {
        "lag_ms": _k("number", "wait at most this long after the first stream (ms)"),
        "reorder_ms": _k("number", "a frame further back is a restart candidate (ms)"),
        "max_jump_s": _k("number", "a frame further ahead is a jump candidate (s)"),
        "max_ahead_s": _k("number", "timestamps further ahead of the local clock are "
                          "refused (s)"),
        "jitter": _k("number", "timestamp jitter tolerated, fraction of the period"),
    },
    "historian": {"url": _k("string", "sqlite:///path, mysql://user:pw@host:3306/db or none")},
    "metrics": {"bind": _k("string", 'HOST:PORT of /metrics and /state ("" disables)')},
    "mqtt": {
        "url": _k("string", "mqtt://HOST:PORT/TOPIC-FILTER or mqtts://… of the sensors' broker",
                  required=True),
        "topics": _k("array", "allowlist of topic filters (default: the URL's filter)",
                     items="string"),
        "username": _k("string", "broker user name"),
        "password_env": _k("string", "environment variable holding the broker password"),
        "tls": _k("boolean", "connect with TLS"),
        "ca_file": _k("string", "CA bundle for TLS"),
        "cert_file": _k("string", "client certificate for TLS"),
        "key_file": _k("string", "client key for TLS"),
        "tls_insecure": _k("boolean", "skip the broker certificate's host name check"),
        "qos": _k("integer", "subscription QoS (0 or 1)"),
        "max_payload": _k("integer", "larger payloads are counted and dropped (bytes)"),
        "publish": _k("string", "topic prefix for the twin's outputs (state, flows, …)"),
        "publish_interval_s": _k("number", "at most one output message per interval"),
        "client_id": _k("string", "MQTT client id"),
        "keepalive_s": _k("integer", "MQTT keep-alive"),
    },
    "sensors": {
        "id": _k("string", "sensor id (Sparkplug device or SenML base name)", required=True),
        "kind": _k("string", "sensor kind", enum=SENSOR_KINDS),
        "device": _k("string", "the device it reports as (Sparkplug node/device or SenML)"),
        "channels": _k("object", "metric name -> twin channel it feeds", table="channels_map"),
        "period_s": _k("number", "nominal reporting period"),
        "stale_s": _k("number", "older values are flagged STALE and weighted less"),
        "max_age_s": _k("number", "older values are not used"),
        "model": _k("string", "device model"),
        "firmware": _k("string", "firmware version"),
        "enabled": _k("boolean", "false: configured but not used"),
    },
    "channels_map": {},
    "bus": {
        "url": _k("string", 'nats://HOST:PORT or tls://HOST:PORT of NATS JetStream ("": off)'),
        "estimate": _k("string", "who estimates: this gateway or the fleet's workers",
                       enum=BUS_ESTIMATE),
        "user": _k("string", "bus user name"),
        "password": _k("string", "bus password (better: GRIDTWIN_BUS_PASSWORD)"),
        "token": _k("string", "bus token"),
        "creds": _k("string", "NATS .creds file (JWT and nkey seed)"),
        "nkey": _k("string", "nkey seed file"),
        "tls_ca": _k("string", "CA bundle for TLS"),
        "tls_cert": _k("string", "client certificate for TLS"),
        "tls_key": _k("string", "client key for TLS"),
        "buffer": _k("integer", "messages kept while the bus is away (oldest dropped beyond)"),
        "replicas": _k("integer", "stream replicas when this gateway creates the stream"),
    },
    "forecast": {
        "enabled": _k("boolean", "forecast the feeder ahead (default true)"),
        "every_s": _k("number", "a forecast at most this often (s, default 5)"),
        "horizons_min": _k("array", "horizons in minutes (default [5, 15, 60])",
                           items="number"),
        "limits": _k("object", "voltage limits of the predicted violations (pu)",
                     table="forecast_limits"),
        "method": _k("string", "load forecast", enum=("learned", "seasonal", "persistence")),
        "resolution_s": _k("number", "history bin (s, default 60)"),
        "history_days": _k("number", "history kept (days, default 3; 8 lets a weekly lag in)"),
        "scenarios": _k("integer", "error scenarios per horizon for the band (0: none)"),
        "coverage": _k("number", "central band of the scenarios (default 0.9)"),
        "refit_s": _k("number", "refit the load model this often (s, default 900)"),
        "sample_s": _k("number", "estimates sampled at most this often (s, default 1)"),
    },
    "forecast_limits": {
        "vmin": _k("number", "lower limit (pu, default 0.95)"),
        "vmax": _k("number", "upper limit (pu, default 1.05)"),
    },
}

#: top-level key -> (table name, is an array of tables)
TOP: dict[str, tuple[str, bool]] = {
    "twin": ("twin", False), "network": ("network", False), "plants": ("plants", True),
    "meters": ("meters", True), "streams": ("streams", True), "commands": ("commands", False),
    "estimator": ("estimator", False), "quality": ("quality", False),
    "align": ("align", False), "historian": ("historian", False),
    "metrics": ("metrics", False), "bus": ("bus", False), "mqtt": ("mqtt", False),
    "sensors": ("sensors", True), "forecast": ("forecast", False),
    "topology": ("topology", False),
}


def known(table: str) -> frozenset[str]:
    """The keys of ``table`` (for unknown-key checks)."""
    return frozenset(TABLES[table])
