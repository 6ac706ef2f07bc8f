"""Background historian writer: bounded queue in memory, spool on disk, batched commits.

Usable from the asyncio gateway: every ``put_*`` only encodes the row and appends it to a
bounded in-memory queue, or — when the queue is full, or rows are already waiting in the
spool — to the local spool file (:mod:`gateway.historian.spool`). It waits at most
``put_timeout_s`` for queue room (0 by default: never waits) and never drops a row it
accepted; it raises :class:`~gateway.errors.HistorianError` only when it could neither queue
nor spool (writer closed, disk full), i.e. when it did not accept the row.

One thread commits in acceptance order. The logical FIFO is
``[batch in flight] + [queue] + [spool]``; invariants:

* everything in the queue is older than everything in the spool (a producer goes to the
  spool as soon as the spool is not empty, and only the writer empties it);
* when a commit fails because the database is unreachable or slow, the batch and the whole
  queue move to the spool (if it is empty; else they stay in memory: they are older than
  it), so during an outage memory holds at most one batch plus ``max_queue`` rows and
  everything else is on disk;
* the spool is replayed in order once the queue is drained, then truncated;
* on :meth:`close`, rows still in memory are written in front of the spool, so the next
  start (same spool directory) replays them first.

Hot path: :meth:`HistorianWriter.put_snapshot` (raw and corrected rows of one snapshot),
:meth:`HistorianWriter.put_state` and :meth:`HistorianWriter.put_forecasts` take one lock
and keep the values; the writer thread encodes them (blobs, flagged counts, JSON) when it
takes the batch, so the producer's loop pays neither the encoding nor a writer wake-up per
row (the writer is woken when the queue turns non-empty or a batch is full, and otherwise
lingers).

Back-pressure is bounded and counted (:class:`HistorianStats`): ``queue_full`` counts puts
that found the queue full, ``spooled`` rows that went to disk. Replays are idempotent
(unique keys), so a batch whose commit outcome is unknown (connection reset during COMMIT)
is simply written again. Rows the database rejects (a driver data error, never an outage)
are isolated one by one and kept in ``rejected.log`` beside the spool (same format).
Durability: a row in the spool survives a killed process; rows in the queue (at most
``max_queue``) survive a clean :meth:`close` but not ``kill -9``.

Honesty: :meth:`HistorianWriter.start` connects once; what no retry can cure (access
denied, an unwritable path, a spool path that is a file) raises
:class:`~gateway.historian.base.Misconfigured` there instead of spooling for ever. A
database that stops answering is noticed by the backend's read/write timeouts (MySQL) and
treated as an outage; the writer's lock is never held across a database call, and the
move of the queue to the spool encodes outside it, so a producer never waits for the
database. ``stats()`` (exported as metrics by :mod:`gateway.historian.telemetry`) says
whether the database takes commits, and reports the last error with secrets redacted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import HistorianError
from gateway.historian.backends import open_backend
from gateway.historian.base import (
    Backend,
    Misconfigured,
    Rejected,
)
from gateway.historian.redact import redact
from gateway.historian.schema import (
    FLAGGED_MASK,
    Row,
    encode_f64,
    encode_u32,
    expand,
    finite_or_none,
    json_object,
    json_vector,
)
from gateway.historian.spool import Record, Spool, encode_record

log = logging.getLogger("gridtwin.historian")

#: record kind of a queued :class:`_Lazy` (never committed or spooled as such)
LAZY = "lazy"


class _Lazy:
    """Rows whose encoding is deferred to the writer thread: ``fn(*args)`` gives them."""

    __slots__ = ("args", "fn", "rows")

    def __init__(self, fn: Callable[..., list[Record]], args: tuple[Any, ...],
                 rows: int) -> None:
        self.fn = fn
        self.args = args
        self.rows = rows


def _materialize(recs: Sequence[Record] | deque[Record]) -> list[Record]:
    """``recs`` with every deferred record replaced by its encoded rows (same order)."""
    out: list[Record] = []
    for kind, row in recs:
        if kind == LAZY:
            lz = row[0]
            assert isinstance(lz, _Lazy)
            out.extend(lz.fn(*lz.args))
        else:
            out.append((kind, row))
    return out


def _measurement_row(rid: int, seq: int, src: float, arr: float, values: np.ndarray,
                    flags: np.ndarray) -> Row:
    f = np.asarray(flags, dtype=np.uint32)
    return (rid, seq, src, arr, len(f), int(np.count_nonzero(f & FLAGGED_MASK)),
            encode_f64(values), encode_u32(f))


def _corrected_row(rid: int, seq: int, src: float, values: np.ndarray,
                   flags: np.ndarray) -> Row:
    f = np.asarray(flags, dtype=np.uint32)
    return (rid, seq, src, len(f), int(np.count_nonzero(f & FLAGGED_MASK)),
            encode_f64(values), encode_u32(f))


def _snapshot_rows(rid: int, seq: int, src: float, arr: float, raw_v: np.ndarray,
                   raw_f: np.ndarray, v: np.ndarray, f: np.ndarray) -> list[Record]:
    return [("measurements", _measurement_row(rid, seq, src, arr, raw_v, raw_f)),
            ("corrected", _corrected_row(rid, seq, src, v, f))]


def _forecast_rows(rid: int, seq: int, t: float, step: int, target: float,
                   p_mw: Mapping[str, float], sigma_mw: Mapping[str, float] | None
                   ) -> list[Record]:
    return [("forecasts", (rid, seq, t, step, target, json_object(p_mw),
                           None if sigma_mw is None else json_object(sigma_mw)))]


def _state_rows(rid: int, seq: int, src: float, vm: np.ndarray, va: np.ndarray,
                chi2: float | None, iterations: int, converged: bool, deadline_met: bool,
                timings: Mapping[str, float] | None, topology: str | None = None
                ) -> list[Record]:
    tj = None
    if timings:
        tj = json.dumps({k: finite_or_none(float(v)) for k, v in timings.items()})
    return [("states", (
        rid, seq, src, int(np.size(vm)), json_vector(vm), json_vector(va),
        finite_or_none(None if chi2 is None else float(chi2)), int(iterations),
        int(bool(converged)), int(bool(deadline_met)), tj, topology))]


@dataclass(frozen=True)
class ChannelInfo:
    """One measurement channel: ``idx`` is its position in the value/flag vectors."""

    idx: int
    name: str
    meter: str = ""
    kind: str = ""
    quantity: str = ""
    unit: str = ""
    bus: int | None = None
    branch: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class MeterInfo:
    meter: str
    kind: str = ""
    bus: int | None = None
    branch: int | None = None
    end: int | None = None
    quantities: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """What a run records about itself (a ``runs`` row plus its model tables)."""

    name: str = ""
    config_digest: str = ""
    config_toml: str = ""
    version: str = ""
    host: str = field(default_factory=socket.gethostname)
    channels: Sequence[ChannelInfo] = ()
    meters: Sequence[MeterInfo] = ()
    bus_ids: Sequence[int] = ()  # external ids, in state-vector order
    base_kv: Sequence[float] = ()
    note: str = ""


def run_records(info: RunInfo, rid: int, started: float) -> list[Record]:
    """The rows that describe a run (``runs``, ``meters``, ``channels``, ``buses``). The
    config text may hold credentials (database, bus, MQTT URLs): it is stored redacted."""
    recs: list[Record] = [("runs", (
        rid, started, info.name, info.config_digest, redact(info.config_toml), info.version,
        info.host, len(info.channels), len(info.bus_ids), redact(info.note)))]
    for m in info.meters:
        recs.append(("meters", (rid, m.meter, m.kind, m.bus, m.branch, m.end,
                                ",".join(m.quantities))))
    for c in info.channels:
        recs.append(("channels", (rid, int(c.idx), c.name, c.meter, c.kind, c.quantity,
                                  c.unit, c.bus, c.branch, c.end)))
    kv = list(info.base_kv) + [None] * (len(info.bus_ids) - len(info.base_kv))
    for i, (b, k) in enumerate(zip(info.bus_ids, kv, strict=True)):
        recs.append(("buses", (rid, i, int(b), None if k is None else float(k))))
    return recs


def run_info_from_config(cfg: Any, *, note: str = "") -> RunInfo:
    """A :class:`RunInfo` from a :class:`gateway.config.TwinConfig` (read by attribute)."""
    from importlib import metadata

    try:
        version = metadata.version("gridtwin")
    except metadata.PackageNotFoundError:
        version = ""
    channels = [ChannelInfo(c.index, c.name, c.meter, c.kind, c.quantity, c.unit,
                            c.bus, c.branch, c.end) for c in cfg.channels]
    meters = [MeterInfo(m.id, m.kind, m.bus, m.branch, m.end, tuple(m.quantities))
              for m in cfg.meters]
    net = cfg.network
    return RunInfo(
        name=cfg.name, config_digest=cfg.digest, config_toml=getattr(cfg, "text", ""),
        version=version, channels=channels, meters=meters,
        bus_ids=[int(b) for b in net.bus_ids], base_kv=[float(k) for k in net.base_kv],
        note=note,
    )


@dataclass
class HistorianStats:
    """Counters since the writer started (rows = accepted records)."""

    accepted: int = 0  # rows put_* accepted (plus rows found in the spool at start)
    committed: int = 0  # rows committed to the database
    rejected: int = 0  # rows the database refused (kept in rejected.log)
    spooled: int = 0  # rows written to the spool file
    replayed: int = 0  # rows committed from the spool
    queue_full: int = 0  # puts that found the queue full (back-pressure events)
    batches: int = 0  # committed transactions
    db_errors: int = 0  # failed commits / connects (outage or slowness)
    connects: int = 0  # successful connections: the first, and every recovery
    queue_depth: int = 0
    queue_max: int = 0
    spool_records: int = 0
    spool_bytes: int = 0
    #: connected and the last database operation succeeded (a failed or timed-out
    #: commit clears it until the next success)
    connected: bool = False
    last_commit_time: float | None = None  # clock time of the last successful commit
    last_error: str | None = None  # the last database error, secrets redacted

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def default_spool_dir(url: str) -> Path:
    """``<db file>.spool`` for SQLite, ``./historian-spool/<host>-<port>-<db>`` for MySQL."""
    if url.lower().startswith("sqlite:///"):
        from gateway.historian.sqlite import sqlite_path

        path = sqlite_path(url)
        return Path("historian-spool-memory") if path == ":memory:" else Path(path + ".spool")
    from gateway.historian.mysql import parse_mysql_url

    a = parse_mysql_url(url)
    return Path("historian-spool") / f"{a['host']}-{a['port']}-{a['database']}"


class HistorianWriter:
    """See the module docstring. ``start()`` before ``put_*``; ``close()`` at the end."""

    def __init__(
        self,
        url: str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        max_queue: int = 8192,
        batch_rows: int = 1000,
        linger_s: float = 0.02,
        put_timeout_s: float = 0.0,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        backend: Backend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queue < 1 or batch_rows < 1:
            raise ValueError("max_queue and batch_rows must be positive")
        self.url = url
        self.backend = backend if backend is not None else open_backend(url)
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir(url)
        self.max_queue = max_queue
        self.batch_rows = batch_rows
        self.linger_s = linger_s
        self.put_timeout_s = put_timeout_s
        self.backoff_s = backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._queue: deque[Record] = deque()
        self._stats = HistorianStats(queue_max=max_queue)
        self._processed = 0  # committed + rejected (what flush waits for)
        self._closing = False
        self._abort = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._spool: Spool | None = None
        self._lockfile: int | None = None
        self._last_event_no = 0
        self._db_ok = False  # the last database operation succeeded
        self._diverting = False  # the writer is moving the queue to the spool
        self.run_id: int | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> HistorianWriter:
        """Lock and open the spool (rows left by a previous process are replayed first),
        connect once, start the writer thread. The database need not be reachable (rows
        spool until it is); one that refuses us for good, or a spool path that cannot be
        used, raises :class:`~gateway.historian.base.Misconfigured`."""
        if self._thread is not None:
            return self
        spool = self._open_spool()
        try:
            self._probe()
        except Misconfigured:
            self._release_spool()
            raise
        if spool.corrupt_bytes:
            log.error("historian spool %s: %d corrupt bytes moved aside", spool.path,
                      spool.corrupt_bytes)
        self._stats.accepted = spool.records
        self._thread = threading.Thread(target=self._run, name="historian-writer",
                                        daemon=True)
        self._thread.start()
        return self

    def _open_spool(self) -> Spool:
        """Lock and open the spool directory; a path that cannot be one is Misconfigured
        (a file in the way, no permission): no use starting a writer that cannot spool."""
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spool_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise Misconfigured(
                f"historian spool directory {self.spool_dir} cannot be used: "
                f"{exc.strerror or exc} (give another one with --spool-dir)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise HistorianError(
                f"spool directory {self.spool_dir} is in use by another historian writer "
                "(give each gateway its own spool_dir)") from exc
        self._lockfile = fd
        try:
            self._spool = Spool(self.spool_dir)
        except (OSError, HistorianError) as exc:
            self._release_spool()
            raise Misconfigured(
                f"historian spool {self.spool_dir / 'spool.log'} cannot be used: {exc}"
            ) from exc
        return self._spool

    def _release_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def _probe(self) -> None:
        """Connect once before the writer thread starts: a database that refuses us for
        good (access denied, unwritable file, schema too new) raises Misconfigured now;
        one that is merely down is an outage — rows spool until it is back."""
        try:
            self.backend.connect()
        except Misconfigured:
            self.backend.close()
            raise
        except HistorianError as exc:
            self._note_error(exc)
            return
        with self._lock:
            self._db_ok = True
            self._stats.connects += 1

    def __enter__(self) -> HistorianWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row accepted before the call is committed (or rejected);
        False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._stats.accepted
            self._not_empty.notify_all()
            while self._processed < target:
                if self._thread is None or not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(0.1 if left is None else min(left, 0.1))
            return True

    def close(self, timeout: float = 10.0) -> bool:
        """Commit what is accepted; whatever is left goes to the spool (replayed by the next
        start). True when everything was committed. The wait ends when ``timeout`` passes
        without a commit: a database that is slow at shutdown (a loaded machine) but still
        committing gets its rows, only one that stopped answering leaves them spooled."""
        if self._closed:
            return True
        flushed = True
        if self._thread is not None:
            while True:
                before = self._processed
                flushed = self.flush(timeout)
                if flushed or self._processed == before:
                    break
        with self._lock:
            self._closing = True
            self._abort = True
            self._not_empty.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._closed = True
        self._release_spool()
        self.backend.close()
        return flushed

    def stats(self) -> HistorianStats:
        with self._lock:
            s = HistorianStats(**asdict(self._stats))
            s.queue_depth = len(self._queue)
            if self._spool is not None:
                s.spool_records = self._spool.records
                s.spool_bytes = self._spool.pending_bytes
            s.connected = self._db_ok and self.backend.connected
            return s

    # -- producers ------------------------------------------------------------------------
    def start_run(self, info: RunInfo, *, started: float | None = None,
                  run_id: int | None = None) -> int:
        """Record a new run (rows for ``runs``, ``meters``, ``channels``, ``buses``) and make
        it the default ``run_id`` of the ``put_*`` calls. ``run_id`` defaults to the start
        time in epoch microseconds."""
        t = self._clock() if started is None else started
        rid = int(t * 1e6) if run_id is None else int(run_id)
        recs = run_records(info, rid, float(t))
        for r in recs:
            self._accept(*r)
        self.run_id = rid
        return rid

    def put_measurements(self, seq: int, source_time: float, arrival_time: float,
                         values: np.ndarray, flags: np.ndarray, *,
                         run_id: int | None = None) -> None:
        """One raw snapshot: ``values`` float64[m] in channel order, ``flags`` uint32[m]."""
        self._accept("measurements", _measurement_row(
            self._rid(run_id), int(seq), float(source_time), float(arrival_time), values,
            flags))

    def put_corrected(self, seq: int, source_time: float, values: np.ndarray,
                      flags: np.ndarray, *, run_id: int | None = None) -> None:
        """One cleaned snapshot (after detection/correction), same layout as raw."""
        self._accept("corrected", _corrected_row(
            self._rid(run_id), int(seq), float(source_time), values, flags))

    def put_snapshot(self, seq: int, source_time: float, arrival_time: float,
                     raw_values: np.ndarray, raw_flags: np.ndarray, values: np.ndarray,
                     flags: np.ndarray, *, run_id: int | None = None) -> None:
        """One snapshot raw (as :meth:`put_measurements`) and cleaned (as
        :meth:`put_corrected`) in one call: the two rows are accepted together and
        encoded by the writer thread. The arrays are kept by reference until then: the
        caller hands them over and must not modify them afterwards."""
        self._accept_lazy(_Lazy(_snapshot_rows, (
            self._rid(run_id), int(seq), float(source_time), float(arrival_time),
            raw_values, raw_flags, values, flags), 2))

    def put_forecasts(self, seq: int, time: float, p_mw: Mapping[str, float],
                      sigma_mw: Mapping[str, float] | None = None, *, step: int = 0,
                      target_time: float | None = None, run_id: int | None = None) -> None:
        """PV forecasts of all plants issued at ``time`` for ``target_time`` (default
        ``time``), horizon step ``step``: ``p_mw``/``sigma_mw`` map plant name -> MW."""
        self._accept_lazy(_Lazy(_forecast_rows, (
            self._rid(run_id), int(seq), float(time), int(step),
            float(time if target_time is None else target_time), dict(p_mw),
            None if sigma_mw is None else dict(sigma_mw)), 1))

    def put_state(self, seq: int, source_time: float, vm: np.ndarray, va: np.ndarray, *,
                  chi2: float | None = None, iterations: int = 0, converged: bool = True,
                  deadline_met: bool = True, timings: Mapping[str, float] | None = None,
                  topology: str | None = None, run_id: int | None = None) -> None:
        """One estimate: ``vm`` pu and ``va`` rad per bus (state-vector order). The
        vectors are copied; the JSON is written by the writer thread."""
        if np.shape(vm) != np.shape(va):
            raise ValueError("vm and va differ in length")
        self._accept_lazy(_Lazy(_state_rows, (
            self._rid(run_id), int(seq), float(source_time), np.array(vm, np.float64),
            np.array(va, np.float64), chi2, int(iterations), bool(converged),
            bool(deadline_met), dict(timings) if timings else None, topology), 1))

    def put_event(self, time: float, kind: str, source: str = "",
                  detail: Mapping[str, Any] | None = None, *,
                  run_id: int | None = None) -> None:
        """One event (``bad_data``, ``deadline_missed``, ``estimator_restarted``,
        ``stream_gap``, ...); ``detail`` is stored as a JSON object."""
        dj = None if detail is None else json.dumps(detail, default=str, allow_nan=False)
        with self._lock:
            # unique across processes and runs: epoch microseconds, strictly increasing
            no = max(self._last_event_no + 1, int(self._clock() * 1e6))
            self._last_event_no = no
        self._accept("events", (self._rid(run_id), no, float(time), kind, source, dj))

    def put_device(self, time: float, d: Mapping[str, Any], *,
                   run_id: int | None = None) -> None:
        """One device's registry entry (``gateway.devices.Device.as_json``) at ``time``."""
        def dump(v: Any) -> str:
            return json.dumps(v, default=str)

        self._accept("devices", (
            self._rid(run_id), float(time), str(d["device"]), str(d["id"]), str(d["kind"]),
            str(d["quality"]), int(bool(d["online"])), d.get("last_seen"),
            int(d.get("messages") or 0), dump(d.get("errors") or {}),
            dump(d.get("health") or {}),
            dump({k: d.get(k) for k in ("bus", "branch", "model", "firmware", "period_s",
                                        "clock_offset_s", "config") if d.get(k)})))

    def _rid(self, run_id: int | None) -> int:
        rid = self.run_id if run_id is None else run_id
        if rid is None:
            raise HistorianError("no run: call start_run() before put_*()")
        return rid

    def _accept_lazy(self, lazy: _Lazy) -> None:
        """Accept ``lazy.rows`` rows at once (queued unencoded; see :meth:`_accept`)."""
        with self._lock:
            if self._closing or self._closed or self._spool is None:
                raise HistorianError("historian writer is not running (start() it; "
                                     "or it was closed)")
            spool = self._spool
            q = self._queue
            if spool.empty() and (len(q) < self.max_queue or self._diverting):
                q.append((LAZY, (lazy,)))
                self._stats.accepted += lazy.rows
                # wake the writer only when it has something new to do: the queue was
                # empty (it is idle) or a batch is full (it is lingering for one)
                if len(q) == 1 or len(q) >= self.batch_rows:
                    self._not_empty.notify()
                return
        for kind, row in lazy.fn(*lazy.args):  # queue full or spooling: encode here
            self._accept(kind, row)

    def _accept(self, kind: str, row: Row) -> None:
        with self._lock:
            if self._closing or self._closed or self._spool is None:
                raise HistorianError("historian writer is not running (start() it; "
                                     "or it was closed)")
            spool = self._spool
            if spool.empty() and len(self._queue) >= self.max_queue and self.put_timeout_s > 0:
                deadline = time.monotonic() + self.put_timeout_s
                while spool.empty() and len(self._queue) >= self.max_queue:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closing:
                        break
                    self._not_full.wait(left)
            if spool.empty() and (len(self._queue) < self.max_queue or self._diverting):
                self._queue.append((kind, row))
                self._stats.accepted += 1
                n = len(self._queue)
                if n == 1 or n >= self.batch_rows:  # see _accept_lazy
                    self._not_empty.notify()
                return
            if len(self._queue) >= self.max_queue:
                self._stats.queue_full += 1
            try:
                spool.append([encode_record(kind, row)])
            except OSError as exc:
                raise HistorianError(
                    f"queue full and spool {spool.path} not writable: {exc}") from exc
            self._stats.spooled += 1
            self._stats.accepted += 1
            self._not_empty.notify()

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        spool = self._spool
        assert spool is not None
        pending: list[Record] = []
        from_spool = False
        spool_end = 0
        delay = self.backoff_s[0]
        try:
            while True:
                if not pending:
                    with self._lock:
                        while not self._queue and spool.empty() and not self._closing:
                            self._not_empty.wait()
                        if self._queue:
                            # linger a little for a fuller batch (fewer commits at low rate)
                            until = time.monotonic() + self.linger_s
                            while len(self._queue) < self.batch_rows and not self._closing:
                                left = until - time.monotonic()
                                if left <= 0:
                                    break
                                self._not_empty.wait(left)
                            n = min(len(self._queue), self.batch_rows)
                            pending = [self._queue.popleft() for _ in range(n)]
                            from_spool = False
                            self._not_full.notify_all()
                        elif not spool.empty():
                            from_spool = True
                        elif self._closing:
                            return
                    if pending:  # encode deferred rows here, outside the lock
                        pending = _materialize(pending)
                    if from_spool and not pending:
                        pending, spool_end = spool.read(self.batch_rows)
                    if not pending:
                        continue
                if self._abort:
                    break
                was_ok = self._db_ok
                ok = self._commit(pending)
                if ok:
                    delay = self.backoff_s[0]
                    with self._lock:
                        if not was_ok:
                            self._stats.connects += 1
                        if from_spool:
                            spool.consume(spool_end, len(pending))
                            self._stats.replayed += len(pending)
                            if spool.empty():
                                spool.reset()
                        self._processed += len(pending)
                        self._done.notify_all()
                        dirty = spool.take_dirty()
                    pending = []
                else:
                    if not from_spool and self._divert(pending):
                        pending = []
                        from_spool = True
                    with self._lock:
                        dirty = spool.take_dirty()
                    if dirty:
                        spool.fsync()
                        dirty = False
                    if self._abort:
                        break
                    self._wake.wait(delay)
                    self._wake.clear()
                    delay = min(delay * 2, self.backoff_s[1])
                if dirty:  # spooled rows reach the disk after every commit attempt
                    spool.fsync()
        except Exception:
            log.exception("historian writer thread failed; rows stay in the spool")
            raise
        finally:
            self._shutdown(pending if not from_spool else [])

    def _divert(self, pending: list[Record]) -> bool:
        """Outage: move the failed batch and the queue to the spool, in order, when the
        spool is empty (else they stay in memory: they are older than it). The rows are
        encoded outside the lock, so producers never wait for it; rows they queue
        meanwhile are newer and follow (the queue may exceed ``max_queue`` by them)."""
        spool = self._spool
        assert spool is not None
        with self._lock:
            if not spool.empty():
                return False
            taken = list(self._queue)
            self._queue.clear()
            self._diverting = True
            self._not_full.notify_all()
        try:
            recs = [encode_record(k, r) for k, r in pending]
            recs.extend(encode_record(k, r) for k, r in _materialize(taken))
        except BaseException:
            with self._lock:
                self._queue.extendleft(reversed(taken))
                self._diverting = False
            raise
        with self._lock:
            self._diverting = False
            recs.extend(encode_record(k, r) for k, r in _materialize(self._queue))
            self._queue.clear()
            spool.append(recs)
            self._stats.spooled += len(recs)
        return True

    def _shutdown(self, pending: list[Record]) -> None:
        spool = self._spool
        assert spool is not None
        with self._lock:
            self._closing = True
            mem = [encode_record(k, r) for k, r in _materialize(pending)]
            mem.extend(encode_record(k, r) for k, r in _materialize(self._queue))
            self._queue.clear()
            if mem:
                if spool.empty():
                    spool.append(mem)
                else:
                    spool.prepend(mem)
                self._stats.spooled += len(mem)
            spool.sync()
            self._not_full.notify_all()
            self._done.notify_all()

    def _commit(self, pending: list[Record]) -> bool:
        """Write ``pending`` in one transaction; False when the database is unavailable."""
        try:
            batch = self._expand(pending)
            self.backend.write(batch)
        except Rejected as exc:
            return self._isolate(pending, exc)
        except HistorianError as exc:
            self._note_error(exc)
            return False
        with self._lock:
            self._stats.committed += len(pending)
            self._stats.batches += 1
            self._db_ok = True
            self._stats.last_commit_time = self._clock()
        return True

    def _isolate(self, pending: list[Record], first: Exception) -> bool:
        """Commit rows one by one; rows the database refuses go to ``rejected.log``."""
        log.warning("historian: batch refused (%s); isolating %d rows", first, len(pending))
        for rec in pending:
            try:
                self.backend.write(self._expand([rec]))
            except Rejected as exc:
                log.error("historian: %s row rejected: %s", rec[0], exc)
                with open(self.spool_dir / "rejected.log", "ab") as f:
                    f.write(encode_record(*rec))
                with self._lock:
                    self._stats.rejected += 1
                continue
            except HistorianError as exc:
                self._note_error(exc)
                return False  # retried as a whole later; committed rows are idempotent
            with self._lock:
                self._stats.committed += 1
        with self._lock:
            self._stats.batches += 1
            self._db_ok = True
            self._stats.last_commit_time = self._clock()
        return True

    def _note_error(self, exc: Exception) -> None:
        text = redact(str(exc))
        with self._lock:
            first = self._db_ok or self._stats.last_error is None
            self._db_ok = False
            self._stats.db_errors += 1
            self._stats.last_error = text
        if first:
            log.warning("historian: database unavailable, spooling: %s", text)

    def _expand(self, pending: Sequence[Record]) -> dict[str, list[Row]]:
        out: dict[str, list[Row]] = {}
        for kind, row in pending:
            expand(kind, row, out)
        return out
