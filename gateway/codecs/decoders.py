"""Stream decoders: bytes of one frame in, ``(seq, ts, values)`` in the stream's point order out.

A decoder sits between a transport and the aligner. Every decoder has the same small face
(:class:`Decoder`): ``decode(data, now)`` returns ``None`` for a frame that carries no
values (a C37.118 configuration frame), ``size`` is the fixed frame size the transport may
use to split a byte stream (0: the codec frames itself), and ``layout`` tells the aligner
which snapshot channels the values fill. A new wire format adds a class here and a branch in
:func:`make_decoder`; nothing else in the gateway changes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

from gateway.aligner import StreamLayout
from gateway.config import Stream


class Decoder(Protocol):
    """What the pipeline needs of a stream's decoder."""

    size: int
    layout: StreamLayout

    def decode(self, data: bytes, now: float) -> tuple[int | None, float | None,
                                                       np.ndarray] | None: ...



class SktDecoder:
    """GTNET-SKT: (seq, ts, values in point order) per frame."""

    def __init__(self, stream: Stream) -> None:
        from gateway.codecs.gtnet_skt import GtnetSktCodec

        self.codec = GtnetSktCodec([p.type for p in stream.points], header=stream.header)
        self.size = self.codec.size
        self.layout = StreamLayout.of(stream.name, [p.channel for p in stream.points],
                                      [p.scale for p in stream.points])

    def decode(self, data: bytes, now: float) -> tuple[int | None, float | None,
                                                       np.ndarray] | None:
        f = self.codec.parse(data, now)
        return f.seq, f.ts, f.values


MAX_PENDING_EVENTS = 256  # C37.118 session events kept until the runner takes them


class C37Decoder:
    """C37.118: configuration frames are checked against the config's PMUs and (re)build
    the data mapping; data frames give the phasors as (magnitude kV/kA, angle rad) pairs
    in the config's PMU/phasor order, whatever order the CFG-2 lists them in.

    The identity and STAT logic is :class:`gateway.codecs.c37session.C37Receiver`'s.
    A refused configuration raises :class:`~gateway.codecs.c37session.IdentityMismatch`
    (naming both PMU lists); data without a usable configuration raises
    :class:`~gateway.codecs.c37session.ConfigPending`. After each data frame
    :attr:`flags` holds the per-point quality flags from the PMUs' STAT words (None: all
    good), for ``Aligner.feed(..., flags=...)``; :meth:`take_events` hands the session
    events (configuration accepted/remapped/changed/refused, STAT changes, unit warnings)
    to the runner; the transport's session reports the handshake's own events.

    Wire convention (C37.118.1): per-phase RMS volts and amperes; the channel value is the
    wire magnitude divided by :attr:`gateway.config.C37Phasor.wire_factor`.
    """

    def __init__(self, stream: Stream) -> None:
        from gateway.codecs import c37session, c37118  # only C37.118 streams need them

        self._c37 = c37118
        self.stream = stream
        self.receiver = c37session.C37Receiver(stream.pmus, idcode=stream.idcode,
                                               rate_hz=stream.rate_hz)
        self._data_event = c37session.DataReceived
        self._announced = c37session.ConfigChangeAnnounced  # the transport reports it
        self._pending = c37session.ConfigPending
        chans = [c for pmu in stream.pmus for ph in pmu.phasors for c in (ph.mag, ph.ang)]
        self.n_phasors = len(chans) // 2
        self.layout = StreamLayout.of(stream.name, chans)
        self.size = 0
        self.flags: np.ndarray | None = None
        #: the last data frame's DIGITAL words (sender's PMU order; None: it has none)
        self.digitals: np.ndarray | None = None
        # bounded: a runner that never drains them must not grow without end
        self.events: deque[Any] = deque(maxlen=MAX_PENDING_EVENTS)
        self.configs = 0

    @property
    def config(self) -> Any:
        """The configuration frame in force (None before one was accepted)."""
        lay = self.receiver.layout
        return lay.config if lay is not None else None

    @property
    def rate(self) -> float:
        return self.receiver.rate

    def take_events(self) -> list[Any]:
        """Session events since the last call, the newest :data:`MAX_PENDING_EVENTS`
        (the runner logs/stores them)."""
        out = list(self.events)
        self.events.clear()
        return out

    def decode(self, data: bytes, now: float) -> tuple[int | None, float | None,
                                                       np.ndarray] | None:
        c37, rx = self._c37, self.receiver
        if c37.frame_type_of(data) == c37.FRAME_DATA:
            events = rx.data(data, now)
            out = None
            for ev in events:
                if type(ev) is self._data_event:
                    out = ev
                elif type(ev) is not self._announced:
                    self.events.append(ev)
            if out is None:
                raise self._pending("configuration change in force: data held back until "
                                    "the new CFG-2 is in", 0)
            self.flags = out.flags
            self.digitals = out.digitals
            return out.seq, out.ts, out.values
        frame = c37.parse(data, now)
        if isinstance(frame, c37.ConfigFrame):
            self.events.extend(rx.config(frame))
            if rx.refused is not None:
                raise rx.refused
            if frame.frame_type != c37.FRAME_CFG1:
                self.configs += 1
        return None


def make_decoder(stream: Stream) -> SktDecoder | C37Decoder:
    if stream.format == "c37.118":
        return C37Decoder(stream)
    return SktDecoder(stream)
