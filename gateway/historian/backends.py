"""The backend for a historian URL (kept apart from :mod:`.base` so that the base class does
not import the backends that derive from it)."""

from __future__ import annotations

from gateway.errors import HistorianError
from gateway.historian.base import Backend
from gateway.historian.mysql import MysqlBackend
from gateway.historian.sqlite import SqliteBackend

__all__ = ["open_backend"]


def open_backend(url: str) -> Backend:
    """The backend for ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    ``mysql://user:password@host:port/database[?connect_timeout=5&read_timeout=30]``.
    Not connected yet: the first ``write``/``query`` (or ``connect()``) connects."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return SqliteBackend(url)
    if scheme in ("mysql", "mariadb", "mysql+pymysql"):
        return MysqlBackend(url)
    raise HistorianError(
        f"unsupported historian URL {url!r}: use sqlite:///path.db or "
        "mysql://user:password@host:port/database")
