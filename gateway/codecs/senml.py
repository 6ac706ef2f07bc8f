"""SenML JSON (RFC 8428), sans-IO: a payload and ``now`` in, resolved readings out.

A SenML pack is a JSON array of records. Base fields (``bn`` base name, ``bt`` base
time, ``bu`` base unit, ``bv`` base value, ``bs`` base sum) apply to the records after
them until changed; each record's name is ``bn + n`` and its time ``bt + t``. A
resolved time below 2**28 (RFC 8428 section 4.5.3) is relative to ``now`` (a sensor
without a clock says "-5", five seconds ago). Values are ``v`` (number), ``vb``
(boolean, read as 1.0/0.0), ``vs`` (string) or ``vd`` (data, kept as its string); a
record with ``s`` (sum) and no value reports the sum.

The device of a reading is the base name up to its last separator (``:``, ``/`` or
``.``; a SenML base name conventionally ends with one, e.g. ``urn:dev:ow:10e2073a01080063:``
or ``lat/ls7/``) and the metric is what follows. Errors are :class:`SenmlError` with the
byte offset of the record that failed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.codecs.reading import Reading
from gateway.errors import FrameError

RELATIVE_LIMIT = 2.0**28  # RFC 8428: times below this are relative to now
_SEPARATORS = ":/."
_decoder = json.JSONDecoder()


class SenmlError(FrameError):
    """A SenML JSON payload that is not a valid pack."""


def _records(text: str) -> list[tuple[int, Any]]:
    """``(offset, record)`` of each element of the top-level JSON array."""
    pos = 0
    n = len(text)

    def skip(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip(pos)
    if pos >= n or text[pos] != "[":
        raise SenmlError("a SenML pack is a JSON array", pos)
    pos = skip(pos + 1)
    out: list[tuple[int, Any]] = []
    if pos < n and text[pos] == "]":
        return out
    while True:
        try:
            rec, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SenmlError(f"invalid JSON: {exc.msg}", exc.pos) from None
        out.append((pos, rec))
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < n and text[pos] == "]":
            if skip(pos + 1) != n:
                raise SenmlError("data after the pack", skip(pos + 1))
            return out
        raise SenmlError("expected ',' or ']'", pos)


def _number(rec: dict[str, Any], key: str, at: int, default: float = 0.0) -> float:
    v = rec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SenmlError(f"{key} must be a finite number, got {v!r}", at)
    return float(v)


def split_name(name: str) -> tuple[str, str]:
    """``(device, metric)`` of a resolved SenML name (see the module docstring)."""
    cut = max(name.rfind(c) for c in _SEPARATORS)
    if cut <= 0 or cut == len(name) - 1:
        return name, ""
    return name[:cut + 1].rstrip(_SEPARATORS), name[cut + 1:]


def decode_senml(data: bytes, now: float) -> list[Reading]:
    """Every record of a SenML JSON pack as a reading (raises :class:`SenmlError`)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SenmlError("payload is not UTF-8", exc.start) from None
    out: list[Reading] = []
    bn, bu = "", None
    bt = bv = bs = 0.0
    for at, rec in _records(text):
        if not isinstance(rec, dict):
            raise SenmlError(f"a record is a JSON object, got {type(rec).__name__}", at)
        if "bver" in rec and (isinstance(rec["bver"], bool) or not isinstance(rec["bver"], int)):
            raise SenmlError(f"bver must be an integer, got {rec['bver']!r}", at)
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise SenmlError("bn must be a string", at)
            bn = rec["bn"]
        if "bt" in rec:
            bt = _number(rec, "bt", at)
        if "bu" in rec:
            bu = rec["bu"] if isinstance(rec["bu"], str) else None
        if "bv" in rec:
            bv = _number(rec, "bv", at)
        if "bs" in rec:
            bs = _number(rec, "bs", at)
        out.append(_record(rec, at, bn, bu, bt, bv, bs, now))
    return out


def _record(rec: dict[str, Any], at: int, bn: str, bu: str | None, bt: float, bv: float,
            bs: float, now: float) -> Reading:
    n = rec.get("n", "")
    if not isinstance(n, str):
        raise SenmlError("n must be a string", at)
    name = bn + n
    if not name:
        raise SenmlError("record without a name (no bn and no n)", at)
    t = bt + _number(rec, "t", at)
    if t < RELATIVE_LIMIT:
        t += now
    unit = rec.get("u", bu)
    value: float | str | None
    if "v" in rec:
        value = bv + _number(rec, "v", at)
    elif "vb" in rec:
        if not isinstance(rec["vb"], bool):
            raise SenmlError(f"vb must be true or false, got {rec['vb']!r}", at)
        value = 1.0 if rec["vb"] else 0.0
    elif "vs" in rec or "vd" in rec:
        v = rec.get("vs", rec.get("vd"))
        if not isinstance(v, str):
            raise SenmlError("vs/vd must be a string", at)
        value = v
    elif "s" in rec:
        value = bs + _number(rec, "s", at)
    else:
        raise SenmlError(f"record {name!r} has no value (v, vb, vs, vd or s)", at)
    device, metric = split_name(name)
    return Reading(device, metric, value, t, unit if isinstance(unit, str) else None)


def encode_senml(device: str, values: dict[str, float], time: float,
                 units: dict[str, str] | None = None) -> bytes:
    """A SenML pack of ``values`` measured by ``device`` at ``time`` (the emulator's)."""
    units = units or {}
    recs: list[dict[str, Any]] = []
    for i, (k, v) in enumerate(values.items()):
        r: dict[str, Any] = {"n": k, "v": v}
        if k in units:
            r["u"] = units[k]
        if i == 0:
            r = {"bn": f"{device}/", "bt": time, **r}
        recs.append(r)
    return json.dumps(recs, separators=(",", ":")).encode()
