"""Historian schema, blob codecs, URL parsing and the spool file format."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import HistorianError
from gateway.historian import (
    SCHEMA_VERSION,
    SchemaTooNew,
    decode_f64,
    decode_u32,
    encode_f64,
    encode_u32,
    open_backend,
)
from gateway.historian.mysql import parse_mysql_url
from gateway.historian.schema import KINDS, TABLES, ddl, insert_sql
from gateway.historian.spool import Spool, SpoolCorrupt, decode_payload, encode_record


def test_blobs_are_plain_little_endian_arrays() -> None:
    v = np.array([1.0, -2.5, np.nan, np.inf])
    blob = encode_f64(v)
    assert blob[:8] == struct.pack("<d", 1.0)
    np.testing.assert_array_equal(decode_f64(blob), v)
    f = np.array([0, 1, 4, 2**31], dtype=np.uint32)
    assert encode_u32(f)[4:8] == struct.pack("<I", 1)
    np.testing.assert_array_equal(decode_u32(encode_u32(f)), f)
    # big-endian input is converted, not reinterpreted
    np.testing.assert_array_equal(decode_f64(encode_f64(v.astype(">f8"))), v)


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_ddl_covers_every_table_and_inserts_are_idempotent(dialect: str) -> None:
    text = "\n".join(ddl(dialect))
    for t in TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {t.name} (" in text
        sql = insert_sql(t.name, dialect)
        assert ("ON CONFLICT DO NOTHING" if dialect == "sqlite" else "ON DUPLICATE KEY") in sql
        assert sql.count("?" if dialect == "sqlite" else "%s") == len(t.columns)


def test_sqlite_schema_created_once_and_versioned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'twin.db'}"
    db = open_backend(url)
    db.connect()
    assert db.schema_version() == SCHEMA_VERSION
    tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {t.name for t in TABLES} <= tables
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    db.close()
    db.connect()  # reopening does not duplicate the version row or fail
    assert db.query("SELECT COUNT(*) FROM schema_version")[0][0] == 1
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    db = open_backend(url)
    db.connect()
    db.query("INSERT INTO schema_version (version, applied) VALUES (?, 0)",
             (SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(SchemaTooNew, match="upgrade gridtwin"):
        open_backend(url).connect()


def test_urls() -> None:
    a = parse_mysql_url("mysql://u:p%40ss@db.example:3307/twin?connect_timeout=1.5")
    assert (a["host"], a["port"], a["user"], a["password"], a["database"]) == (
        "db.example", 3307, "u", "p@ss", "twin")
    assert a["connect_timeout"] == 1.5
    assert open_backend("mysql://u:secret@h/db").display_url == "mysql://u:***@h/db"
    with pytest.raises(HistorianError, match="names no database"):
        parse_mysql_url("mysql://u@h:3306/")
    with pytest.raises(HistorianError, match="unknown parameter"):
        parse_mysql_url("mysql://u@h/db?bogus=1")
    with pytest.raises(HistorianError, match="unsupported historian URL"):
        open_backend("postgres://u@h/db")
    with pytest.raises(HistorianError, match="names no file"):
        open_backend("sqlite:///")


ROWS = [
    ("measurements", (1, 2, 3.5, 3.6, 2, 0, encode_f64(np.ones(2)), encode_u32(np.zeros(2)))),
    ("events", (1, 99, 4.0, "bad_data", "quality", '{"channel": "x"}')),
    ("runs", (5, 1.0, "ieee33", "abc", "toml ü", "0.1", "host", 3, 0, None)),
]


def test_spool_record_round_trip() -> None:
    for kind, row in ROWS:
        rec = encode_record(kind, row)
        assert decode_payload(rec[8:]) == (kind, row)
    assert set(KINDS) >= {k for k, _ in ROWS}
    with pytest.raises(TypeError):
        encode_record("events", (1, 2, 3.0, object(), "", None))
    with pytest.raises(SpoolCorrupt):
        decode_payload(b"\x00\x01\x00z")


def test_spool_append_read_consume_reset(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    assert sp.empty()
    sp.append(encode_record(k, r) for k, r in ROWS)
    assert sp.records == 3
    got, end = sp.read(2)
    assert got == ROWS[:2]
    sp.consume(end, 2)
    got, end = sp.read(10)
    assert got == ROWS[2:]
    sp.consume(end, 1)
    assert sp.empty() and sp.records == 0
    sp.reset()
    assert sp.path.stat().st_size == 0
    sp.close()


def test_spool_recovery_cuts_torn_tail_and_moves_corruption_aside(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([encode_record(k, r) for k, r in ROWS])
    sp.close()
    whole = sp.path.read_bytes()
    sp.path.write_bytes(whole[:-3])  # crash mid-record
    sp = Spool(tmp_path)
    assert sp.records == 2
    assert sp.read(10)[0] == ROWS[:2]
    sp.close()
    # flip a byte inside the second record: the first survives, the rest is set aside
    first = len(encode_record(*ROWS[0]))
    data = bytearray(whole)
    data[first + 12] ^= 0xFF
    sp.path.write_bytes(bytes(data))
    sp = Spool(tmp_path)
    assert sp.records == 1 and sp.corrupt_bytes == len(whole) - first
    assert list(tmp_path.glob("spool.corrupt.*"))
    sp.close()


def test_spool_prepend_puts_rows_first(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.append([encode_record(*ROWS[1]), encode_record(*ROWS[2])])
    _got, end = sp.read(1)
    sp.consume(end, 1)  # ROWS[1] consumed, ROWS[2] left
    sp.prepend([encode_record(*ROWS[0])])
    assert sp.records == 2
    assert sp.read(10)[0] == [ROWS[0], ROWS[2]]
    sp.close()
    assert Spool(tmp_path).records == 2
