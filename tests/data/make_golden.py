"""Write the golden frames in tests/data from field values, with plain ``struct.pack``.

Deliberately independent of gateway.codecs (only the bitwise Annex B CRC is shared), so
the codec tests compare our parser and builder with bytes assembled another way.

C37.118: the worked example of IEEE C37.118.2-2011 Annex D (also in C37.118-2005): one
PMU "Station A", IDCODE 7734, 4 int16 rectangular phasors, 3 float analogs, 1 digital
word, 30 frames/s, SOC 1149580800 (2006-06-06 08:00:00 UTC). Its data frame's CHK is
0xD43F, as printed in the standard. Run: python tests/data/make_golden.py
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from gateway.codecs.crc import crc_ccitt_reference  # noqa: E402

SOC = 1149580800
IDCODE = 7734


def frame(kind: int, fracsec: int, body: bytes) -> bytes:
    size = 14 + len(body) + 2
    head = struct.pack(">BBHHII", 0xAA, kind, size, IDCODE, SOC, fracsec)
    out = head + body
    return out + struct.pack(">H", crc_ccitt_reference(out))


def name(s: str) -> bytes:
    return s.encode("ascii").ljust(16, b" ")


def annex_d_cfg2() -> bytes:
    names = ["VA", "VB", "VC", "I1", "ANALOG1", "ANALOG2", "ANALOG3"] + [
        f"BREAKER {c} STATUS" for c in "123456789ABCDEFG"]
    body = struct.pack(">IH", 1_000_000, 1)  # TIME_BASE, NUM_PMU
    body += name("Station A") + struct.pack(">HHHHH", IDCODE, 0x0004, 4, 3, 1)
    body += b"".join(name(n) for n in names)
    body += struct.pack(">4I", 915527, 915527, 915527, (1 << 24) | 45776)  # PHUNIT
    body += struct.pack(">3I", 1, (1 << 24) | 1, (2 << 24) | 1)  # ANUNIT
    body += struct.pack(">I", 0x0000FFFF)  # DIGUNIT
    body += struct.pack(">HHh", 0, 22, 30)  # FNOM 60 Hz, CFGCNT, DATA_RATE
    return frame(0x31, 0, body)


def annex_d_data() -> bytes:
    body = struct.pack(">H", 0)  # STAT
    body += struct.pack(">8h", 14635, 0, -7318, -12676, -7318, 12675, 1092, 0)
    body += struct.pack(">hh", 2500, 0)  # FREQ (mHz deviation), DFREQ
    body += struct.pack(">3f", 100.0, 1000.0, 10000.0)
    body += struct.pack(">H", 0x3C12)
    return frame(0x01, 16817, body)


def command_start() -> bytes:
    return frame(0x41, 0, struct.pack(">H", 2))


def header() -> bytes:
    return frame(0x11, 0, b"Hi! I am tinyPMU!")


def skt(header: bool) -> bytes:
    """Four points float32, int32, float32, int32; header seq 42 at 1700000000.5 s."""
    out = struct.pack(">III", 42, 1_700_000_000, 500_000_000) if header else b""
    return out + struct.pack(">fifi", 1.5, -7, 230.25, 1)


FILES = {
    "c37118_annexd_cfg2.bin": annex_d_cfg2,
    "c37118_annexd_data.bin": annex_d_data,
    "c37118_cmd_start.bin": command_start,
    "c37118_header.bin": header,
    "gtnet_skt_header.bin": lambda: skt(True),
    "gtnet_skt_noheader.bin": lambda: skt(False),
}

if __name__ == "__main__":
    for fname, make in FILES.items():
        (HERE / fname).write_bytes(make())
        print(fname)
