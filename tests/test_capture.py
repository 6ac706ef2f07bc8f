"""pcap/pcapng reading and the ``gridtwin decode`` command on captures we write here."""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gateway import capture, cli_decode
from gateway.capture import Packet
from gateway.codecs import c37118 as c
from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import load_config

CFG = load_config("ieee33")
SKT = next(s for s in CFG.streams if s.name == "pmu")
C37 = next(s for s in CFG.streams if s.name == "pmu-c37")


def _decode(capsys: pytest.CaptureFixture[str], path: Path, stream: str, fmt: str
            ) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli_decode.register(parser.add_subparsers())
    args = parser.parse_args(["decode", "--config", "ieee33", "--stream", stream,
                              str(path), "--format", fmt])
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _skt_frames(n: int) -> tuple[GtnetSktCodec, list[np.ndarray], list[bytes]]:
    codec = GtnetSktCodec([p.type for p in SKT.points], header=SKT.header)
    vals = [np.round(np.linspace(1, 2, len(SKT.points)) * (k + 1), 3) for k in range(n)]
    for v, p in zip(vals[0], SKT.points, strict=True):
        assert p.type in ("float32", "int32"), v
    frames = [codec.build(v, seq=100 + k, ts=1_700_000_000 + k * 0.02)
              for k, v in enumerate(vals)]
    return codec, vals, frames


@pytest.mark.parametrize("writer", [capture.write_pcap, capture.write_pcapng])
def test_read_back_udp_and_tcp(writer: object, tmp_path: Path) -> None:
    pkts = [Packet(1.5, "udp", "10.0.0.2", 5000, "10.0.0.1", 7100, b"abc"),
            Packet(2.25, "tcp", "10.0.0.3", 4712, "10.0.0.1", 40000, b"xyz", 1000)]
    path = tmp_path / "cap"
    with path.open("wb") as f:
        writer(f, pkts)  # type: ignore[operator]
    assert capture.is_capture(path.read_bytes()[:4])
    got = list(capture.read_packets(path))
    assert got == pkts


def test_big_endian_nanosecond_raw_ip_pcap(tmp_path: Path) -> None:
    """A pcap written big-endian with ns timestamps and LINKTYPE_RAW, and Linux SLL."""
    ip_frame = capture.ethernet_frame(
        Packet(0, "udp", "192.168.1.5", 1234, "192.168.1.9", 7100, b"payload"))[14:]
    data = struct.pack(">IHHiIII", capture.PCAP_MAGIC_NS, 2, 4, 0, 0, 65535,
                       capture.LINK_RAW)
    data += struct.pack(">IIII", 10, 500_000_000, len(ip_frame), len(ip_frame)) + ip_frame
    path = tmp_path / "be.pcap"
    path.write_bytes(data)
    (p,) = capture.read_packets(path)
    assert (p.ts, p.src, p.dport, p.payload) == (10.5, "192.168.1.5", 7100, b"payload")
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + ip_frame
    data = struct.pack("<IHHiIII", capture.PCAP_MAGIC_US, 2, 4, 0, 0, 65535,
                       capture.LINK_SLL)
    data += struct.pack("<IIII", 1, 2, len(sll), len(sll)) + sll
    path.write_bytes(data)
    (p,) = capture.read_packets(path)
    assert p.payload == b"payload" and p.ts == pytest.approx(1.000002)


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x01\x02\x03\x04\x05")
    with pytest.raises(capture.CaptureError):
        list(capture.read_packets(path))


def test_tcp_retransmission_is_dropped() -> None:
    p = [Packet(0, "tcp", "a", 1, "b", 2, b"hello", 10),
         Packet(0, "tcp", "a", 1, "b", 2, b"hello", 10),  # retransmitted
         Packet(0, "tcp", "a", 1, "b", 2, b"lo wor", 13),  # overlaps by 2
         Packet(0, "tcp", "a", 1, "b", 2, b"ld", 19)]
    assert b"".join(x.payload for x in capture.tcp_payloads(p)) == b"hello world"


