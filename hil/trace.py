"""Scenario trace files: one ``.npz`` per scenario (contract: docs/trace-format.md).

Everything is in the config's channel order and engineering units. The file is a plain
numpy ``.npz`` (``np.load`` reads it) written deterministically: fixed zip timestamps and
entry order, so the same scenario and seed give a byte-identical file.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.errors import ScenarioError

FORMAT_VERSION = 1
#: extras column of a switch status (``status__sw_8_21``: 1 closed, 0 open, NaN not
#: sent), what the emulator puts on a status point of that name
STATUS_PREFIX = "status__"

# arrays of the contract, in file order
ARRAY_FIELDS: tuple[str, ...] = (
    "time", "measured", "truth", "bad", "missing", "v", "i_branch_from",
    "s_branch_from", "s_branch_to", "s_inj", "pv_mw", "weather",
)
# weather channel order used everywhere in hil (last axis of Trace.weather)
WEATHER_FIELDS: tuple[str, ...] = ("ghi", "dni", "dhi", "temp_air", "wind_speed", "wind_dir")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class Trace:
    """A scenario: truth, measurements, labels and metadata (see docs/trace-format.md)."""

    time: np.ndarray  # float64 (T,) epoch seconds UTC
    measured: np.ndarray  # float64 (T, m), NaN where missing
    truth: np.ndarray  # float64 (T, m)
    bad: np.ndarray  # bool (T, m)
    missing: np.ndarray  # bool (T, m)
    v: np.ndarray  # complex128 (T, n_bus) pu
    i_branch_from: np.ndarray  # complex128 (T, n_branch) pu
    s_branch_from: np.ndarray  # complex128 (T, n_branch) pu
    s_branch_to: np.ndarray  # complex128 (T, n_branch) pu
    s_inj: np.ndarray  # complex128 (T, n_bus) pu, generation - load
    pv_mw: np.ndarray  # float64 (T, n_plants)
    weather: np.ndarray  # float64 (T, n_plants, 6) true weather at each plant's station
    channel_names: list[str]
    plant_names: list[str]
    meta: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def step_s(self) -> float:
        """The sample step: the scenario's own (``meta["step_s"]``) when the times agree
        with it, else the times' mean step. Why not one difference of two times: at an
        epoch of ~6e8 s their ULP is 1.2e-7 s, so at 1 kHz one difference is off by up
        to 1e-4 relative, and rows counted with it slip by one after ~10 s."""
        n = len(self.time)
        meta = self.meta.get("step_s")
        if n < 2:
            return float(meta) if meta is not None else 1.0
        span = float(self.time[-1] - self.time[0]) / (n - 1)
        # the times' own rounding, spread over the span
        rounding = 4.0 * float(np.spacing(np.abs(self.time[[0, -1]]).max())) / (n - 1)
        if meta is not None and abs(float(meta) - span) <= rounding + 1e-9 * abs(span):
            return float(meta)
        return span

    @property
    def n_steps(self) -> int:
        return int(self.time.shape[0])

    def channel(self, name: str) -> int:
        """Column of channel ``name``; ScenarioError naming the channel if absent."""
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise ScenarioError(f"trace has no channel {name!r}") from None

    def validate(self) -> None:
        """Shapes and label consistency; raises ScenarioError naming the problem."""
        t, m = self.measured.shape
        for name in ("truth", "bad", "missing"):
            if getattr(self, name).shape != (t, m):
                raise ScenarioError(f"trace field {name} has shape "
                                    f"{getattr(self, name).shape}, expected {(t, m)}")
        if self.time.shape != (t,):
            raise ScenarioError(f"trace time has shape {self.time.shape}, expected {(t,)}")
        if len(self.channel_names) != m:
            raise ScenarioError(f"{len(self.channel_names)} channel names for {m} columns")
        if np.any(self.bad & self.missing):
            raise ScenarioError("a value is labelled both bad and missing")
        if not np.array_equal(np.isnan(self.measured), self.missing):
            raise ScenarioError("missing labels do not match the NaN values of measured")


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # np.ascontiguousarray would turn a 0-d array into 1-d
    arr = np.asarray(arr, order="C")
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _compress(arr: np.ndarray) -> bool:
    """Deflate labels, names and metadata; float arrays are stored: measurement noise
    does not compress (deflate saved ~12 % of a 24 h trace at 3x the write time)."""
    return arr.dtype.kind not in "fc"


def save_trace(trace: Trace, path: str | Path, *, compresslevel: int = 1) -> Path:
    """Write ``trace`` as a deterministic ``.npz`` (readable by ``np.load``)."""
    path = Path(path)
    entries: list[tuple[str, np.ndarray]] = [(f, getattr(trace, f)) for f in ARRAY_FIELDS]
    entries.append(("channel_names", np.asarray(trace.channel_names, dtype=np.str_)))
    entries.append(("plant_names", np.asarray(trace.plant_names, dtype=np.str_)))
    meta = dict(trace.meta, format_version=FORMAT_VERSION)
    entries.append(("meta", np.asarray(json.dumps(meta, sort_keys=True, default=str))))
    for key in sorted(trace.extras):
        entries.append((f"extra__{key}", trace.extras[key]))
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for name, arr in entries:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED if _compress(arr) else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy_bytes(arr), compresslevel=compresslevel)
    tmp.replace(path)
    return path


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by :func:`save_trace`; ScenarioError if unreadable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            missing = [f for f in (*ARRAY_FIELDS, "channel_names", "plant_names", "meta")
                       if f not in files]
            if missing:
                raise ScenarioError(f"{path}: not a gridtwin trace (missing {missing})")
            arrays = {f: z[f] for f in ARRAY_FIELDS}
            names = [str(s) for s in z["channel_names"]]
            plants = [str(s) for s in z["plant_names"]]
            meta = json.loads(str(np.asarray(z["meta"]).reshape(-1)[0]))
            extras = {f[len("extra__"):]: z[f] for f in z.files if f.startswith("extra__")}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ScenarioError(f"{path}: cannot read trace: {exc}") from exc
    trace = Trace(channel_names=names, plant_names=plants, meta=meta, extras=extras,
                  **arrays)
    trace.validate()
    return trace
