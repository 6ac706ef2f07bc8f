"""Reading the twin database back: arrays for a time range, CSV/Parquet export, training data.

Times are epoch seconds; a range is ``start <= time < end`` (None: unbounded). Without a
``run_id`` every run with rows in the range is read; runs with a different channel (or bus)
layout in one range are an error naming them (pass ``run_id``).

For the trainers (models issue)::

    with HistorianReader("sqlite:///twin.db") as db:
        td = db.training_data(start, end)     # raw + corrected + states, aligned by seq
        td.raw, td.raw_flags, td.corrected, td.vm, td.names, td.bus_ids ...
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import HistorianError
from gateway.historian.backends import open_backend
from gateway.historian.base import Backend
from gateway.historian.schema import json_at, vector_from_json

#: what ``export``/``gridtwin history`` can write
EXPORT_KINDS = ("measurements", "corrected", "states", "buses", "events", "forecasts",
                "flagged", "runs")


@dataclass
class MeasurementFrame:
    """Snapshots of one layout: ``values[k, i]`` is channel ``names[i]`` of snapshot ``k``."""

    names: list[str]
    run_id: np.ndarray  # int64[k]
    seq: np.ndarray  # int64[k]
    source_time: np.ndarray  # float64[k]
    arrival_time: np.ndarray  # float64[k] (NaN for corrected rows)
    values: np.ndarray  # float64[k, m]
    flags: np.ndarray  # uint32[k, m]

    def __len__(self) -> int:
        return len(self.seq)

    def to_pandas(self) -> Any:
        import pandas as pd

        cols: dict[str, Any] = {"run_id": self.run_id, "seq": self.seq,
                                "source_time": self.source_time,
                                "arrival_time": self.arrival_time}
        for i, n in enumerate(self.names):
            cols[n] = self.values[:, i]
        for i, n in enumerate(self.names):
            cols[f"{n}.flags"] = self.flags[:, i]
        return pd.DataFrame(cols)


@dataclass
class StateFrame:
    """Estimates of one bus layout: ``vm[k, j]`` (pu) and ``va[k, j]`` (rad) of ``bus_ids[j]``."""

    bus_ids: list[int]
    run_id: np.ndarray
    seq: np.ndarray
    source_time: np.ndarray
    vm: np.ndarray
    va: np.ndarray
    chi2: np.ndarray  # NaN where not recorded
    iterations: np.ndarray
    converged: np.ndarray  # bool
    deadline_met: np.ndarray  # bool
    #: label of the switch states each estimate used (None: not recorded)
    topology: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seq)

    def to_pandas(self) -> Any:
        import pandas as pd

        cols: dict[str, Any] = {"run_id": self.run_id, "seq": self.seq,
                                "source_time": self.source_time}
        for j, b in enumerate(self.bus_ids):
            cols[f"vm_{b}"] = self.vm[:, j]
        for j, b in enumerate(self.bus_ids):
            cols[f"va_{b}"] = self.va[:, j]
        cols.update(chi2=self.chi2, iterations=self.iterations, converged=self.converged,
                    deadline_met=self.deadline_met, topology=self.topology)
        return pd.DataFrame(cols)


@dataclass
class TrainingData:
    """Raw, corrected and estimated data of a range, aligned row by row on ``seq``."""

    names: list[str]
    bus_ids: list[int]
    seq: np.ndarray
    source_time: np.ndarray
    raw: np.ndarray  # float64[k, m]
    raw_flags: np.ndarray  # uint32[k, m]
    corrected: np.ndarray  # float64[k, m], NaN where no corrected row
    corrected_flags: np.ndarray  # uint32[k, m], 0 where no corrected row
    vm: np.ndarray  # float64[k, n], NaN where no state
    va: np.ndarray


def _where(start: float | None, end: float | None, run_id: int | None,
           col: str = "source_time", *, alias: str = "",
           extra: Sequence[tuple[str, object]] = ()) -> tuple[str, list[object]]:
    """`` WHERE …`` (or "") for the range and run on table ``alias`` (columns prefixed
    ``alias.``), then the ``extra`` (condition, parameter) pairs; and its parameters."""
    p = f"{alias}." if alias else ""
    conds: list[str] = []
    params: list[object] = []
    if start is not None:
        conds.append(f"{p}{col} >= ?")
        params.append(float(start))
    if end is not None:
        conds.append(f"{p}{col} < ?")
        params.append(float(end))
    if run_id is not None:
        conds.append(f"{p}run_id = ?")
        params.append(int(run_id))
    for cond, param in extra:
        conds.append(cond)
        params.append(param)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params


def _vectors(texts: Sequence[str | None], width: int) -> np.ndarray:
    out = np.full((len(texts), width), np.nan)
    for i, t in enumerate(texts):
        v = vector_from_json(t)
        out[i, :len(v)] = v[:width]
    return out


def _stack(blobs: Sequence[bytes], width: int, dtype: str) -> np.ndarray:
    if not blobs:
        return np.zeros((0, width), dtype=dtype)
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), width).copy()


class HistorianReader:
    """Read-only access; opens its own connection (safe beside a running writer)."""

    def __init__(self, url_or_backend: str | Backend) -> None:
        if isinstance(url_or_backend, str):
            if url_or_backend.lower().startswith("sqlite:///"):
                from gateway.historian.sqlite import sqlite_path

                path = sqlite_path(url_or_backend)
                if path != ":memory:" and not Path(path).exists():
                    raise HistorianError(f"no twin database at {path} (check --db/the URL)")
            self.db: Backend = open_backend(url_or_backend)
        else:
            self.db = url_or_backend

    def __enter__(self) -> HistorianReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # -- model tables ----------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT run_id, started, name, config_digest, version, host, n_channels, n_buses,"
            " note FROM runs ORDER BY started, run_id")
        keys = ("run_id", "started", "name", "config_digest", "version", "host",
                "n_channels", "n_buses", "note")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def latest_run(self) -> int | None:
        rows = self.db.query("SELECT MAX(run_id) FROM runs")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def channel_names(self, run_id: int) -> list[str]:
        rows = self.db.query("SELECT idx, name FROM channels WHERE run_id = ? ORDER BY idx",
                             (run_id,))
        return [str(r[1]) for r in rows]

    def channels(self, run_id: int) -> list[dict[str, Any]]:
        keys = ("idx", "name", "meter", "kind", "quantity", "unit", "bus", "branch", "end_bus")
        rows = self.db.query(
            f"SELECT {', '.join(keys)} FROM channels WHERE run_id = ? ORDER BY idx", (run_id,))
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def bus_ids(self, run_id: int) -> list[int] | None:
        return self.db.bus_ids(run_id)

    # -- measurements ------------------------------------------------------------------------
    def measurements(self, start: float | None = None, end: float | None = None, *,
                     run_id: int | None = None, corrected: bool = False) -> MeasurementFrame:
        """Raw (or ``corrected``) snapshots in the range, ordered by source time."""
        table = "corrected" if corrected else "measurements"
        arrival = "NULL" if corrected else "arrival_time"
        where, params = _where(start, end, run_id)
        rows = self.db.query(
            f"SELECT run_id, seq, source_time, {arrival}, n, vals, flags FROM {table}{where}"
            " ORDER BY source_time, id", params)
        runs = sorted({int(r[0]) for r in rows})
        widths = {int(r[4]) for r in rows}
        names = self._common_names(runs, widths, table)
        m = widths.pop() if widths else len(names)
        return MeasurementFrame(
            names=names,
            run_id=np.array([r[0] for r in rows], dtype=np.int64),
            seq=np.array([r[1] for r in rows], dtype=np.int64),
            source_time=np.array([r[2] for r in rows], dtype=np.float64),
            arrival_time=np.array([np.nan if r[3] is None else r[3] for r in rows],
                                  dtype=np.float64),
            values=_stack([bytes(r[5]) for r in rows], m, "<f8"),
            flags=_stack([bytes(r[6]) for r in rows], m, "<u4"),
        )

    def _common_names(self, runs: list[int], widths: set[int], table: str) -> list[str]:
        layouts = {r: self.channel_names(r) for r in runs}
        distinct = {tuple(v) for v in layouts.values()}
        if len(distinct) > 1 or len(widths) > 1:
            raise HistorianError(
                f"{table} in this range come from runs with different channel layouts "
                f"({', '.join(map(str, runs))}): pass run_id")
        names = list(distinct.pop()) if distinct else []
        if widths and names and len(names) != next(iter(widths)):
            raise HistorianError(f"{table}: run channel table disagrees with the row width")
        if not names and widths:
            names = [f"ch{i}" for i in range(next(iter(widths)))]
        return names

    # -- states ------------------------------------------------------------------------------
    def states(self, start: float | None = None, end: float | None = None, *,
               run_id: int | None = None) -> StateFrame:
        """Estimates in the range (the wide ``states`` rows), ordered by source time."""
        where, params = _where(start, end, run_id)
        rows = self.db.query(
            "SELECT run_id, seq, source_time, n, vm, va, chi2, iterations, converged,"
            f" deadline_met, topology FROM states{where} ORDER BY source_time, id", params)
        runs = sorted({int(r[0]) for r in rows})
        widths = {int(r[3]) for r in rows}
        layouts = {tuple(self.db.bus_ids(r) or ()) for r in runs}
        if len(widths) > 1 or len(layouts) > 1:
            raise HistorianError(
                "states in this range come from runs with different bus layouts "
                f"({', '.join(map(str, runs))}): pass run_id")
        n = widths.pop() if widths else 0
        ids = list(layouts.pop()) if layouts else []
        if len(ids) != n:
            ids = list(range(n))
        return StateFrame(
            bus_ids=[int(b) for b in ids],
            run_id=np.array([r[0] for r in rows], dtype=np.int64),
            seq=np.array([r[1] for r in rows], dtype=np.int64),
            source_time=np.array([r[2] for r in rows], dtype=np.float64),
            vm=_vectors([r[4] for r in rows], n),
            va=_vectors([r[5] for r in rows], n),
            chi2=np.array([np.nan if r[6] is None else r[6] for r in rows], dtype=np.float64),
            iterations=np.array([r[7] for r in rows], dtype=np.int64),
            converged=np.array([bool(r[8]) for r in rows], dtype=bool),
            deadline_met=np.array([bool(r[9]) for r in rows], dtype=bool),
            topology=[r[10] for r in rows],
        )

    def bus_voltage(self, bus: int, start: float | None = None, end: float | None = None, *,
                    run_id: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(source_time, vm_pu, va_rad)`` of one bus (external id), extracted in SQL from
        the JSON state vectors (the documented example query)."""
        where, params = _where(start, end, run_id, alias="s",
                               extra=[("b.bus = ?", int(bus))])
        vm = json_at(self.db.dialect, "s.vm", "b.idx")
        va = json_at(self.db.dialect, "s.va", "b.idx")
        rows = self.db.query(
            f"SELECT s.source_time, {vm}, {va} FROM states s JOIN buses b"
            f" ON b.run_id = s.run_id{where} ORDER BY s.source_time, s.id", params)
        a = np.array([[np.nan if x is None else float(x) for x in r] for r in rows],
                     dtype=np.float64).reshape(-1, 3)
        return a[:, 0], a[:, 1], a[:, 2]

    # -- narrow tables ---------------------------------------------------------------------
    def bad_data(self, meter: str | None = None, start: float | None = None,
                 end: float | None = None, *, run_id: int | None = None,
                 mask: int = 0x1) -> list[dict[str, Any]]:
        """Flagged values (``flags & mask``; default BAD) with their channel, by time."""
        extra: list[tuple[str, object]] = [] if meter is None else [("c.meter = ?", meter)]
        extra.append(("(f.flags & ?) <> 0", int(mask)))
        where, params = _where(start, end, run_id, alias="f", extra=extra)
        sql = ("SELECT f.run_id, f.seq, f.source_time, f.stage, c.name, c.meter, f.value,"
               " f.flags FROM flagged f JOIN channels c"
               f" ON c.run_id = f.run_id AND c.idx = f.channel{where}"
               " ORDER BY f.source_time, f.id")
        keys = ("run_id", "seq", "source_time", "stage", "channel", "meter", "value", "flags")
        return [dict(zip(keys, r, strict=True)) for r in self.db.query(sql, params)]

    def events(self, start: float | None = None, end: float | None = None, *,
               kind: str | None = None, run_id: int | None = None) -> list[dict[str, Any]]:
        where, params = _where(start, end, run_id, col="time",
                               extra=[] if kind is None else [("kind = ?", kind)])
        keys = ("run_id", "event_no", "time", "kind", "source", "detail")
        out = []
        for r in self.db.query(f"SELECT {', '.join(keys)} FROM events{where} ORDER BY time, id",
                               params):
            d = dict(zip(keys, r, strict=True))
            d["detail"] = json.loads(str(d["detail"])) if d["detail"] is not None else None
            out.append(d)
        return out

    def forecasts(self, start: float | None = None, end: float | None = None, *,
                  plant: str | None = None, run_id: int | None = None) -> list[dict[str, Any]]:
        """Forecasts issued in the range, one dict per plant (long format)."""
        where, params = _where(start, end, run_id, col="time")
        keys = ("run_id", "seq", "time", "step", "target_time", "p_mw", "sigma_mw")
        rows = self.db.query(f"SELECT {', '.join(keys)} FROM forecasts{where} ORDER BY time, id",
                             params)
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            p = json.loads(d.pop("p_mw") or "{}")
            s = json.loads(d.pop("sigma_mw") or "{}")
            for name, value in p.items():
                if plant is None or name == plant:
                    out.append({**d, "plant": name, "p_mw": value, "sigma_mw": s.get(name)})
        return out

    # -- training -----------------------------------------------------------------------------
    def training_data(self, start: float | None = None, end: float | None = None, *,
                      run_id: int | None = None) -> TrainingData:
        """Raw snapshots of the range with the corrected values and the state of the same
        ``(run_id, seq)`` beside them (NaN where there is none)."""
        raw = self.measurements(start, end, run_id=run_id)
        cor = self.measurements(start, end, run_id=run_id, corrected=True)
        st = self.states(start, end, run_id=run_id)
        k, m = raw.values.shape
        pos = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(raw.run_id, raw.seq,
                                                                   strict=True))}
        corrected = np.full((k, m), np.nan)
        cflags = np.zeros((k, m), dtype=np.uint32)
        for j, key in enumerate(zip(cor.run_id.tolist(), cor.seq.tolist(), strict=True)):
            i = pos.get(key)
            if i is not None and cor.values.shape[1] == m:
                corrected[i] = cor.values[j]
                cflags[i] = cor.flags[j]
        n = st.vm.shape[1]
        vm = np.full((k, n), np.nan)
        va = np.full((k, n), np.nan)
        for j, key in enumerate(zip(st.run_id.tolist(), st.seq.tolist(), strict=True)):
            i = pos.get(key)
            if i is not None:
                vm[i] = st.vm[j]
                va[i] = st.va[j]
        return TrainingData(names=raw.names, bus_ids=st.bus_ids, seq=raw.seq,
                            source_time=raw.source_time, raw=raw.values, raw_flags=raw.flags,
                            corrected=corrected, corrected_flags=cflags, vm=vm, va=va)

    # -- export ------------------------------------------------------------------------------
    def frame(self, kind: str, start: float | None = None, end: float | None = None, *,
              run_id: int | None = None, bus: int | None = None) -> Any:
        """A pandas DataFrame of ``kind`` (one of :data:`EXPORT_KINDS`) in the range."""
        import pandas as pd

        if kind == "measurements":
            return self.measurements(start, end, run_id=run_id).to_pandas()
        if kind == "corrected":
            return self.measurements(start, end, run_id=run_id, corrected=True).to_pandas()
        if kind == "states":
            return self.states(start, end, run_id=run_id).to_pandas()
        if kind == "buses":  # long format: one row per state and bus
            st = self.states(start, end, run_id=run_id)
            ids = np.array(st.bus_ids, dtype=np.int64)
            pick = np.arange(len(ids)) if bus is None else np.flatnonzero(ids == bus)
            k, n = len(st), len(pick)
            return pd.DataFrame({
                "run_id": np.repeat(st.run_id, n), "seq": np.repeat(st.seq, n),
                "source_time": np.repeat(st.source_time, n), "bus": np.tile(ids[pick], k),
                "vm_pu": st.vm[:, pick].ravel(), "va_rad": st.va[:, pick].ravel()})
        if kind == "events":
            df = pd.DataFrame(self.events(start, end, run_id=run_id),
                              columns=["run_id", "event_no", "time", "kind", "source", "detail"])
            df["detail"] = [None if d is None else json.dumps(d) for d in df["detail"]]
            return df
        if kind == "forecasts":
            return pd.DataFrame(self.forecasts(start, end, run_id=run_id),
                                columns=["run_id", "seq", "time", "plant", "step",
                                         "target_time", "p_mw", "sigma_mw"])
        if kind == "flagged":
            return pd.DataFrame(self.bad_data(None, start, end, run_id=run_id, mask=0xFFFFFFFF),
                                columns=["run_id", "seq", "source_time", "stage", "channel",
                                         "meter", "value", "flags"])
        if kind == "runs":
            return pd.DataFrame(self.runs(), columns=["run_id", "started", "name",
                                                      "config_digest", "version", "host",
                                                      "n_channels", "n_buses", "note"])
        raise HistorianError(f"unknown export kind {kind!r}: use one of {', '.join(EXPORT_KINDS)}")

    def export(self, kind: str, path: str | Path | None, *, fmt: str | None = None,
               start: float | None = None, end: float | None = None,
               run_id: int | None = None, bus: int | None = None) -> int:
        """Write ``kind`` in the range to ``path`` (CSV, or Parquet for ``.parquet``/
        ``fmt="parquet"``; ``path`` None writes CSV to stdout). Returns the row count."""
        import sys

        df = self.frame(kind, start, end, run_id=run_id, bus=bus)
        if fmt is None:
            fmt = "parquet" if path is not None and str(path).endswith(".parquet") else "csv"
        if fmt == "parquet":
            if path is None:
                raise HistorianError("Parquet needs an output file (-o FILE.parquet)")
            try:
                df.to_parquet(path, index=False)
            except ImportError as exc:
                raise HistorianError(f"Parquet export needs pyarrow ({exc}): "
                                     "pip install 'gridtwin[parquet]'") from exc
        elif fmt == "csv":
            df.to_csv(sys.stdout if path is None else path, index=False)
        else:
            raise HistorianError(f"unknown format {fmt!r}: use csv or parquet")
        return len(df)
