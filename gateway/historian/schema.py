"""The twin database schema, one definition rendered for SQLite and MySQL/MariaDB.

Row model (documented for users in docs/historian.md):

* ``runs`` — one row per gateway start: ``run_id`` (epoch microseconds at start), the
  config name, its sha256 digest and full TOML text, the gridtwin version.
* ``meters``, ``channels``, ``buses`` — the run's measurement model: channel ``idx`` is the
  position of a value in the ``vals``/``flags`` blobs; bus ``idx`` the position in the state
  vectors.
* ``measurements`` (raw) and ``corrected`` — one *wide* row per snapshot: ``vals`` is the
  float64 little-endian vector, ``flags`` the uint32 little-endian quality bitmask vector
  (openPDC-style bits, see :class:`gateway.snapshot.Flag`). ``nflagged`` counts the values
  whose flags hit :data:`FLAGGED_MASK`.
* ``flagged`` — narrow and sparse: one row per value whose flags hit :data:`FLAGGED_MASK`
  (BAD, SUSPECT, CORRECTED, MISSING), so "all bad data of a meter" is plain SQL.
* ``forecasts`` — one row per issue and horizon step: ``p_mw`` and ``sigma_mw`` are JSON
  objects keyed by plant name (``{"pv8": 0.41, ...}``), queryable with
  ``json_extract(p_mw, '$.pv8')`` / ``JSON_VALUE(p_mw, '$.pv8')``.
* ``states`` — one wide row per estimate: ``vm`` (pu) and ``va`` (rad) as JSON arrays in
  state-vector order (``buses.idx``), χ², iterations, convergence, deadline, timings, and
  ``topology``: the label of the switch states the estimate used (``normal``: the
  config's network; else the switches that differ, ``sw_8_21=closed,sw_7_8=open``). JSON
  rather than a blob or per-bus rows: one bus's voltage over an hour is plain SQL on both
  backends (``json_extract(vm, '$[17]')`` / ``JSON_VALUE(vm, '$[17]')``) at one row per
  snapshot; per-bus rows (33 per snapshot) were the bottleneck of the MySQL writer.
* ``events`` — bad data found, deadline missed, estimator restarted, stream gaps, ...
  ``detail`` is a JSON object.
* ``devices`` — the edge devices' registry entries (:mod:`gateway.devices`), one row per
  device when it changes (new, online, offline) and at shutdown.

Every time is float64 epoch seconds (``DOUBLE``). Every row carries ``run_id``; every table
has a unique key over the row's natural identity, so replaying a spool after an unclear
commit is idempotent (``ON CONFLICT DO NOTHING`` / ``ON DUPLICATE KEY UPDATE``). Tables with
an ``id`` column fill it in commit order: readers may tail a table by ``id``.

Non-finite floats in scalar columns are stored as NULL (MySQL rejects NaN/inf); inside
blobs they are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 2

#: flags that make a value land in the ``flagged`` table: BAD|SUSPECT|CORRECTED|MISSING
FLAGGED_MASK = 0x1 | 0x2 | 0x4 | 0x8


# ------------------------------------------------------------------------- blob codecs
# The blobs are plain little-endian arrays, nothing else: no header, no compression.
# Python: np.frombuffer(blob, "<f8") / np.frombuffer(blob, "<u4"); value i sits at byte
# offset 8*i (vals) or 4*i (flags).


def encode_f64(values: np.ndarray) -> bytes:
    """float64 little-endian bytes of ``values`` (1-D)."""
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def decode_f64(blob: bytes) -> np.ndarray:
    """The float64 vector stored by :func:`encode_f64` (a read-only view)."""
    return np.frombuffer(blob, dtype="<f8")


def encode_u32(flags: np.ndarray) -> bytes:
    """uint32 little-endian bytes of ``flags`` (1-D)."""
    return np.ascontiguousarray(flags, dtype="<u4").tobytes()


def decode_u32(blob: bytes) -> np.ndarray:
    """The uint32 vector stored by :func:`encode_u32` (a read-only view)."""
    return np.frombuffer(blob, dtype="<u4")


# ------------------------------------------------------------------------- tables
# column types: i64, i32, f64, str (short text, indexable), text (long), blob


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, type), without the ``id`` column
    unique: tuple[str, ...]  # natural key (idempotent inserts)
    indexes: tuple[tuple[str, ...], ...] = ()
    with_id: bool = True  # an auto-increment ``id`` primary key (commit order)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)


TABLES: tuple[Table, ...] = (
    Table("runs", (
        ("run_id", "i64"), ("started", "f64"), ("name", "str"), ("config_digest", "str"),
        ("config_toml", "text"), ("version", "str"), ("host", "str"),
        ("n_channels", "i32"), ("n_buses", "i32"), ("note", "text"),
    ), unique=("run_id",), indexes=(("started",),), with_id=False),
    Table("meters", (
        ("run_id", "i64"), ("meter", "str"), ("kind", "str"), ("bus", "i64"),
        ("branch", "i64"), ("end_bus", "i64"), ("quantities", "str"),
    ), unique=("run_id", "meter"), with_id=False),
    Table("channels", (
        ("run_id", "i64"), ("idx", "i32"), ("name", "str"), ("meter", "str"), ("kind", "str"),
        ("quantity", "str"), ("unit", "str"), ("bus", "i64"), ("branch", "i64"),
        ("end_bus", "i64"),
    ), unique=("run_id", "idx"), indexes=(("meter",), ("name",)), with_id=False),
    Table("buses", (
        ("run_id", "i64"), ("idx", "i32"), ("bus", "i64"), ("base_kv", "f64"),
    ), unique=("run_id", "idx"), with_id=False),
    Table("measurements", (
        ("run_id", "i64"), ("seq", "i64"), ("source_time", "f64"), ("arrival_time", "f64"),
        ("n", "i32"), ("nflagged", "i32"), ("vals", "blob"), ("flags", "blob"),
    ), unique=("run_id", "seq"), indexes=(("source_time",),)),
    Table("corrected", (
        ("run_id", "i64"), ("seq", "i64"), ("source_time", "f64"),
        ("n", "i32"), ("nflagged", "i32"), ("vals", "blob"), ("flags", "blob"),
    ), unique=("run_id", "seq"), indexes=(("source_time",),)),
    Table("flagged", (
        ("run_id", "i64"), ("seq", "i64"), ("source_time", "f64"), ("stage", "i32"),
        ("channel", "i32"), ("value", "f64"), ("flags", "i64"),
    ), unique=("run_id", "stage", "seq", "channel"),
        indexes=(("run_id", "channel", "source_time"),)),
    Table("forecasts", (
        ("run_id", "i64"), ("seq", "i64"), ("time", "f64"), ("step", "i32"),
        ("target_time", "f64"), ("p_mw", "text"), ("sigma_mw", "text"),
    ), unique=("run_id", "seq", "step"), indexes=(("target_time",),)),
    Table("states", (
        ("run_id", "i64"), ("seq", "i64"), ("source_time", "f64"), ("n", "i32"),
        ("vm", "text"), ("va", "text"), ("chi2", "f64"), ("iterations", "i32"),
        ("converged", "i32"), ("deadline_met", "i32"), ("timings", "text"),
        ("topology", "text"),
    ), unique=("run_id", "seq"), indexes=(("source_time",),)),
    Table("events", (
        ("run_id", "i64"), ("event_no", "i64"), ("time", "f64"), ("kind", "str"),
        ("source", "str"), ("detail", "text"),
    ), unique=("run_id", "event_no"), indexes=(("kind", "time"), ("run_id", "time"))),
    # edge devices (gateway.devices): one row per device and change (online, offline,
    # new) and at shutdown; errors/health are JSON objects, no credentials
    Table("devices", (
        ("run_id", "i64"), ("time", "f64"), ("device", "str"), ("name", "str"),
        ("kind", "str"), ("quality", "str"), ("online", "i32"), ("last_seen", "f64"),
        ("messages", "i64"), ("errors", "text"), ("health", "text"), ("detail", "text"),
    ), unique=("run_id", "device", "time"), indexes=(("device", "time"),)),
)

TABLE: dict[str, Table] = {t.name: t for t in TABLES}

#: the record kinds the writer accepts (one spool record each), in commit order within a
#: batch; ``flagged`` rows are derived from ``measurements`` and ``corrected`` rows by
#: :func:`expand`
KINDS: tuple[str, ...] = (
    "runs", "meters", "channels", "buses", "measurements", "corrected", "forecasts",
    "states", "events", "devices",
)
KIND_CODE: dict[str, int] = {k: i for i, k in enumerate(KINDS)}
#: tables in the order a batch writes them
WRITE_ORDER: tuple[str, ...] = (
    "runs", "meters", "channels", "buses", "measurements", "corrected", "flagged",
    "forecasts", "states", "events", "devices",
)

_SQLITE_TYPES = {"i64": "INTEGER", "i32": "INTEGER", "f64": "REAL", "str": "TEXT",
                 "text": "TEXT", "blob": "BLOB"}
_MYSQL_TYPES = {"i64": "BIGINT", "i32": "INT", "f64": "DOUBLE", "str": "VARCHAR(255)",
                "text": "MEDIUMTEXT", "blob": "MEDIUMBLOB"}


def ddl(dialect: str) -> list[str]:
    """CREATE TABLE/INDEX IF NOT EXISTS statements of the whole schema for ``dialect``."""
    out: list[str] = []
    if dialect == "sqlite":
        types, idcol = _SQLITE_TYPES, "id INTEGER PRIMARY KEY"
        tail = ""
    elif dialect == "mysql":
        types, idcol = _MYSQL_TYPES, "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
        tail = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    else:
        raise ValueError(f"unknown dialect {dialect!r}")
    out.append("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
               f"applied {types['f64']} NOT NULL){tail}")
    for t in TABLES:
        cols = [f"{name} {types[kind]}" for name, kind in t.columns]
        if t.with_id:
            cols.insert(0, idcol)
            cols.append(f"UNIQUE ({', '.join(t.unique)})")
        else:
            cols.append(f"PRIMARY KEY ({', '.join(t.unique)})")
        out.append(f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}){tail}")
        for ix in t.indexes:
            name = f"ix_{t.name}_{'_'.join(ix)}"
            out.append(f"CREATE INDEX IF NOT EXISTS {name} ON {t.name} ({', '.join(ix)})")
    return out


#: migrations: version -> statements taking the schema from version-1 to version
#: (version 1 is the initial schema created by :func:`ddl`). Both dialects take the same
#: ``ALTER TABLE ... ADD COLUMN`` (TEXT is TEXT in SQLite and MySQL/MariaDB alike).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: which topology (switch states) each estimate used
    2: ("ALTER TABLE states ADD COLUMN topology TEXT",),
}


def insert_sql(table: str, dialect: str) -> str:
    """Idempotent INSERT of one row of ``table`` (a duplicate natural key is skipped)."""
    t = TABLE[table]
    cols = ", ".join(t.names)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in t.names)
        return f"INSERT INTO {t.name} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    marks = ", ".join("%s" for _ in t.names)
    return (f"INSERT INTO {t.name} ({cols}) VALUES ({marks}) "
            "ON DUPLICATE KEY UPDATE run_id = run_id")


# ------------------------------------------------------------------------- derived rows

Row = tuple[object, ...]


def expand(kind: str, row: Row, out: dict[str, list[Row]]) -> None:
    """Append ``row`` of record ``kind`` and the narrow rows derived from it to ``out``.

    ``measurements``/``corrected`` rows add one ``flagged`` row per value whose flags hit
    :data:`FLAGGED_MASK` (``stage`` 0 raw, 1 corrected).
    """
    if kind == "states" and len(row) == len(TABLE["states"].columns) - 1:
        row = (*row, None)  # spooled before the topology column: unknown
    out.setdefault(kind, []).append(row)
    if kind == "measurements" or kind == "corrected":
        if kind == "measurements":
            run_id, seq, t, _arr, _n, nflagged, vals, flags = row
            stage = 0
        else:
            run_id, seq, t, _n, nflagged, vals, flags = row
            stage = 1
        if nflagged:
            f = decode_u32(flags)  # type: ignore[arg-type]
            v = decode_f64(vals)  # type: ignore[arg-type]
            hit = np.flatnonzero(f & FLAGGED_MASK)
            rows = out.setdefault("flagged", [])
            for i in hit.tolist():
                rows.append((run_id, seq, t, stage, i, finite_or_none(float(v[i])), int(f[i])))


def json_vector(values: np.ndarray) -> str:
    """A JSON array of ``values`` (shortest round-trip floats; non-finite as null).

    A list of finite floats has the same text as Python's ``repr`` (", " between items,
    ``float.__repr__`` each) at a third of ``json.dumps``'s cost: the fleet sink writes
    two of these per state, thousands a second."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if np.isfinite(v).all():
        return repr(v.tolist())
    return json.dumps([x if np.isfinite(x) else None for x in v.tolist()])


