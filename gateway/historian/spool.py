"""Local append-only spool: rows the database could not take yet, in acceptance order.

File format (``<dir>/spool.log``): a sequence of records, each
``u32 length | u32 crc32(payload) | payload`` (little-endian), payload =
``u8 kind | u16 field count | fields``; a field is a one-byte tag and its data:
``n`` None, ``i`` int64, ``d`` float64, ``s`` UTF-8 text and ``b`` bytes (both with a u32
length). Kinds are indices into :data:`gateway.historian.schema.KINDS`.

Appends are single ``write(2)`` calls on an ``O_APPEND`` descriptor, so a record reaches the
OS page cache before ``append`` returns (a killed process loses nothing it spooled);
:meth:`Spool.sync` ``fsync``s for power loss (the writer calls it periodically and on
close). A torn record at the end (crash mid-write) is cut off when the spool is reopened;
a corrupt record in the middle moves the rest of the file aside to ``spool.corrupt.*``.

The spool is not thread-safe by itself: the writer serialises ``append``/``reset``/
``prepend`` under its lock; ``read`` only reads below an offset already written.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.errors import HistorianError
from gateway.historian.schema import KIND_CODE, KINDS, Row

_HEAD = struct.Struct("<II")
_KIND = struct.Struct("<BH")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")

Record = tuple[str, Row]


class SpoolCorrupt(HistorianError):
    """A spool record failed its CRC or could not be decoded."""


def encode_record(kind: str, row: Row) -> bytes:
    """One framed spool record for ``row`` of record ``kind``."""
    parts = [_KIND.pack(KIND_CODE[kind], len(row))]
    for v in row:
        if v is None:
            parts.append(b"n")
        elif isinstance(v, bool | int):
            parts.append(b"i" + _I64.pack(int(v)))
        elif isinstance(v, float):
            parts.append(b"d" + _F64.pack(v))
        elif isinstance(v, str):
            raw = v.encode("utf-8")
            parts.append(b"s" + _U32.pack(len(raw)) + raw)
        elif isinstance(v, bytes | bytearray | memoryview):
            raw = bytes(v)
            parts.append(b"b" + _U32.pack(len(raw)) + raw)
        else:
            raise TypeError(f"spool cannot store {type(v).__name__} in a {kind} row")
    payload = b"".join(parts)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> Record:
    """The ``(kind, row)`` of one record payload; raises :class:`SpoolCorrupt`."""
    try:
        code, count = _KIND.unpack_from(payload, 0)
        kind = KINDS[code]
        pos = _KIND.size
        row: list[object] = []
        for _ in range(count):
            tag = payload[pos:pos + 1]
            pos += 1
            if tag == b"n":
                row.append(None)
            elif tag == b"i":
                row.append(_I64.unpack_from(payload, pos)[0])
                pos += 8
            elif tag == b"d":
                row.append(_F64.unpack_from(payload, pos)[0])
                pos += 8
            elif tag in (b"s", b"b"):
                (size,) = _U32.unpack_from(payload, pos)
                pos += 4
                raw = payload[pos:pos + size]
                if len(raw) != size:
                    raise SpoolCorrupt("spool record field runs past its end")
                pos += size
                row.append(raw.decode("utf-8") if tag == b"s" else bytes(raw))
            else:
                raise SpoolCorrupt(f"unknown spool field tag {tag!r}")
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise SpoolCorrupt(f"undecodable spool record: {exc}") from exc
    if pos != len(payload):
        raise SpoolCorrupt("spool record has trailing bytes")
    return kind, tuple(row)


class Spool:
    """The append-only spool file of one historian (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistorianError(f"cannot create spool directory {self.dir}: {exc}") from exc
        self.path = self.dir / "spool.log"
        self.corrupt_bytes = 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._read = 0  # offset of the first record not yet committed to the database
        self._size = 0  # offset after the last complete record
        self._dirty = False
        self.records = 0  # records written and not yet consumed (counted on open)
        self._recover()

    # -- state ------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        return self._size - self._read

    def empty(self) -> bool:
        return self._read >= self._size

    # -- writing (under the writer's lock) -----------------------------------------
    def append(self, records: Iterable[bytes]) -> None:
        data = b"".join(records)
        if not data:
            return
        n = _count(data)
        written = os.write(self._fd, data)
        while written < len(data):  # regular files write whole, but be exact
            written += os.write(self._fd, data[written:])
        self._size += len(data)
        self.records += n
        self._dirty = True

    def reset(self) -> None:
        """Drop everything (all records consumed): truncate to zero."""
        os.ftruncate(self._fd, 0)
        self._read = self._size = 0
        self.records = 0
        self._dirty = True

    def prepend(self, records: Sequence[bytes]) -> None:
        """Put ``records`` before the unconsumed rest (used on close with rows in memory)."""
        if not records:
            return
        rest = os.pread(self._fd, self._size - self._read, self._read) if not self.empty() \
            else b""
        head = b"".join(records)
        tmp = self.dir / "spool.log.tmp"
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._read = 0
        self._size = os.fstat(self._fd).st_size
        self.records = _count(head) + _count(rest)
        self._fsync_dir()

    def sync(self) -> None:
        if self.take_dirty():
            self.fsync()

    def take_dirty(self) -> bool:
        """Whether appends happened since the last call (call under the writer's lock)."""
        dirty, self._dirty = self._dirty, False
        return dirty

    def fsync(self) -> None:
        """Flush appended records to the disk (needs no lock)."""
        os.fsync(self._fd)

    # -- reading (writer thread) ---------------------------------------------------
    def read(self, max_records: int, max_bytes: int = 8 << 20) -> tuple[list[Record], int]:
        """Up to ``max_records`` records from the consume offset and the offset after them."""
        end = min(self._size, self._read + max(max_bytes, 1))
        data = os.pread(self._fd, end - self._read, self._read)
        out: list[Record] = []
        pos = 0
        while len(out) < max_records and pos + _HEAD.size <= len(data):
            size, crc = _HEAD.unpack_from(data, pos)
            start = pos + _HEAD.size
            if start + size > len(data):
                if not out:  # one record bigger than max_bytes: read it whole
                    data = os.pread(self._fd, start + size, self._read)
                else:
                    break
            payload = data[start:start + size]
            if zlib.crc32(payload) != crc:
                raise SpoolCorrupt(f"spool CRC mismatch at offset {self._read + pos}")
            out.append(decode_payload(payload))
            pos = start + size
        return out, self._read + pos

    def consume(self, offset: int, count: int) -> None:
        """Mark the records before ``offset`` as committed."""
        self._read = offset
        self.records -= count

    def close(self) -> None:
        try:
            self.sync()
        finally:
            os.close(self._fd)

    # -- recovery -------------------------------------------------------------------
    def _recover(self) -> None:
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        pos = 0
        count = 0
        bad_at: int | None = None
        while pos + _HEAD.size <= len(data):
            n, crc = _HEAD.unpack_from(data, pos)
            start = pos + _HEAD.size
            if start + n > len(data):
                break  # torn tail: the writer died mid-record
            payload = data[start:start + n]
            if zlib.crc32(payload) != crc:
                bad_at = pos
                break
            try:
                decode_payload(payload)
            except SpoolCorrupt:
                bad_at = pos
                break
            pos = start + n
            count += 1
        if bad_at is not None:
            aside = self.dir / f"spool.corrupt.{time.time_ns()}"
            aside.write_bytes(data[bad_at:])
            self.corrupt_bytes = len(data) - bad_at
        if pos != size:
            os.ftruncate(self._fd, pos)
        self._size = pos
        self.records = count

    def _fsync_dir(self) -> None:
        try:
            dfd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _count(data: bytes) -> int:
    n = pos = 0
    while pos + _HEAD.size <= len(data):
        size, _ = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size + size
        n += 1
    return n
