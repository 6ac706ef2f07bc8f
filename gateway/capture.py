"""Read (and write) packet captures without scapy: pcap and pcapng as Wireshark writes them.

Enough of the link, network and transport layers to pull UDP and TCP payloads out:
Ethernet (with 802.1Q/802.1ad tags), BSD loopback, raw IP, Linux cooked v1/v2; IPv4 and
IPv6 (extension headers skipped, fragments dropped); UDP and TCP. TCP payloads come with
their sequence numbers so :func:`tcp_payloads` can drop retransmissions before the bytes
go to a stream reassembler. The writer produces Ethernet/IPv4 captures for tests and lab
notes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.errors import GatewayError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276


class CaptureError(GatewayError):
    """The file is not a pcap/pcapng capture, or its block structure is broken."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One UDP datagram or TCP segment with its payload."""

    ts: float
    proto: str  # "udp" | "tcp"
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    tcp_seq: int = 0

    @property
    def flow(self) -> tuple[str, int, str, int]:
        return self.src, self.sport, self.dst, self.dport


def is_capture(head: bytes) -> bool:
    """True when ``head`` (the file's first 4 bytes) is a pcap or pcapng magic."""
    if len(head) < 4:
        return False
    le, be = struct.unpack("<I", head[:4])[0], struct.unpack(">I", head[:4])[0]
    return PCAPNG_SHB in (le, be) or bool({le, be} & {PCAP_MAGIC_US, PCAP_MAGIC_NS})


def read_packets(path: str | Path) -> Iterator[Packet]:
    """UDP and TCP packets of a pcap or pcapng file, in capture order."""
    data = Path(path).read_bytes()
    if len(data) < 4:
        raise CaptureError(f"{path}: too short for a capture file")
    if struct.unpack_from("<I", data)[0] == PCAPNG_SHB:
        frames = _pcapng_frames(data)
    else:
        frames = _pcap_frames(data)
    for ts, link, frame in frames:
        pkt = _decode(ts, link, frame)
        if pkt is not None:
            yield pkt


def _pcap_frames(data: bytes) -> Iterator[tuple[float, int, bytes]]:
    magic = struct.unpack_from("<I", data)[0]
    if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        e = "<"
    elif struct.unpack_from(">I", data)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        e = ">"
        magic = struct.unpack_from(">I", data)[0]
    else:
        raise CaptureError(f"magic 0x{magic:08X} is neither pcap nor pcapng")
    if len(data) < 24:
        raise CaptureError("pcap global header truncated")
    link = struct.unpack_from(e + "I", data, 20)[0] & 0xFFFF
    div = 1e9 if magic == PCAP_MAGIC_NS else 1e6
    off = 24
    rec = struct.Struct(e + "IIII")
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += 16
        if off + incl > len(data):
            return  # truncated last record, as after an interrupted capture
        yield sec + frac / div, link, data[off:off + incl]
        off += incl


def _pcapng_frames(data: bytes) -> Iterator[tuple[float, int, bytes]]:
    off = 0
    e = "<"
    links: list[tuple[int, float]] = []  # (linktype, seconds per tick) per interface
    while off + 12 <= len(data):
        btype = struct.unpack_from(e + "I", data, off)[0]
        if btype == PCAPNG_SHB:
            bom = data[off + 8:off + 12]
            e = "<" if struct.unpack("<I", bom)[0] == PCAPNG_BOM else ">"
            if struct.unpack(e + "I", bom)[0] != PCAPNG_BOM:
                raise CaptureError(f"pcapng section at {off}: bad byte-order magic")
            links = []
        blen = struct.unpack_from(e + "I", data, off + 4)[0]
        if blen < 12 or blen % 4 or off + blen > len(data):
            if off + blen > len(data):
                return  # truncated last block
            raise CaptureError(f"pcapng block at {off}: length {blen}")
        body = data[off + 8:off + blen - 4]
        if btype == 1 and len(body) >= 8:  # interface description
            link = struct.unpack_from(e + "H", body)[0]
            links.append((link, _tsresol(body[8:], e)))
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            ifid, hi, lo, cap, _orig = struct.unpack_from(e + "IIIII", body)
            if ifid < len(links):
                link, tick = links[ifid]
                yield ((hi << 32) | lo) * tick, link, body[20:20 + cap]
        elif btype == 3 and len(body) >= 4 and links:  # simple packet
            orig = struct.unpack_from(e + "I", body)[0]
            yield 0.0, links[0][0], body[4:4 + orig]
        elif btype == 2 and len(body) >= 20:  # obsolete packet block
            ifid, _drops, hi, lo, cap, _orig = struct.unpack_from(e + "HHIIII", body)
            if ifid < len(links):
                link, tick = links[ifid]
                yield ((hi << 32) | lo) * tick, link, body[20:20 + cap]
        off += blen


