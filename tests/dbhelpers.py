"""Shared helpers of the historian tests: a scratch MySQL database, waiting on a condition."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

MYSQL_SKIP = ("GRIDTWIN_MYSQL_URL is not set (e.g. mysql://root@127.0.0.1:3306/test): "
              "the MySQL backend is only tested against a real MariaDB/MySQL")


def mysql_scratch() -> Iterator[tuple[str, str]]:
    """``(base URL, scratch database name)``; the database is dropped afterwards. Skips
    (a missing external service) when ``GRIDTWIN_MYSQL_URL`` is not set."""
    base = os.environ.get("GRIDTWIN_MYSQL_URL")
    if not base:
        pytest.skip(MYSQL_SKIP)
    db = f"gt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield base, db
    drop_scratch(base, db)


def drop_scratch(base: str, db: str) -> None:
    """Drop a scratch database without waiting on anyone: connections still using it (a
    test that failed half-way, a writer stuck behind a cut proxy) are killed first, and
    every wait is bounded, so a failed test can never hang the suite here."""
    import pymysql

    from gateway.historian.mysql import parse_mysql_url

    a = parse_mysql_url(urlsplit(base)._replace(path="/" + db).geturl())
    conn = pymysql.connect(host=a["host"], port=a["port"], user=a["user"],
                           password=a["password"], connect_timeout=10, read_timeout=60,
                           write_timeout=60)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 30")
            cur.execute("SELECT id FROM information_schema.processlist "
                        "WHERE db = %s AND id <> CONNECTION_ID()", (db,))
            for (pid,) in cur.fetchall():
                with contextlib.suppress(pymysql.MySQLError):
                    cur.execute("KILL %s", (int(pid),))
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    finally:
        conn.close()


def wait_for(pred: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll a condition with a deadline (a wait, not an assertion about timing)."""
    ev = threading.Event()
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        ev.wait(0.005)
