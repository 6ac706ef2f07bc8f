"""``file://PATH``: replay a capture or a raw frame file through the live pipeline.

* ``*.pcap`` (classic libpcap, micro- or nanosecond, either byte order; link types
  Ethernet, raw IP, Linux SLL): the UDP payloads, optionally only those to ``?port=N``.
  The source address is the packet's IPv4 source (so the allowlist applies).
* anything else: a raw frame file, frames back to back: GTNET-SKT frames of the stream's
  fixed size, or C37.118 frames framed by FRAMESIZE.

Query options: ``speed`` (1 = the capture's own pacing or the stream rate for raw files,
2 = twice as fast, 0 = as fast as possible; default 1), ``loop`` (1 = start again at the
end; default 0). The arrival time handed on is the replay clock, as for live frames.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.errors import TransportError
from gateway.transports.base import TransportBase, register

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
LINK_ETHERNET, LINK_RAW, LINK_SLL = 1, 101, 113


def file_path(url: str) -> Path:
    u = urlsplit(url)
    return Path(unquote((u.netloc or "") + u.path))


def read_pcap(data: bytes, port: int | None = None
              ) -> Iterator[tuple[float, str, bytes]]:
    """(timestamp, source IPv4, UDP payload) of each UDP/IPv4 packet in a classic pcap."""
    magic = data[:4]
    if magic not in PCAP_MAGIC:
        raise TransportError(f"not a classic pcap file (magic {magic.hex()})")
    order, unit = PCAP_MAGIC[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    rec = struct.Struct(order + "IIII")
    off = 24
    while off + rec.size <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += rec.size
        pkt = data[off:off + incl]
        off += incl
        if linktype == LINK_ETHERNET:
            if len(pkt) < 14:
                continue
            eth = struct.unpack_from(">H", pkt, 12)[0]
            l3 = 14
            if eth == 0x8100 and len(pkt) >= 18:  # one VLAN tag
                eth, l3 = struct.unpack_from(">H", pkt, 16)[0], 18
            if eth != 0x0800:
                continue
        elif linktype == LINK_SLL:
            if len(pkt) < 16 or struct.unpack_from(">H", pkt, 14)[0] != 0x0800:
                continue
            l3 = 16
        elif linktype == LINK_RAW:
            l3 = 0
        else:
            raise TransportError(f"pcap link type {linktype} not supported "
                                 "(use Ethernet, raw IP or Linux SLL)")
        ip = pkt[l3:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        src = ".".join(str(b) for b in ip[12:16])
        udp = ip[ihl:]
        if len(udp) < 8:
            continue
        dport, ulen = struct.unpack_from(">HH", udp, 2)
        if port is not None and dport != port:
            continue
        yield sec + frac * unit, src, bytes(udp[8:ulen])


def split_raw(data: bytes, fmt: str, frame_size: int) -> Iterator[bytes]:
    """Frames of a raw frame file (fixed size, or C37.118 FRAMESIZE-framed)."""
    if fmt == "c37.118":
        off = 0
        while off + 4 <= len(data):
            if data[off] != 0xAA:
                raise TransportError(f"raw C37.118 file: no SYNC byte at offset {off}")
            (size,) = struct.unpack_from(">H", data, off + 2)
            if size < 16 or off + size > len(data):
                raise TransportError(f"raw C37.118 file: bad FRAMESIZE {size} at {off}")
            yield data[off:off + size]
            off += size
        return
    if frame_size <= 0:
        raise TransportError("raw GTNET-SKT file needs the stream's frame size")
    if len(data) % frame_size:
        raise TransportError(f"raw frame file of {len(data)} bytes is not a whole number "
                             f"of {frame_size}-byte frames")
    for off in range(0, len(data), frame_size):
        yield data[off:off + frame_size]


@register("file")
class FileTransport(TransportBase):
    frames = 0
    done: asyncio.Event

    async def start(self) -> None:
        path = file_path(self.spec.url)
        if not path.is_file():
            raise TransportError(f"stream {self.spec.name}: capture {path} not found")
        q = parse_qs(urlsplit(self.spec.url).query)
        self.speed = float(q.get("speed", ["1"])[0])
        self.loop_forever = q.get("loop", ["0"])[0] in ("1", "true", "yes")
        port = q.get("port", [None])[0]
        self.port_filter = int(port) if port else None
        self.data = path.read_bytes()
        self.is_pcap = self.data[:4] in PCAP_MAGIC
        self.done = asyncio.Event()
        self._task = asyncio.create_task(self._replay(), name=f"file-{self.spec.name}")

    def _records(self) -> Iterator[tuple[float | None, str | None, bytes]]:
        if self.is_pcap:
            yield from read_pcap(self.data, self.port_filter)
        else:
            for frame in split_raw(self.data, self.spec.format, self.spec.frame_size):
                yield None, None, frame

    async def _replay(self) -> None:
        spec = self.spec
        period = 1.0 / spec.rate_hz if spec.rate_hz > 0 else 0.0
        try:
            while True:
                t0_wall = self.clock()
                t0_cap: float | None = None
                for k, (ts, src, payload) in enumerate(self._records()):
                    if self.speed > 0:
                        if ts is not None:
                            t0_cap = ts if t0_cap is None else t0_cap
                            due = t0_wall + (ts - t0_cap) / self.speed
                        else:
                            due = t0_wall + k * period / self.speed
                        wait = due - self.clock()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    elif k % 64 == 0:
                        await asyncio.sleep(0)
                    if src is not None and not self.allowed(src):
                        self.on_drop(spec.name, src)
                        continue
                    self.frames += 1
                    self.sink(spec.name, payload, src, self.clock())
                if not self.loop_forever:
                    break
        except TransportError as exc:
            self.on_event(spec.name, "replay_error", {"error": str(exc)})
        finally:
            self.on_event(spec.name, "replay_done", {"frames": self.frames})
            self.done.set()


def write_pcap(path: str | Path, packets: list[tuple[float, str, str, int, int, bytes]]
               ) -> None:
    """Write ``(ts, src_ip, dst_ip, sport, dport, payload)`` as an Ethernet pcap (tests)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINK_ETHERNET))
    for ts, src, dst, sport, dport, payload in packets:
        udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes(int(x) for x in src.split(".")),
                         bytes(int(x) for x in dst.split("."))) + udp
        eth = b"\x00" * 12 + b"\x08\x00" + ip
        sec = int(ts)
        out += struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(eth), len(eth)) + eth
    Path(path).write_bytes(bytes(out))
