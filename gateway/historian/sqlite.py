"""SQLite backend: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a committed batch
survives a process crash; with the spool, a power cut loses at most the last WAL
checkpoint interval), one ``BEGIN IMMEDIATE … COMMIT`` per batch with ``executemany`` per
table.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import HistorianError
from gateway.historian.base import Backend, Misconfigured, Rejected, Unavailable
from gateway.historian.schema import Row

# primary result codes no retry can cure: SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN,
# SQLITE_AUTH, SQLITE_NOTADB (the file is something else)
_PERMANENT_CODES = {3, 8, 14, 23, 26}
# a directory that cannot be made: no permission, a path component that is a file, a
# read-only file system, a name too long (ENOSPC, EIO ... may pass: not permanent)
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EROFS,
                     errno.ENAMETOOLONG, errno.EISDIR}


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///…`` URL (``:memory:`` kept as is)."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise HistorianError(f"bad SQLite URL {url!r}: use sqlite:///path.db")
    path = url[len(prefix):].split("?", 1)[0]
    if not path:
        raise HistorianError(f"SQLite URL {url!r} names no file: use sqlite:///path.db")
    return path


class SqliteBackend(Backend):
    dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout_s: float = 5.0) -> None:
        super().__init__(url)
        self.path = sqlite_path(url)
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            parent = Path(self.path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                kind = Misconfigured if exc.errno in _PERMANENT_ERRNOS else Unavailable
                raise kind(f"cannot create the directory of {self.path}: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            if self._permanent(exc):
                raise Misconfigured(f"cannot open {self.path}: {exc}") from exc
            raise Unavailable(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        self._setup_schema()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"{self.path}: not connected")
        return self._conn

    def _write(self, batch: Mapping[str, Sequence[Row]]) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in self._ordered(batch):
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return list(self._db().execute(sql, tuple(params)).fetchall())

    def _execute_script(self, statements: Sequence[str],
                        after: Sequence[tuple[str, Sequence[object]]]) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for s in statements:
                conn.execute(s)
            for s, p in after:
                conn.execute(s, tuple(p))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _permanent(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(exc, sqlite3.Error) and code is not None and \
            (code & 0xFF) in _PERMANENT_CODES

    def _classify(self, exc: BaseException) -> type[HistorianError] | None:
        if isinstance(exc, sqlite3.OperationalError):
            # locked/busy, disk I/O, disk full, cannot open: the file may come back
            return Unavailable
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError
                      | sqlite3.InterfaceError | sqlite3.ProgrammingError):
            return Rejected
        if isinstance(exc, sqlite3.Error | OSError):
            return Unavailable
        return None
