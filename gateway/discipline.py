"""Time and sequence discipline between the decoder and the pipeline's outputs: one
frame through statistics and the aligner, and what they report as data.

:meth:`gateway.pipeline.Pipeline.feed_frame` calls :func:`ingest_frame` once a frame is
decoded, then :func:`drain` when :func:`pending` says there is more than snapshots. The
sans-IO parts decide (:class:`~gateway.stats.StreamStats` classifies the sequence number,
:class:`~gateway.aligner.Aligner` places, holds, refuses or hands the frame out late):

* a duplicate sequence number is dropped (counted by the statistics, not ``received``);
* a frame refused or dropped by the aligner is counted per stream and reason (the
  stream's ``dropped_by`` is the aligner's count);
* a frame that arrives after its snapshot was published becomes a raw ``measurements``
  row of its own (:func:`late_row`), stored like any other;
* restarts, jumps, clock steps, lost timestamps and refused frames become events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.aligner import Aligner, LateFrame, Verdict
from gateway.snapshot import Flag, Snapshot
from gateway.stats import SeqVerdict, StreamStats

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


def ingest_frame(st: StreamStats, al: Aligner, stream: str, seq: int | None,
                 ts: float | None, values: np.ndarray, now: float, size: int, *,
                 flags: np.ndarray | None = None) -> list[Snapshot]:
    """Account and align one decoded frame of ``stream`` (``flags``: the source's quality
    bits per point, e.g. a C37.118 STAT word); return the snapshots it completes. What
    else came of it waits in ``al.late``, ``al.events`` and ``st.events`` for
    :func:`drain`."""
    kind = st.frame(seq, ts, now, size, delay=False)
    if kind is SeqVerdict.DUPLICATE:
        return []
    drops = al.stats.dropped_by_stream[stream]
    if st.dropped_by is not drops:  # the statistics show the aligner's drop counts
        drops.update({r: n + drops.get(r, 0) for r, n in st.dropped_by.items()})
        st.dropped_by = drops
    snaps: list[Snapshot] = al.feed(stream, values, now, ts=ts, seq=seq, flags=flags)
    if al.last_verdict not in REFUSED:  # a refused timestamp says nothing about delay
        st.delay(ts, now)
    return snaps


def pending(st: StreamStats, al: Aligner) -> bool:
    """Whether :func:`drain` has something to hand out."""
    return bool(al.late or al.events or st.events)


def drain(stats: Mapping[str, StreamStats], al: Aligner, stream: str, n_channels: int
          ) -> tuple[list[tuple[int, float, float, np.ndarray, np.ndarray]],
                     list[tuple[str, str, dict[str, Any]]]]:
    """(late rows, events): the raw rows of the frames that came late (seq, source time,
    arrival, values, flags; counted late for their stream) and the events of restarts,
    jumps, clock steps and refused frames (kind, source, detail)."""
    rows = []
    for lf in al.drain_late():
        stats[lf.stream].late += 1
        seq, vals, flags = late_row(lf, n_channels)
        rows.append((seq, lf.source_time, lf.arrival, vals, flags))
    events = [(f"stream_{ev.kind}", ev.stream, {**ev.detail, "time": ev.time})
              for ev in al.drain_events()]
    events += [(f"stream_{kind}", stream, {**detail, "time": t})
               for kind, t, detail in stats[stream].drain_events()]
    return rows, events
