"""The JSON Schema (draft 2020-12) of a twin config file, generated from the declared keys.

Editors with TOML support (taplo, Even Better TOML) validate and complete a config against
it. ``gridtwin config schema`` prints it; the copy shipped in ``gateway/configs`` is the
same document (a test regenerates and compares it). It checks the file's shape (keys,
types, closed vocabularies); the rules check everything that depends on the network.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.config.keys import TABLES, TOP, Key
from gateway.config.vocabulary import ALLOWED, POINT_TYPES

SCHEMA_FILE = "twin.schema.json"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _one(types: tuple[str, ...]) -> dict[str, Any]:
    return {"type": types[0]} if len(types) == 1 else {"type": list(types)}


def key_schema(key: Key) -> dict[str, Any]:
    """One key's schema: its type(s), its closed vocabulary and, for tables, their keys."""
    out: dict[str, Any] = {"description": key.doc, **_one(key.types)}
    if key.table is not None:
        nested = table_schema(key.table)
        if "array" in key.types:
            out["items"] = nested
        else:
            out = {"description": key.doc, **nested}
    elif key.items is not None:
        items: dict[str, Any] = _one(tuple(key.items.split("|")))
        if key.enum:
            items["enum"] = list(key.enum)
        out["items"] = items
    elif key.enum:
        out["enum"] = list(key.enum)
    return out


def table_schema(name: str) -> dict[str, Any]:
    keys = TABLES[name]
    out: dict[str, Any] = {
        "type": "object",
        "properties": {k: key_schema(v) for k, v in keys.items()},
        "additionalProperties": False,
    }
    required = [k for k, v in keys.items() if v.required]
    if required:
        out["required"] = required
    return out


def _accuracy_tables(out: dict[str, Any]) -> None:
    """accuracy/floor: one entry per quantity (a string like "0.5%" or a number)."""
    quantities = sorted({q for qs in ALLOWED.values() for q in qs})
    meter = out["properties"]["meters"]["items"]["properties"]
    for name, value in (("accuracy", {"type": ["string", "number"]}),
                        ("floor", {"type": "number", "minimum": 0})):
        meter[name].update({"properties": {q: value for q in quantities},
                            "additionalProperties": False})


def _point_entries(out: dict[str, Any]) -> None:
    """A point is "name[:type]" or a table {name, type, scale}."""
    entry = {"anyOf": [
        {"type": "string", "pattern": r"^[^:]+(:(" + "|".join(POINT_TYPES) + "))?$"},
        {"type": "object", "properties": {
            "name": {"type": "string"}, "type": {"enum": list(POINT_TYPES)},
            "scale": {"type": "number"}},
         "required": ["name"], "additionalProperties": False},
    ]}
    for table in ("streams", "commands"):
        node = out["properties"][table]
        props = node["items"]["properties"] if "items" in node else node["properties"]
        props["points"]["items"] = entry


def twin_schema() -> dict[str, Any]:
    """The whole document: top-level tables and arrays of tables, ``network`` required."""
    props: dict[str, Any] = {}
    for key, (table, is_array) in TOP.items():
        body = table_schema(table)
        props[key] = {"type": "array", "items": body} if is_array else body
    out: dict[str, Any] = {
        "$schema": _DRAFT,
        "$id": "https://gridtwin.invalid/" + SCHEMA_FILE,
        "title": "gridtwin twin config",
        "description": "One TOML file describing a gridtwin deployment (gridtwin config "
                       "check validates everything that depends on the network).",
        "type": "object",
        "properties": props,
        "required": ["network"],
        "additionalProperties": False,
    }
    _accuracy_tables(out)
    _point_entries(out)
    return out


def schema_text() -> str:
    """The schema as the shipped file holds it (sorted keys not used: order is readable)."""
    return json.dumps(twin_schema(), indent=2) + "\n"
