"""The twin config: one TOML file describes a deployment, validated up front.

The package follows power-grid-model's ``validation`` layout:

* :mod:`~gateway.config.vocabulary` — meter kinds, quantities and units, stream formats,
  point types, the GTNET-SKT word budget, command points: each defined once;
* :mod:`~gateway.config.schema` — the validated config as frozen dataclasses;
* :mod:`~gateway.config.keys` — the keys a TOML file may hold (unknown-key checks and the
  JSON Schema both read it);
* :mod:`~gateway.config.problems` — typed problems (key, value, fix; a root cause and its
  follow-ons) and the collector rules report into;
* :mod:`~gateway.config.rules` — the checks, one small function each;
* :mod:`~gateway.config.loader` — TOML to a validated :class:`TwinConfig`, or one
  :class:`~gateway.errors.ConfigError` listing every problem;
* :mod:`~gateway.config.jsonschema` — the JSON Schema of the file, for editors.
"""

from __future__ import annotations

from gateway.config.loader import (
    BUNDLED_DIR,
    bundled_configs,
    load_config,
    parse_config,
    resolve,
)
from gateway.config.schema import (
    AlignConfig,
    BusConfig,
    C37Phasor,
    C37Pmu,
    Channel,
    CommandsConfig,
    EstimatorConfig,
    Meter,
    Plant,
    Point,
    QualityConfig,
    Stream,
    TwinConfig,
    url_parts,
)
from gateway.config.vocabulary import (
    ALLOWED,
    ANGLES,
    BRANCH_QUANTITIES,
    BUS_QUANTITIES,
    COMMAND_KINDS,
    COMMAND_SEQ,
    MAX_RATE_HZ,
    MAX_SKT_WORDS,
    METER_KINDS,
    POINT_TYPES,
    PV_QUANTITIES,
    SKT_HEADER_WORDS,
    STREAM_FORMATS,
    TRANSPORT_SCHEMES,
    WEATHER_QUANTITIES,
    command_point_plant,
    skt_words,
)

__all__ = [
    "ALLOWED", "ANGLES", "BRANCH_QUANTITIES", "BUNDLED_DIR", "BUS_QUANTITIES", "COMMAND_KINDS",
    "COMMAND_SEQ", "MAX_RATE_HZ", "MAX_SKT_WORDS", "METER_KINDS", "POINT_TYPES",
    "PV_QUANTITIES", "SKT_HEADER_WORDS", "STREAM_FORMATS", "TRANSPORT_SCHEMES",
    "WEATHER_QUANTITIES", "AlignConfig", "BusConfig", "C37Phasor", "C37Pmu", "Channel",
    "CommandsConfig",
    "EstimatorConfig", "Meter", "Plant", "Point", "QualityConfig", "Stream", "TwinConfig",
    "bundled_configs", "command_point_plant", "load_config", "parse_config", "resolve",
    "skt_words", "url_parts",
]
