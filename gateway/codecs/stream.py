"""Reassemble C37.118 frames from a TCP byte stream (sans-IO).

TCP hands over bytes, not frames: one read may hold several frames, a frame may be split
across reads, and after a reconnect or a misbehaving sender there may be garbage. The
reassembler looks for SYNC (0xAA followed by a known frame type and version, clause 6.2),
waits for FRAMESIZE bytes and, by default, accepts the candidate only if its CRC-CCITT
matches; otherwise it skips one byte and resynchronises. Skipped bytes are counted.
"""

from __future__ import annotations

from gateway.codecs.c37common import FRAME_NAMES, MIN_FRAME, SYNC_BYTE, VERSIONS
from gateway.codecs.crc import crc_ccitt


class StreamReassembler:
    """Split a byte stream into complete C37.118 frames.

    ``feed(data)`` returns the frames completed by ``data`` (bytes each, CRC verified when
    ``check_crc``). Counters: ``frames``, ``garbage_bytes`` (skipped while hunting for
    SYNC), ``resyncs`` (times a candidate SYNC was abandoned) and ``crc_rejects``.
    ``max_frame`` bounds what a candidate may announce, so a false SYNC inside garbage
    cannot stall the stream waiting for 64 KiB.
    """

    def __init__(self, *, check_crc: bool = True, max_frame: int = 65535) -> None:
        self.check_crc = check_crc
        self.max_frame = max_frame
        self._buf = bytearray()
        self.frames = 0
        self.garbage_bytes = 0
        self.resyncs = 0
        self.crc_rejects = 0

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self.garbage_bytes += n

    def _announced(self, buf: bytearray, i: int) -> int:
        """FRAMESIZE of a plausible common header at ``i`` (SYNC byte already there), 0 when
        the frame type, version or size rule it out, -1 while the header is incomplete."""
        if i + 4 > len(buf):
            return -1
        kind = buf[i + 1]
        size = (buf[i + 2] << 8) | buf[i + 3]
        if (kind & 0x80 or (kind & 0x0F) not in VERSIONS
                or (kind >> 4) & 0x07 not in FRAME_NAMES
                or size < MIN_FRAME or size > self.max_frame):
            return 0
        return size

    @staticmethod
    def _crc_ok(buf: bytearray, i: int, size: int) -> bool:
        return crc_ccitt(buf[i:i + size - 2]) == (buf[i + size - 2] << 8) | buf[i + size - 1]

    def _valid_at(self, buf: bytearray, i: int) -> bool:
        size = self._announced(buf, i)
        return size > 0 and i + size <= len(buf) and self._crc_ok(buf, i, size)

    def _later_frame(self, buf: bytearray) -> int:
        """Offset of a complete CRC-valid frame after position 0, or -1.

        Called while a candidate waits for more bytes: a whole valid frame already sitting
        inside it means the candidate was a false SYNC in garbage, so skip to the frame
        instead of stalling until the candidate's FRAMESIZE bytes have arrived.
        """
        if not self.check_crc:
            return -1
        i = buf.find(SYNC_BYTE, 1)
        while i >= 0:
            if self._valid_at(buf, i):
                return i
            i = buf.find(SYNC_BYTE, i + 1)
        return -1

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            start = buf.find(SYNC_BYTE)
            if start < 0:
                self._skip(len(buf))
                return out
            if start:
                self._skip(start)
            size = self._announced(buf, 0)
            if size < 0:
                return out
            if size == 0:
                self.resyncs += 1
                self._skip(1)
                continue
            if len(buf) < size:
                later = self._later_frame(buf)
                if later < 0:
                    return out
                self.resyncs += 1
                self._skip(later)
                continue
            if self.check_crc and not self._crc_ok(buf, 0, size):
                self.crc_rejects += 1
                self.resyncs += 1
                self._skip(1)
                continue
            out.append(bytes(buf[:size]))
            del buf[:size]
            self.frames += 1
