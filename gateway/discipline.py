"""The runner's side of time and sequence discipline: one frame through statistics and
the aligner, with everything they report turned into storage, events and counters.

:func:`ingest_frame` is what :meth:`gateway.app.Gateway.on_frame` calls once a frame is
decoded. The sans-IO parts decide (:class:`~gateway.stats.StreamStats` classifies the
sequence number, :class:`~gateway.aligner.Aligner` places, holds, refuses or hands the
frame out as late); this function only acts on their outputs:

* a duplicate sequence number is dropped (counted by the statistics, not ``received``);
* a frame refused or dropped by the aligner is counted per stream and reason (the
  stream's ``dropped_by`` is the aligner's count);
* a frame that arrives after its snapshot was published is stored in the historian's raw
  ``measurements`` table all the same, as a row of its own (:func:`late_row`);
* restarts, jumps, clock steps and refused frames become events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.aligner import LateFrame, Verdict
from gateway.snapshot import Flag, Snapshot
from gateway.stats import SeqVerdict

#: a late frame's row gets sequence number -(key * LATE_SEQ_STREAMS + stream index + 1):
#: negative (never a snapshot's), unique per slot and stream, decodable
LATE_SEQ_STREAMS = 64
_LATE = np.uint32(Flag.LATE)
_LATE_MISSING = np.uint32(Flag.LATE | Flag.MISSING)
_MISSING = np.uint32(Flag.MISSING)
REFUSED = (Verdict.FUTURE, Verdict.OUTLIER, Verdict.HELD)


def late_seq(key: int, stream_index: int) -> int:
    """The ``measurements.seq`` of a late frame's row (see :data:`LATE_SEQ_STREAMS`)."""
    return -(key * LATE_SEQ_STREAMS + stream_index + 1)


def late_row(lf: LateFrame, n_channels: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(seq, values, flags) of a late frame as a raw measurement row: its channels carry
    its values flagged LATE (plus MISSING where not finite), the others NaN, MISSING."""
    vals = np.full(n_channels, np.nan)
    flags = np.full(n_channels, _MISSING, np.uint32)
    vals[lf.channels] = lf.values
    flags[lf.channels] = np.where(np.isfinite(lf.values), _LATE, _LATE_MISSING)
    return late_seq(lf.key, lf.stream_index), vals, flags


def ingest_frame(gw: Any, stream: str, seq: int | None, ts: float | None,
                 values: np.ndarray, now: float, size: int) -> list[Snapshot]:
    """Account and align one decoded frame of ``gw`` (a Gateway); return the snapshots
    it completes. Late frames are stored, drops counted, events raised here."""
    st = gw.stats[stream]
    kind = st.frame(seq, ts, now, size, delay=False)
    if kind is SeqVerdict.DUPLICATE:
        return []
    al = gw.aligner
    drops = al.stats.dropped_by_stream[stream]
    if st.dropped_by is not drops:  # the statistics show the aligner's drop counts
        drops.update({r: n + drops.get(r, 0) for r, n in st.dropped_by.items()})
        st.dropped_by = drops
    snaps: list[Snapshot] = al.feed(stream, values, now, ts=ts, seq=seq)
    if al.last_verdict not in REFUSED:  # a refused timestamp says nothing about delay
        st.delay(ts, now)
    if al.late:
        _store_late(gw, al.drain_late())
    if al.events or st.events:
        _raise_events(gw, stream, al.drain_events(), st.drain_events())
    return snaps


def _store_late(gw: Any, late: list[LateFrame]) -> None:
    n = len(gw.cfg.channels)
    for lf in late:
        gw.stats[lf.stream].late += 1
        h = gw.historian
        if h is None:
            continue
        seq, vals, flags = late_row(lf, n)
        gw._put(h.put_measurements, "measurements", seq, lf.source_time, lf.arrival, vals,
                flags)


def _raise_events(gw: Any, stream: str, aligner_events: list[Any],
                  stats_events: list[tuple[str, float, dict[str, Any]]]) -> None:
    for ev in aligner_events:
        gw.event(f"stream_{ev.kind}", ev.stream, {**ev.detail, "time": ev.time})
    for kind, t, detail in stats_events:
        gw.event(f"stream_{kind}", stream, {**detail, "time": t})
