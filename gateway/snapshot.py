"""The snapshot contract: the unit handed from the gateway to the estimator process.

A snapshot is one aligned time instant: values in measurement-model order (the config's
channel order, engineering units) and one quality bitmask per value, openPDC-style.
``to_bytes``/``from_bytes`` give a fixed little-endian layout so the handoff between
processes is a single copy into shared memory or a pipe, with no pickling.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import GatewayError


class Flag(enum.IntFlag):
    """Quality bits per value (openPDC's measurement state flags, reduced to what we use)."""

    GOOD = 0
    BAD = 1  # gross error detected
    SUSPECT = 2  # deviation above the warning level, not replaced
    CORRECTED = 4  # value replaced by the temporal predictor
    MISSING = 8  # no value arrived (gap, dropout, NaN on the wire)
    PSEUDO = 16  # a forecast standing in for an unmetered quantity
    LATE = 32  # arrived after its snapshot was published
    DUPLICATE = 64  # same sequence number seen again
    OUT_OF_ORDER = 128  # arrived after a newer frame of the same stream
    STALE = 256  # repeated from an older frame
    TIME_SUSPECT = 512  # source time not traceable (C37.118 STAT: sync lost, sorted by arrival)
    TRIGGER = 1024  # the source reports a trigger (C37.118 STAT bit 11)


_HEADER = struct.Struct("<qddI")  # seq, source_time, arrival_time, m


@dataclass
class Snapshot:
    """One aligned instant: ``values[i]`` belongs to channel ``i`` of the config."""

    seq: int
    source_time: float
    arrival_time: float
    values: np.ndarray
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    published_time: float = 0.0  # when the aligner handed it on (for end-to-end latency)
    #: switch statuses received for this snapshot, in ``TwinConfig.switches`` order (1
    #: closed, 0 open, NaN none received); None when no switch status is mapped. Not in
    #: :meth:`to_bytes`: the estimator is handed the topology decided from them
    statuses: np.ndarray | None = None
    #: the switch states (gateway.topology) the estimate of this snapshot must use; None:
    #: the config's network
    topology: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.flags.size == 0 and self.values.size:
            self.flags = np.zeros(self.values.shape, np.uint32)
        self.flags = np.asarray(self.flags, dtype=np.uint32)
        if self.values.shape != self.flags.shape or self.values.ndim != 1:
            raise GatewayError(
                f"snapshot {self.seq}: values {self.values.shape} and flags "
                f"{self.flags.shape} must be 1-D of equal length"
            )

    @classmethod
    def trusted(cls, seq: int, source_time: float, arrival_time: float, values: np.ndarray,
                flags: np.ndarray, published_time: float = 0.0,
                statuses: np.ndarray | None = None,
                topology: tuple[bool, ...] | None = None) -> Snapshot:
        """A snapshot from arrays already known to be 1-D float64 values and uint32 flags
        of one length (the aligner's slot rows, the pass-through's own arrays): the
        checks of the constructor were made once for the layout, not per snapshot."""
        snap = cls.__new__(cls)
        snap.__dict__ = {"seq": seq, "source_time": source_time,
                         "arrival_time": arrival_time, "values": values, "flags": flags,
                         "published_time": published_time, "statuses": statuses,
                         "topology": topology}
        return snap

    def to_bytes(self) -> bytes:
        """Fixed layout: header, float64[m] values, uint32[m] flags, float64 published."""
        m = self.values.size
        return b"".join((
            _HEADER.pack(self.seq, self.source_time, self.arrival_time, m),
            self.values.astype("<f8", copy=False).tobytes(),
            self.flags.astype("<u4", copy=False).tobytes(),
            struct.pack("<d", self.published_time),
        ))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Snapshot:
        if len(data) < _HEADER.size:
            raise GatewayError(f"snapshot: {len(data)} bytes, header needs {_HEADER.size}")
        seq, src, arr, m = _HEADER.unpack_from(data, 0)
        need = _HEADER.size + 12 * m + 8
        if len(data) != need:
            raise GatewayError(f"snapshot {seq}: {len(data)} bytes, layout needs {need}")
        off = _HEADER.size
        values = np.frombuffer(data, "<f8", m, off).astype(np.float64)
        flags = np.frombuffer(data, "<u4", m, off + 8 * m).astype(np.uint32)
        (pub,) = struct.unpack_from("<d", data, off + 12 * m)
        return cls(seq, src, arr, values, flags, pub)
