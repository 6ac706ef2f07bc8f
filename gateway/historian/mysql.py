"""MySQL/MariaDB backend (PyMySQL): ``mysql://user:password@host:port/database``.

Query parameters (all optional): ``connect_timeout`` (s, default 5), ``read_timeout`` and
``write_timeout`` (s, default 10: a stalled server — stopped, or behind a link that no
longer forwards — counts as unavailable after that and the writer spools; a healthy
server commits a batch in milliseconds),
``create_database`` (``1`` default: ``CREATE DATABASE IF NOT EXISTS`` on connect).
Only parameterised SQL; one transaction per batch with ``executemany`` per table
(PyMySQL turns it into multi-row ``INSERT … VALUES (…), (…)`` statements).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.errors import HistorianError
from gateway.historian.base import Backend, Misconfigured, Rejected, Unavailable
from gateway.historian.schema import Row

# server/client error codes that mean "the connection or the server, not the rows":
# 1040 too many connections, 1053 shutdown, 1205 lock wait timeout, 1213 deadlock,
# 1927 connection killed, 2000-2999 client-side (CR_*: can't connect, gone away, lost ...)
_TRANSIENT_CODES = {1040, 1053, 1205, 1213, 1927, 1158, 1159, 1160, 1161}
# errors no retry can cure, on connect or schema setup: 1044 access to the database
# denied, 1045 access denied (user/password), 1049 unknown database (create_database=0),
# 1142 command denied on a table, 1227 privilege missing, 1698 access denied (no
# password), 1131/1133 user not allowed/unknown, 1251 client cannot authenticate
_PERMANENT_CODES = {1044, 1045, 1049, 1131, 1133, 1142, 1227, 1251, 1698}


def parse_mysql_url(url: str) -> dict[str, Any]:
    """The PyMySQL connect arguments of a ``mysql://`` URL (raises HistorianError)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("mysql", "mariadb", "mysql+pymysql"):
        raise HistorianError(f"bad MySQL URL {url!r}: use mysql://user:pw@host:port/db")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise HistorianError(
            f"MySQL URL {url!r} names no database: use mysql://user:pw@host:port/db")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        port = parts.port or 3306
        args: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "database": database,
            "connect_timeout": float(q.pop("connect_timeout", 5)),
            "read_timeout": float(q.pop("read_timeout", 10)),
            "write_timeout": float(q.pop("write_timeout", 10)),
            "create_database": q.pop("create_database", "1") not in ("0", "false", "no"),
        }
    except ValueError as exc:
        raise HistorianError(f"MySQL URL {url!r}: {exc}") from exc
    if q:
        raise HistorianError(
            f"MySQL URL {url!r}: unknown parameter(s) {', '.join(sorted(q))} (known: "
            "connect_timeout, read_timeout, write_timeout, create_database)")
    return args


class MysqlBackend(Backend):
    dialect = "mysql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.args = parse_mysql_url(url)
        self._conn: Any = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _connect_raw(self, with_db: bool) -> Any:
        import pymysql

        a = self.args
        return pymysql.connect(
            host=a["host"], port=a["port"], user=a["user"], password=a["password"],
            database=a["database"] if with_db else None, charset="utf8mb4",
            autocommit=False, connect_timeout=a["connect_timeout"],
            read_timeout=a["read_timeout"], write_timeout=a["write_timeout"],
        )

    def connect(self) -> None:
        if self._conn is not None:
            return
        import pymysql

        try:
            try:
                conn = self._connect_raw(True)
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1049 and self.args["create_database"]:
                    # unknown database: create it, then connect to it
                    boot = self._connect_raw(False)
                    try:
                        with boot.cursor() as cur:
                            name = self.args["database"].replace("`", "``")
                            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` "
                                        "CHARACTER SET utf8mb4")
                        boot.commit()
                    finally:
                        boot.close()
                    conn = self._connect_raw(True)
                else:
                    raise
        except Exception as exc:
            if self._classify(exc) is None:
                raise
            if self._permanent(exc):
                raise Misconfigured(f"cannot use {self.display_url}: {exc}") from exc
            raise Unavailable(f"cannot connect to {self.display_url}: {exc}") from exc
        self._conn = conn
        self._setup_schema()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            try:
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    sock.close()
            except OSError:
                pass

    def _db(self) -> Any:
        if self._conn is None:
            raise Unavailable(f"{self.display_url}: not connected")
        return self._conn

    def _write(self, batch: Mapping[str, Sequence[Row]]) -> None:
        conn = self._db()
        try:
            with conn.cursor() as cur:
                for sql, rows in self._ordered(batch):
                    cur.executemany(sql, rows)
            conn.commit()
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.rollback()

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        conn = self._db()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), tuple(params))
                rows = list(cur.fetchall())
            conn.commit()  # end the read snapshot so the next query sees new rows
        except BaseException:
            self._rollback()
            raise
        return rows

    def _execute_script(self, statements: Sequence[str],
                        after: Sequence[tuple[str, Sequence[object]]]) -> None:
        conn = self._db()
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
                for s, p in after:
                    cur.execute(s.replace("?", "%s"), tuple(p))
            conn.commit()
        except BaseException:
            self._rollback()
            raise

    def _permanent(self, exc: BaseException) -> bool:
        import pymysql

        return (isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError
                           | pymysql.err.ProgrammingError)
                and bool(exc.args) and exc.args[0] in _PERMANENT_CODES)

    def _classify(self, exc: BaseException) -> type[HistorianError] | None:
        import pymysql

        if isinstance(exc, pymysql.err.InterfaceError | OSError | socket.timeout
                      | ConnectionError | EOFError):
            return Unavailable
        if isinstance(exc, pymysql.err.OperationalError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in _TRANSIENT_CODES or 2000 <= code < 3000 or code == 0:
                return Unavailable
            return Rejected
        if isinstance(exc, pymysql.err.MySQLError):
            return Rejected
        return None
