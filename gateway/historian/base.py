"""The backend interface (one class per URL scheme) and :func:`open_backend`.

A backend owns one database connection, used by one thread at a time. ``write`` commits a
whole batch in one transaction or nothing; it raises :class:`Unavailable` when the database
could not be reached or answered too late (retry later: the writer spools meanwhile) and
:class:`Rejected` when the rows themselves can never be written (the writer isolates them
row by row and keeps the rejected ones in a dead-letter file). ``connect`` raises
:class:`Misconfigured` for what no retry can cure (access denied, an unwritable path).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.errors import HistorianError
from gateway.historian.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLE,
    WRITE_ORDER,
    Row,
    ddl,
    insert_sql,
)

_T = TypeVar("_T")


class Unavailable(HistorianError):
    """The database is unreachable, gone away or too slow; the rows may be retried."""


class Rejected(HistorianError):
    """The database refused the rows themselves (retrying the same rows cannot help)."""


class Misconfigured(HistorianError):
    """The historian cannot work as configured, and waiting will not change that: access
    denied, an unknown database, a path that cannot be written, a spool path that is a
    file. Raised at start-up (the CLI exits with status 2) instead of spooling forever."""


class SchemaTooNew(Misconfigured):
    """The database was written by a newer gridtwin (schema version above ours)."""


class Backend(abc.ABC):
    """One connection to the twin database (not thread-safe; one user thread)."""

    dialect: str = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self._inserts = {t: insert_sql(t, self.dialect) for t in TABLE}
        self._bus_ids: dict[int, list[int] | None] = {}

    @property
    def display_url(self) -> str:
        """The URL without a password (for logs and errors)."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()

    # -- to implement ---------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection and create or migrate the schema (raises Unavailable)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent, never raises for a dead connection)."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    def _write(self, batch: Mapping[str, Sequence[Row]]) -> None:
        """One transaction inserting every table's rows in :data:`WRITE_ORDER`."""

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _execute_script(self, statements: Sequence[str],
                        after: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Run DDL ``statements`` then parameterised ``after`` statements and commit."""

    @abc.abstractmethod
    def _classify(self, exc: BaseException) -> type[HistorianError] | None:
        """Unavailable or Rejected for a driver error, None for anything else."""

    # -- shared -----------------------------------------------------------------------
    def write(self, batch: Mapping[str, Sequence[Row]]) -> None:
        """Commit ``batch`` (table -> rows) atomically; see the module docstring."""
        self._guarded(self._write, batch)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read query; ``sql`` uses ``?`` placeholders on every backend."""
        return self._guarded(self._query, sql, params)

    def _guarded(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on a connection, a driver error turned into Unavailable (the
        connection closed) or Rejected."""
        if not self.connected:
            self.connect()
        try:
            return fn(*args)
        except HistorianError:
            raise
        except Exception as exc:
            kind = self._classify(exc)
            if kind is None:
                raise
            if kind is Unavailable:
                self.close()
            raise kind(f"{self.display_url}: {exc}") from exc

    def _setup_schema(self) -> None:
        """:meth:`ensure_schema` on a fresh connection (by ``connect``); on failure the
        connection is closed and a driver error becomes Unavailable."""
        try:
            self.ensure_schema()
        except BaseException as exc:
            self.close()
            if self._classify(exc) is None:
                raise
            if self._permanent(exc):
                raise Misconfigured(
                    f"{self.display_url}: cannot set up the schema: {exc}") from exc
            raise Unavailable(f"{self.display_url}: schema setup failed: {exc}") from exc

    def _permanent(self, exc: BaseException) -> bool:
        """Whether a driver error during connect/schema setup is one no retry can cure
        (access denied, read-only file); backends override it."""
        return False

    def bus_ids(self, run_id: int) -> list[int] | None:
        """External bus ids of the run's state vectors (cached; None when not recorded)."""
        if run_id not in self._bus_ids:
            rows = self.query("SELECT bus FROM buses WHERE run_id = ? ORDER BY idx", (run_id,))
            self._bus_ids[run_id] = [int(r[0]) for r in rows] if rows else None
        return self._bus_ids[run_id]

    def ensure_schema(self) -> None:
        """Create missing tables, then migrate up to :data:`SCHEMA_VERSION`."""
        self._execute_script(ddl(self.dialect), ())
        rows = self._query("SELECT MAX(version) FROM schema_version", ())
        current = rows[0][0] if rows and rows[0][0] is not None else None
        if current is None:
            self._execute_script((), [(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                (SCHEMA_VERSION, time.time()))])
            return
        current = int(current)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.display_url} has schema version {current}, this gridtwin knows up to "
                f"{SCHEMA_VERSION}: upgrade gridtwin or use another database")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            self._execute_script(MIGRATIONS.get(version, ()), [(
                "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                (version, time.time()))])

    def schema_version(self) -> int | None:
        rows = self.query("SELECT MAX(version) FROM schema_version")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def _ordered(self, batch: Mapping[str, Sequence[Row]]) -> list[tuple[str, Sequence[Row]]]:
        return [(self._inserts[t], batch[t]) for t in WRITE_ORDER if batch.get(t)]
