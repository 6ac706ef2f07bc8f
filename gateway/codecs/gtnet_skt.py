"""RTDS GTNET-SKT frames: a fixed list of big-endian 32-bit words, one per point.

The RSCAD GTNET-SKT component sends every point of its list in every frame, in list
order, each word an ``int32`` or an IEEE-754 ``float32`` (at most 300 words). VILLASnode
can prepend three words of its own (sequence number, timestamp seconds, timestamp
nanoseconds; its "gtnet-skt" socket format with the fake header), so a codec built with
``header=True`` interoperates with a VILLASnode peer.

The frame is declared once with construct (:func:`skt_struct`). The hot path does not run
construct per element: :class:`GtnetSktCodec` derives a numpy dtype per word from the same
declaration and decodes the payload with two array views. ``parse_reference`` and
``build_reference`` run the plain construct path and exist for tests and the bench peer.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import construct as cs
import numpy as np

from gateway.codecs.layout import declaration_leaves
from gateway.errors import FrameSizeMismatch, FrameTooShort, NonFiniteValue, WrongPointCount

MAX_WORDS = 300  # the GTNET-SKT component's limit, header words included
HEADER_WORDS = 3  # VILLASnode fake header: sequence, ts seconds, ts nanoseconds
POINT_TYPES = ("int32", "float32")

_FIELD = {"int32": cs.Int32sb, "float32": cs.Float32b}
_HEADER = struct.Struct(">III")


def skt_words(n_points: int, header: bool) -> int:
    """Words in one frame: the points plus the header's (the component's limit counts both;
    the config check counts with this same function)."""
    return n_points + (HEADER_WORDS if header else 0)


def skt_struct(types: Sequence[str], *, header: bool) -> cs.Struct:
    """The construct declaration of one frame: optional header words, then point ``p<i>``."""
    fields: list[cs.Construct] = []
    if header:
        fields += ["seq" / cs.Int32ub, "ts_sec" / cs.Int32ub, "ts_nsec" / cs.Int32ub]
    for i, t in enumerate(types):
        if t not in _FIELD:
            raise ValueError(f"point {i}: type {t!r} is not one of {POINT_TYPES}")
        fields.append(f"p{i}" / _FIELD[t])
    return cs.Struct(*fields)


@dataclass(slots=True)
class SktFrame:
    """One decoded frame; ``seq``/``ts`` are None when the stream has no header."""

    seq: int | None
    ts: float | None
    values: np.ndarray
    arrival: float


def split_ts(ts: float) -> tuple[int, int]:
    """Seconds and nanoseconds of a POSIX time, as the VILLASnode header carries them."""
    if not math.isfinite(ts) or ts < 0 or ts >= 2**32:
        raise ValueError(f"timestamp {ts!r} does not fit the header's unsigned 32-bit seconds")
    sec = int(ts)
    nsec = round((ts - sec) * 1e9)
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return sec, nsec


class GtnetSktCodec:
    """Parse and build the frames of one GTNET-SKT point list.

    ``allow_nonfinite=False`` rejects NaN/inf float points with :class:`NonFiniteValue`
    (the offset names the word); by default they pass through, since the data-quality stage
    flags them as MISSING rather than dropping the whole frame.
    """

    def __init__(
        self, types: Sequence[str], *, header: bool, allow_nonfinite: bool = True
    ) -> None:
        self.types = tuple(types)
        self.header = header
        self.allow_nonfinite = allow_nonfinite
        n_words = skt_words(len(self.types), header)
        if not self.types:
            raise ValueError("a GTNET-SKT point list needs at least one point")
        if n_words > MAX_WORDS:
            raise ValueError(f"{n_words} words exceed the GTNET-SKT limit of {MAX_WORDS}")
        self.declaration = skt_struct(self.types, header=header)
        words = declaration_leaves(self.declaration)
        self.n_points = len(self.types)
        self.n_words = n_words
        self.size = self.declaration.sizeof()
        self._hdr = HEADER_WORDS * 4 if header else 0
        points = words[HEADER_WORDS:] if header else words
        kinds = np.array([dt.kind for _, _, dt in points])
        self._int_idx = np.flatnonzero(kinds == "i")
        self._float_idx = np.flatnonzero(kinds == "f")
        self._all_float = self._int_idx.size == 0
        self._all_int = self._float_idx.size == 0
        self._f4 = np.dtype(">f4")
        self._i4 = np.dtype(">i4")
        # the int32 points as a slice when they are one run (views, no fancy indexing)
        ii = self._int_idx
        contiguous = ii.size and ii[-1] - ii[0] + 1 == ii.size
        self._int_cols: slice | np.ndarray = slice(int(ii[0]), int(ii[-1]) + 1) \
            if contiguous else ii
        self._int_words: slice | np.ndarray = \
            slice(int(ii[0]) + HEADER_WORDS, int(ii[-1]) + 1 + HEADER_WORDS) \
            if contiguous else ii + HEADER_WORDS

    # -- decoding ---------------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n == self.size:
            return
        if n < self._hdr:
            raise FrameTooShort(f"{n} bytes, shorter than the {self._hdr}-byte header", n)
        if n % 4:
            raise FrameSizeMismatch(f"{n} bytes is not a whole number of 32-bit words", n)
        got = (n - self._hdr) // 4
        raise WrongPointCount(
            f"{got} points in the frame, the point list has {self.n_points}",
            min(n, self.size),
        )

    def _reject_nonfinite(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise NonFiniteValue(f"point {bad} is {values[bad]!r}", self._hdr + 4 * bad)

    def parse(self, data: bytes | bytearray | memoryview, now: float) -> SktFrame:
        """Decode one datagram (or one fixed-size TCP chunk) received at ``now``."""
        self._check_size(len(data))
        hdr = self._hdr
        n = self.n_points
        if self._all_float:
            values = np.frombuffer(data, self._f4, n, hdr).astype(np.float64)
        elif self._all_int:
            values = np.frombuffer(data, self._i4, n, hdr).astype(np.float64)
        else:
            values = np.frombuffer(data, self._f4, n, hdr).astype(np.float64)
            ints = np.frombuffer(data, self._i4, n, hdr)
            cols = self._int_cols  # a slice when the int32 points are one run (views)
            values[cols] = ints[cols]
        if not self.allow_nonfinite and not self._all_int:
            self._reject_nonfinite(values)
        if hdr:
            seq, sec, nsec = _HEADER.unpack_from(data)
            return SktFrame(seq, sec + nsec * 1e-9, values, now)
        return SktFrame(None, None, values, now)

    def parse_many(self, frames: Sequence[bytes]) -> tuple[list[int], list[float], np.ndarray]:
        """Decode a batch of datagrams of this stream at once: (sequence numbers,
        timestamps, values with one row per frame). One join and two array views for the
        whole batch instead of a parse per frame; the numbers are the ones :meth:`parse`
        gives frame by frame (the same float64 operations, element-wise). Every frame
        must be :attr:`size` bytes and the codec must have a header and let non-finite
        values pass: the caller checks (:meth:`batchable`) and parses one by one otherwise."""
        n = len(frames)
        buf = b"".join(frames)
        w = self.n_words
        f = np.frombuffer(buf, self._f4).reshape(n, w)
        values = f[:, HEADER_WORDS:].astype(np.float64)
        if not self._all_float:
            ints = np.frombuffer(buf, self._i4).reshape(n, w)
            values[:, self._int_cols] = ints[:, self._int_words]
        unpack = _HEADER.unpack_from  # a few header words: cheaper in Python than numpy
        seqs: list[int] = []
        tss: list[float] = []
        for data in frames:
            seq, sec, nsec = unpack(data)
            seqs.append(seq)
            tss.append(sec + nsec * 1e-9)
        return seqs, tss, values

    def batchable(self, frames: Sequence[bytes]) -> bool:
        """Whether :meth:`parse_many` takes these frames (header, non-finite values
        allowed, every frame of the right size)."""
        size = self.size
        return self.header and self.allow_nonfinite and all(len(d) == size for d in frames)

    def parse_reference(self, data: bytes, now: float) -> SktFrame:
        """The same decode through construct's per-field parser (tests; bench peer)."""
        self._check_size(len(data))
        c = self.declaration.parse(data)
        values = np.array([float(c[f"p{i}"]) for i in range(self.n_points)])
        if not self.allow_nonfinite:
            self._reject_nonfinite(values)
        if self.header:
            return SktFrame(c.seq, c.ts_sec + c.ts_nsec * 1e-9, values, now)
        return SktFrame(None, None, values, now)

    # -- encoding ---------------------------------------------------------------------
    def _as_values(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (self.n_points,):
            raise ValueError(f"{arr.shape} values for a point list of {self.n_points}")
        if self._int_idx.size:
            ints = np.rint(arr[self._int_idx])
            fits = np.isfinite(ints) & (ints >= -(2**31)) & (ints <= 2**31 - 1)
            if not fits.all():
                bad = int(self._int_idx[np.flatnonzero(~fits)[0]])
                raise ValueError(f"point {bad}: {arr[bad]!r} does not fit an int32 point")
        return arr

    def build(
        self, values: Sequence[float] | np.ndarray, *, seq: int = 0, ts: float = 0.0
    ) -> bytes:
        """Encode one frame; int32 points are rounded to the nearest integer.

        ``seq`` wraps at 2**32 (the header word is unsigned); ``ts`` is POSIX seconds.
        """
        arr = self._as_values(values)
        buf = bytearray(self.size)
        hdr = self._hdr
        if hdr:
            _HEADER.pack_into(buf, 0, seq & 0xFFFFFFFF, *split_ts(ts))
        if self._all_float:
            np.frombuffer(buf, self._f4, self.n_points, hdr)[:] = arr
        else:
            f = np.frombuffer(buf, self._f4, self.n_points, hdr)
            i = np.frombuffer(buf, self._i4, self.n_points, hdr)
            f[self._float_idx] = arr[self._float_idx]
            i[self._int_idx] = np.rint(arr[self._int_idx])
        return bytes(buf)

    def build_reference(
        self, values: Sequence[float] | np.ndarray, *, seq: int = 0, ts: float = 0.0
    ) -> bytes:
        """The same encode through construct (tests check both give identical bytes)."""
        arr = self._as_values(values)
        fields: dict[str, object] = {}
        if self.header:
            sec, nsec = split_ts(ts)
            fields.update(seq=seq & 0xFFFFFFFF, ts_sec=sec, ts_nsec=nsec)
        for i, t in enumerate(self.types):
            fields[f"p{i}"] = int(np.rint(arr[i])) if t == "int32" else float(arr[i])
        return bytes(self.declaration.build(fields))