def _tsresol(options: bytes, e: str) -> float:
    """Seconds per timestamp tick from the if_tsresol option (default microseconds)."""
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(e + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[off + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        off += 4 + ((length + 3) & ~3)
    return 1e-6


def _decode(ts: float, link: int, f: bytes) -> Packet | None:
    try:
        if link == LINK_ETHERNET:
            etype, off = struct.unpack_from(">H", f, 12)[0], 14
            while etype in (0x8100, 0x88A8):
                etype, off = struct.unpack_from(">H", f, off + 2)[0], off + 4
            return _ip(ts, etype, f[off:])
        if link in (LINK_NULL, LINK_LOOP):
            fam = struct.unpack_from("<I", f)[0]
            if fam > 0xFFFF:
                fam = struct.unpack_from(">I", f)[0]
            return _ip(ts, 0x0800 if fam == 2 else 0x86DD, f[4:])
        if link in (LINK_RAW, LINK_IPV4, LINK_IPV6):
            return _ip(ts, 0x0800 if f[0] >> 4 == 4 else 0x86DD, f)
        if link == LINK_SLL:
            return _ip(ts, struct.unpack_from(">H", f, 14)[0], f[16:])
        if link == LINK_SLL2:
            return _ip(ts, struct.unpack_from(">H", f, 0)[0], f[20:])
    except (struct.error, IndexError):
        return None
    return None


def _ip(ts: float, etype: int, p: bytes) -> Packet | None:
    if etype == 0x0800:
        ihl = (p[0] & 0x0F) * 4
        total = struct.unpack_from(">H", p, 2)[0]
        if struct.unpack_from(">H", p, 6)[0] & 0x3FFF:  # MF set or offset: a fragment
            return None
        proto = p[9]
        src = ".".join(str(b) for b in p[12:16])
        dst = ".".join(str(b) for b in p[16:20])
        seg = p[ihl:total] if total >= ihl else p[ihl:]
    elif etype == 0x86DD:
        plen = struct.unpack_from(">H", p, 4)[0]
        proto = p[6]
        src, dst = _ip6(p[8:24]), _ip6(p[24:40])
        seg = p[40:40 + plen]
        while proto in (0, 43, 60):
            proto, seg = seg[0], seg[(seg[1] + 1) * 8:]
        if proto == 44:
            return None
    else:
        return None
    if proto == 17:
        sport, dport, ulen = struct.unpack_from(">HHH", seg)
        return Packet(ts, "udp", src, sport, dst, dport, bytes(seg[8:max(ulen, 8)]))
    if proto == 6:
        sport, dport, seq = struct.unpack_from(">HHI", seg)
        doff = (seg[12] >> 4) * 4
        return Packet(ts, "tcp", src, sport, dst, dport, bytes(seg[doff:]), seq)
    return None


def _ip6(b: bytes) -> str:
    return ":".join(f"{x:x}" for x in struct.unpack(">8H", b))


def tcp_payloads(packets: Iterable[Packet]) -> Iterator[Packet]:
    """TCP segments per flow with retransmitted bytes removed (in capture order)."""
    nxt: dict[tuple[str, int, str, int], int] = {}
    for p in packets:
        if p.proto != "tcp" or not p.payload:
            continue
        expect = nxt.get(p.flow)
        data = p.payload
        if expect is not None:
            behind = (expect - p.tcp_seq) & 0xFFFFFFFF
            if behind < 1 << 31:  # starts before what we already have
                if behind >= len(data):
                    continue
                data = data[behind:]
        nxt[p.flow] = (p.tcp_seq + len(p.payload)) & 0xFFFFFFFF
        yield Packet(p.ts, p.proto, p.src, p.sport, p.dst, p.dport, data,
                     (p.tcp_seq + len(p.payload) - len(data)) & 0xFFFFFFFF)


# ------------------------------------------------------------------------------------
# writing (Ethernet / IPv4), for tests and for handing a lab a reproducible capture


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f">{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ethernet_frame(p: Packet) -> bytes:
    """Ethernet II + IPv4 + UDP/TCP bytes of a packet (IPv4 addresses only)."""
    src = bytes(int(x) for x in p.src.split("."))
    dst = bytes(int(x) for x in p.dst.split("."))
    if p.proto == "udp":
        seg = struct.pack(">HHHH", p.sport, p.dport, 8 + len(p.payload), 0) + p.payload
        proto = 17
    else:
        seg = struct.pack(">HHIIBBHHH", p.sport, p.dport, p.tcp_seq, 0, 5 << 4, 0x18,
                          65535, 0, 0) + p.payload
        proto = 6
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, proto, 0,
                     src, dst)
    ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip + seg


def write_pcap(out: BinaryIO, packets: Iterable[Packet]) -> None:
    """Classic pcap (microsecond timestamps, little-endian, Ethernet)."""
    out.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINK_ETHERNET))
    for p in packets:
        f = ethernet_frame(p)
        sec = int(p.ts)
        out.write(struct.pack("<IIII", sec, round((p.ts - sec) * 1e6), len(f), len(f)))
        out.write(f)


def write_pcapng(out: BinaryIO, packets: Iterable[Packet]) -> None:
    """pcapng with one Ethernet interface at microsecond resolution, as Wireshark saves."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out.write(block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1)))
    out.write(block(1, struct.pack("<HHI", LINK_ETHERNET, 0, 65535)))
    for p in packets:
        f = ethernet_frame(p)
        t = round(p.ts * 1e6)
        out.write(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(f), len(f))
                        + f))
