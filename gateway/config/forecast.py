"""The ``[forecast]`` table: the feeder forecaster's settings, checked like every other
table (each problem names its key). The forecaster itself is :mod:`gateway.forecast`."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import estimator.forecast as fc
from gateway.config.problems import InvalidValue, UnknownKey, WrongType
from gateway.errors import ConfigError, ConfigProblem

__all__ = ["MAX_HISTORY_ROWS", "ForecastSettings", "horizon_label", "parse_settings",
           "settings_of"]

MAX_HISTORY_ROWS = 50_000  # the forecaster's ring holds twice this many rows of every bus


@dataclass(frozen=True)
class ForecastSettings:
    """The ``[forecast]`` table (see the module docstring)."""

    enabled: bool = True
    every_s: float = 5.0
    horizons_min: tuple[float, ...] = (5.0, 15.0, 60.0)
    vmin: float = 0.95
    vmax: float = 1.05
    method: str = "learned"
    resolution_s: float = 60.0
    history_days: float = 3.0
    scenarios: int = 40
    coverage: float = 0.9
    refit_s: float = 900.0
    sample_s: float = 1.0

    @property
    def horizons_s(self) -> tuple[float, ...]:
        return tuple(m * 60.0 for m in self.horizons_min)


_NUMBERS = {"every_s": (0.0, math.inf), "resolution_s": (0.0, 3600.0),
            "history_days": (0.0, 60.0), "coverage": (0.0, 1.0), "refit_s": (0.0, math.inf),
            "sample_s": (0.0, 3600.0)}
_KEYS = {"enabled", "horizons_min", "limits", "method", "scenarios", *_NUMBERS}


def parse_settings(table: Any) -> tuple[ForecastSettings, list[ConfigProblem]]:
    """Settings from the ``[forecast]`` table (``{}`` when absent) and every problem found,
    each naming its key (``forecast.every_s`` ...)."""
    probs: list[ConfigProblem] = []

    def bad(key: str, msg: str, fix: str, kind: type[ConfigProblem] = InvalidValue) -> None:
        probs.append(kind(f"forecast.{key}", msg, fix, value=table.get(key)))

    if not isinstance(table, dict):
        return ForecastSettings(), [WrongType("forecast", "must be a table [forecast]",
                                              "write it as a [forecast] section")]
    for k in table:
        if k not in _KEYS:
            bad(k, "unknown key", f"remove it or use one of: {', '.join(sorted(_KEYS))}",
                UnknownKey)
    kw: dict[str, Any] = {}
    if "enabled" in table:
        if isinstance(table["enabled"], bool):
            kw["enabled"] = table["enabled"]
        else:
            bad("enabled", f"must be true or false, got {table['enabled']!r}", "write true")
    for key, (lo, hi) in _NUMBERS.items():
        if key not in table:
            continue
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo < v <= hi:
            bad(key, f"must be a number in ({lo:g}, {hi:g}], got {v!r}", f"write e.g. "
                f"{getattr(ForecastSettings, key)!r}")
        else:
            kw[key] = float(v)
    if "coverage" in kw and kw["coverage"] >= 1.0:
        bad("coverage", f"must be below 1, got {kw.pop('coverage')}", "write e.g. 0.9")
    days = kw.get("history_days", ForecastSettings.history_days)
    res = kw.get("resolution_s", ForecastSettings.resolution_s)
    if days * 86400.0 / res > MAX_HISTORY_ROWS:
        bad("history_days", f"{days:g} days at {res:g} s are {days * 86400.0 / res:.0f} "
            f"history rows, more than {MAX_HISTORY_ROWS}",
            "shorten history_days or lengthen resolution_s")
    _parse_horizons(table, kw, bad)
    _parse_limits(table, kw, bad)
    if "method" in table:
        if table["method"] in fc.METHODS:
            kw["method"] = table["method"]
        else:
            bad("method", f"unknown method {table['method']!r}",
                f"use one of {', '.join(fc.METHODS)}")
    if "scenarios" in table:
        v = table["scenarios"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
            bad("scenarios", f"must be an integer in [0, 1000], got {v!r}", "write e.g. 40")
        else:
            kw["scenarios"] = v
    return ForecastSettings(**kw), probs


def _parse_horizons(table: dict[str, Any], kw: dict[str, Any],
                    bad: Callable[[str, str, str], None]) -> None:
    if "horizons_min" not in table:
        return
    v = table["horizons_min"]
    ok = (isinstance(v, list) and v and all(
        isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= 24 * 60
        for x in v) and len(set(v)) == len(v))
    if not ok:
        bad("horizons_min", f"must be distinct minutes in (0, 1440], got {v!r}",
            "write e.g. [5, 15, 60]")
        return
    kw["horizons_min"] = tuple(sorted(float(x) for x in v))


def _parse_limits(table: dict[str, Any], kw: dict[str, Any],
                  bad: Callable[[str, str, str], None]) -> None:
    if "limits" not in table:
        return
    lim = table["limits"]
    if not isinstance(lim, dict) or set(lim) - {"vmin", "vmax"}:
        bad("limits", f"must be {{ vmin = ..., vmax = ... }}, got {lim!r}",
            "write limits = { vmin = 0.95, vmax = 1.05 }")
        return
    vmin = lim.get("vmin", ForecastSettings.vmin)
    vmax = lim.get("vmax", ForecastSettings.vmax)
    nums = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (vmin, vmax))
    if not nums or not 0.5 <= vmin < vmax <= 1.5:
        bad("limits", f"need 0.5 <= vmin < vmax <= 1.5 pu, got vmin={vmin!r}, vmax={vmax!r}",
            "write limits = { vmin = 0.95, vmax = 1.05 }")
        return
    kw["vmin"], kw["vmax"] = float(vmin), float(vmax)


def settings_of(cfg: Any) -> ForecastSettings:
    """The settings of a loaded config (its TOML text); ConfigError if the table is bad
    (the loader has already refused such a config)."""
    raw = tomllib.loads(cfg.text) if getattr(cfg, "text", "") else {}
    settings, probs = parse_settings(raw.get("forecast", {}))
    if probs:
        raise ConfigError(probs)
    return settings


def horizon_label(seconds: float) -> str:
    """'5m', '15m', '60m' (the metrics' ``horizon`` label); seconds where not whole."""
    m = seconds / 60.0
    return f"{m:g}m" if m == int(m) else f"{seconds:g}s"