def test_decode_gtnet_pcapng_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, vals, frames = _skt_frames(3)
    pkts = [Packet(10.0 + k, "udp", "10.0.0.9", 50000, "10.0.0.1", 7100, f)
            for k, f in enumerate(frames)]
    pkts.insert(1, Packet(10.5, "udp", "10.0.0.9", 50000, "10.0.0.1", 9999, b"other"))
    path = tmp_path / "skt.pcapng"
    with path.open("wb") as f:
        capture.write_pcapng(f, pkts)
    rc, out, err = _decode(capsys, path, "pmu", "json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in rows] == [100, 101, 102]
    assert rows[1]["arrival"] == pytest.approx(11.0)
    names = [p.name for p in SKT.points]
    assert list(rows[2]["values"]) == names
    np.testing.assert_allclose(list(rows[2]["values"].values()), vals[2], rtol=1e-6)
    assert "3 frames decoded, 0 errors" in err


def test_decode_reports_wrong_point_count(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """An RSCAD list one point short of the config: every frame names both counts."""
    types = [p.type for p in SKT.points][:-1]
    short = GtnetSktCodec(types, header=True).build(np.zeros(len(types)), seq=1)
    path = tmp_path / "short.pcap"
    with path.open("wb") as f:
        capture.write_pcap(f, [Packet(1.0, "udp", "10.0.0.9", 1, "10.0.0.1", 7100, short)])
    rc, _, err = _decode(capsys, path, "pmu", "table")
    assert rc == 1
    assert f"{len(types)} points in the frame, the point list has {len(SKT.points)}" in err


def test_decode_raw_gtnet_file_table(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, _, frames = _skt_frames(2)
    path = tmp_path / "frames.bin"
    path.write_bytes(b"".join(frames))
    rc, out, _ = _decode(capsys, path, "pmu", "table")
    assert rc == 0
    assert out.count("frame ") == 2 and "seq=101" in out
    first = SKT.points[0].name
    assert f"  {first}" in out


def test_decode_c37_tcp_capture_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    """CFG-2 then data frames from the PMU's port, split across TCP segments, with a
    retransmission; the capture's CFG-2 drives the decoding."""
    stations = [(p.station, p.idcode, [ph.name for ph in p.phasors]) for p in C37.pmus]
    cfg = c.make_config(C37.idcode, stations, fmt=c.FMT_POLAR | c.FMT_PHASOR_FLOAT
                        | c.FMT_FREQ_FLOAT)
    n_ph = sum(len(s[2]) for s in stations)
    zs = [np.exp(1j * np.linspace(0, 1, n_ph)) * (k + 1) for k in range(2)]
    datas = [c.DataFrame(C37.idcode, 1_700_000_000, 20_000 * k,
                         np.zeros(len(stations), np.uint16), z,
                         np.full(len(stations), 50.0), np.zeros(len(stations)),
                         np.zeros(0), np.zeros(0, np.uint16)).build(cfg)
             for k, z in enumerate(zs)]
    stream = c.CommandFrame(C37.idcode, c.CMD_CFG2).build()  # client -> PMU
    blob = cfg.build() + b"".join(datas)
    seq = 5000
    pkts = [Packet(0.5, "tcp", "10.0.0.1", 40000, "10.0.0.5", 4712, stream, 1)]
    cuts = [0, 100, 101, len(blob) - 30, len(blob)]
    for a, b in itertools.pairwise(cuts):
        pkts.append(Packet(1.0, "tcp", "10.0.0.5", 4712, "10.0.0.1", 40000, blob[a:b],
                           seq + a))
    pkts.insert(3, pkts[2])  # retransmission
    path = tmp_path / "c37.pcap"
    with path.open("wb") as f:
        capture.write_pcap(f, pkts)
    rc, out, err = _decode(capsys, path, "pmu-c37", "csv")
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    header, body = rows[0], rows[1:]
    assert header[:4] == ["frame", "arrival", "seq", "time"]
    assert header[4] == f"{stations[0][0]}.{stations[0][2][0]}.mag"
    assert len(body) == 2
    mags = [float(body[1][header.index(f"{st}.{n}.mag")]) for st, _, names in stations
            for n in names]
    np.testing.assert_allclose(mags, np.abs(zs[1]), rtol=1e-6)
    assert float(body[1][3]) == pytest.approx(1_700_000_000.02)


def test_decode_unknown_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"")
    rc, _, err = _decode(capsys, path, "nope", "table")
    assert rc == 2 and "pmu-c37" in err
