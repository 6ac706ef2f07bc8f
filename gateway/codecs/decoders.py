"""Stream decoders: bytes of one frame in, ``(seq, ts, values)`` in the stream's point order out.

A decoder sits between a transport and the aligner. Every decoder has the same small face
(:class:`Decoder`): ``decode(data, now)`` returns ``None`` for a frame that carries no
values (a C37.118 configuration frame), ``size`` is the fixed frame size the transport may
use to split a byte stream (0: the codec frames itself), and ``layout`` tells the aligner
which snapshot channels the values fill. A new wire format adds a class here and a branch in
:func:`make_decoder`; nothing else in the gateway changes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from gateway.aligner import StreamLayout
from gateway.config import Stream
from gateway.errors import FrameError


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


class C37Decoder:
    """C37.118: configuration frames (re)build the data decoder; data frames give the
    phasors as (magnitude kV/kA, angle rad) pairs in the config's PMU/phasor order.

    Wire convention (C37.118.1): per-phase RMS volts and amperes; the channel value is the
    wire magnitude divided by :attr:`gateway.config.C37Phasor.wire_factor`.
    """

    def __init__(self, stream: Stream) -> None:
        from gateway.codecs import c37118  # here, not per frame: only C37.118 streams need it

        self._c37 = c37118
        self.stream = stream
        chans: list[int] = []
        factors: list[float] = []
        for pmu in stream.pmus:
            for ph in pmu.phasors:
                chans += [ph.mag, ph.ang]
                factors.append(ph.wire_factor)
        self.factor = np.array(factors)
        self.n_phasors = len(chans) // 2
        self.layout = StreamLayout.of(stream.name, chans)
        self.size = 0
        self.config: Any = None
        self._data: Any = None  # the data-frame decoder of ``config``
        self.rate = stream.rate_hz
        self.configs = 0

    def decode(self, data: bytes, now: float) -> tuple[int | None, float | None,
                                                       np.ndarray] | None:
        c37 = self._c37
        if c37.frame_type_of(data) == c37.FRAME_DATA:
            if self._data is None:
                raise FrameError("data frame before the configuration (CFG-2)", 0)
            f = self._data.decode(data, now)
            z = f.phasors
            out = np.empty(2 * self.n_phasors)
            out[0::2] = np.abs(z) / self.factor
            out[1::2] = np.angle(z)
            ts = f.time
            seq = round(ts * self.rate) & 0xFFFFFFFF if ts is not None else None
            return seq, ts, out
        frame = c37.parse(data, now)
        if isinstance(frame, c37.ConfigFrame):
            n = sum(p.n_phasors for p in frame.pmus)
            if n != self.n_phasors:
                raise FrameError(f"CFG has {n} phasors, stream {self.stream.name} expects "
                                 f"{self.n_phasors}", 0)
            self.config = frame
            self._data = frame.decoder()
            if frame.data_rate > 0:
                self.rate = float(frame.data_rate)
            self.configs += 1
        return None


def make_decoder(stream: Stream) -> SktDecoder | C37Decoder:
    if stream.format == "c37.118":
        return C37Decoder(stream)
    return SktDecoder(stream)
