"""The twin database (historian): every measurement, estimate and event, on SQLite or MySQL.

* :class:`HistorianWriter` — background writer for the gateway (bounded queue, disk spool,
  batched idempotent commits, reconnect with back-off).
* :class:`HistorianReader` — read back: time ranges as arrays, CSV/Parquet export,
  training data.
* :mod:`gateway.historian.schema` — the schema and the blob codecs.
* :class:`Misconfigured` — what ``start()`` raises when no retry can help (access
  denied, unwritable path): the CLI says so in one line and exits with status 2.

URLs: ``sqlite:///path.db`` (default ``sqlite:///twin.db``) or
``mysql://user:password@host:port/database``.
"""

from gateway.historian.backends import open_backend
from gateway.historian.base import (
    Backend,
    Misconfigured,
    Rejected,
    SchemaTooNew,
    Unavailable,
)
from gateway.historian.reader import HistorianReader, MeasurementFrame, StateFrame
from gateway.historian.schema import (
    FLAGGED_MASK,
    SCHEMA_VERSION,
    decode_f64,
    decode_u32,
    encode_f64,
    encode_u32,
)
from gateway.historian.writer import (
    ChannelInfo,
    HistorianStats,
    HistorianWriter,
    MeterInfo,
    RunInfo,
    run_info_from_config,
)

__all__ = [
    "FLAGGED_MASK",
    "SCHEMA_VERSION",
    "Backend",
    "ChannelInfo",
    "HistorianReader",
    "HistorianStats",
    "HistorianWriter",
    "MeasurementFrame",
    "MeterInfo",
    "Misconfigured",
    "Rejected",
    "RunInfo",
    "SchemaTooNew",
    "StateFrame",
    "Unavailable",
    "decode_f64",
    "decode_u32",
    "encode_f64",
    "encode_u32",
    "open_backend",
    "run_info_from_config",
]