def json_object(values: Mapping[str, float]) -> str:
    """A JSON object name -> float (non-finite as null)."""
    return json.dumps({str(k): finite_or_none(float(v)) for k, v in values.items()})


def vector_from_json(text: str | None) -> np.ndarray:
    """The float64 vector of :func:`json_vector` (null as NaN)."""
    if not text:
        return np.zeros(0)
    return np.array([np.nan if x is None else x for x in json.loads(text)], dtype=np.float64)


def finite_or_none(x: float | None) -> float | None:
    """``x`` when finite, else None (stored as NULL)."""
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return None
    return x


# ------------------------------------------------------------------------- documented SQL
# Example queries in both dialects (tested on both backends; the ones users read are in
# docs/historian.md). ``?`` marks a parameter (PyMySQL writes ``%s``); ``{json}`` stands
# for the dialect's "number at JSON path" expression.

_JSON_AT = {
    "sqlite": "json_extract({col}, '$[' || {idx} || ']')",
    "mysql": "CAST(JSON_VALUE({col}, CONCAT('$[', {idx}, ']')) AS DOUBLE)",
}


def json_at(dialect: str, col: str, idx: str) -> str:
    """SQL for element ``idx`` (an SQL expression) of the JSON array in column ``col``."""
    return _JSON_AT[dialect].format(col=col, idx=idx)


def example_queries(dialect: str) -> dict[str, str]:
    """The documented queries for ``dialect`` ("sqlite" or "mysql"), by name."""
    vm, va = json_at(dialect, "s.vm", "b.idx"), json_at(dialect, "s.va", "b.idx")
    return {
        # one bus's voltage over an hour; params: bus id, start, end (epoch s)
        "bus_voltage": (
            f"SELECT s.source_time, {vm} AS vm_pu, {va} AS va_rad"
            " FROM states s JOIN buses b ON b.run_id = s.run_id AND b.bus = ?"
            " WHERE s.source_time >= ? AND s.source_time < ?"
            " ORDER BY s.source_time"),
        # all bad data of a meter (raw stage, BAD bit); params: meter id
        "bad_data_of_meter": (
            "SELECT f.source_time, f.seq, c.name, f.value, f.flags"
            " FROM flagged f JOIN channels c ON c.run_id = f.run_id AND c.idx = f.channel"
            " WHERE c.meter = ? AND f.stage = 0 AND (f.flags & 1) <> 0"
            " ORDER BY f.source_time"),
        # the state of one snapshot, per bus; params: run_id, seq
        "snapshot_state": (
            f"SELECT b.bus, {vm} AS vm_pu, {va} AS va_rad, s.chi2, s.deadline_met"
            " FROM states s JOIN buses b ON b.run_id = s.run_id"
            " WHERE s.run_id = ? AND s.seq = ? ORDER BY b.idx"),
        # the latest run and its config
        "latest_run": ("SELECT run_id, name, config_digest, started FROM runs"
                       " ORDER BY started DESC LIMIT 1"),
        # forecast of one plant over a period; params: start, end
        "plant_forecast": (
            "SELECT target_time, "
            + ("json_extract(p_mw, '$.pv8')" if dialect == "sqlite"
               else "CAST(JSON_VALUE(p_mw, '$.pv8') AS DOUBLE)")
            + " AS p_mw FROM forecasts WHERE target_time >= ? AND target_time < ?"
            " ORDER BY target_time"),
    }
