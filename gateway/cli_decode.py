"""``gridtwin decode``: print the frames of a capture with the stream's point names.

How a lab engineer checks an RSCAD point list against the twin config: capture the
GTNET-SKT or GTNET-PMU traffic with Wireshark (pcap or pcapng) or dump raw frames to a
file, then decode it with the config's stream. UDP and TCP payloads to or from the
stream's port are taken; a word count that disagrees with the point list shows up as a
``WrongPointCount`` error naming both counts.

A point list of the right length but the wrong order, types or byte order still decodes,
into nonsense: every value outside the physical range of its unit (NaN, infinity, a
voltage far from its bus's nominal, currents and powers far beyond the feeder's) is
marked implausible and the run ends with how many there were. A capture without a single
packet of the stream's port says so instead of "0 frames"; both exit non-zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "decode",
        help="decode a pcap/pcapng capture or raw frames with a stream's point list",
        description="Decode a capture (pcap/pcapng, UDP and TCP payloads to or from the "
                    "stream's port) or a file of raw frames, printing point names and "
                    "values per frame. GTNET-SKT values are multiplied by the point's "
                    "scale; C37.118 data frames are decoded with the capture's CFG-2, or "
                    "with the config's PMU list (float polar) when there is none.",
    )
    p.add_argument("--config", required=True, help="twin config (bundled name or .toml path)")
    p.add_argument("--stream", required=True, help="stream name in the config")
    p.add_argument("capture", help="pcap, pcapng or raw frame file")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default), csv (one row per data frame) or json (one "
                        "object per line)")
    p.set_defaults(func=run)


class _Row:
    __slots__ = ("arrival", "bad", "error", "info", "names", "seq", "time", "values")

    def __init__(self, arrival: float, *, seq: int | None = None, time: float | None = None,
                 names: list[str] | None = None, values: list[float] | None = None,
                 info: str | None = None, error: str | None = None,
                 bad: list[bool] | None = None) -> None:
        self.arrival = arrival
        self.seq = seq
        self.time = time
        self.names = names or []
        self.values = values or []
        self.info = info
        self.error = error
        self.bad = bad or [not math.isfinite(v) for v in self.values]


#: physical range per unit, relative to ``(nominal kV, feeder MVA, feeder kA)``; a value
#: outside says the point list or the byte order does not match the sender
def _unit_range(unit: str, kv: float, mva: float, ka: float) -> tuple[float, float] | None:
    return {
        "kV": (0.0, 2.0 * kv),  # 0 (dead bus) up to twice nominal
        "rad": (-2.0 * math.pi, 2.0 * math.pi),
        "kA": (-50.0 * ka, 50.0 * ka),  # fault currents reach tens of times rated
        "MW": (-20.0 * mva, 20.0 * mva),
        "MVAr": (-20.0 * mva, 20.0 * mva),
        "W/m2": (-50.0, 2000.0),
        "degC": (-80.0, 80.0),
        "m/s": (0.0, 120.0),
        "deg": (-360.0, 360.0),
    }.get(unit)


def point_ranges(cfg: Any, stream: Any) -> list[tuple[float, float] | None]:
    """The plausible range of each point of a GTNET-SKT stream (None: a status point)."""
    net = cfg.network
    load = float(abs(net.p_load).sum() + abs(net.q_load).sum()) * net.base_mva
    mva = max(net.base_mva, load + sum(p.rating_mw for p in cfg.plants))
    kv_min = max(float(min(net.base_kv)), 1e-3)
    ka = mva / (math.sqrt(3.0) * kv_min)
    out: list[tuple[float, float] | None] = []
    for pt in stream.points:
        if pt.channel is None:
            out.append(None)
            continue
        ch = cfg.channels[pt.channel]
        kv = float(net.base_kv[net.index_of(ch.bus)]) if ch.bus is not None else kv_min
        out.append(_unit_range(ch.unit, kv, mva, ka))
    return out


def implausible(values: list[float], ranges: list[tuple[float, float] | None]) -> list[bool]:
    """NaN, infinity, or outside the point's physical range."""
    out = []
    for v, r in zip(values, ranges, strict=True):
        out.append(not math.isfinite(v) or (r is not None and not r[0] <= v <= r[1]))
    return out


def _chunks(path: Path, stream: Any, seen: dict[str, int]) -> Iterator[tuple[float, Any, bytes]]:
    """(arrival, flow key, payload) from a capture, or the whole raw file as one chunk.

    The flow key is None for UDP datagrams (one frame each), the TCP flow for TCP, and
    "raw" for a raw file (frames back to back, like a TCP stream). ``seen`` counts the
    capture's UDP/TCP packets and those of the stream's port.
    """
    from gateway import capture

    with path.open("rb") as fh:
        head = fh.read(4)
    if not capture.is_capture(head):
        yield 0.0, "raw", path.read_bytes()
        return
    seen["capture"] = 1
    proto = "tcp" if stream.scheme == "tcp" else "udp"
    port = stream.port

    def matching() -> Iterator[capture.Packet]:
        for p in capture.read_packets(path):
            seen["packets"] = seen.get("packets", 0) + 1
            if p.proto == proto and port in (p.sport, p.dport):
                seen["matched"] = seen.get("matched", 0) + 1
                yield p

    pkts: Iterator[capture.Packet] = matching()
    if proto == "tcp":
        pkts = capture.tcp_payloads(pkts)
    for p in pkts:
        yield p.ts, (p.flow if proto == "tcp" else None), p.payload


def _skt_rows(path: Path, stream: Any, ranges: list[tuple[float, float] | None],
              seen: dict[str, int]) -> Iterator[_Row]:
    from gateway.codecs.gtnet_skt import GtnetSktCodec
    from gateway.errors import FrameError

    codec = GtnetSktCodec([pt.type for pt in stream.points], header=stream.header)
    names = [pt.name for pt in stream.points]
    scale = [pt.scale for pt in stream.points]
    for ts, flow, payload in _chunks(path, stream, seen):
        pieces = [payload]
        if flow is not None:  # TCP or raw file: fixed-size frames back to back
            pieces = [payload[i:i + codec.size] for i in range(0, len(payload), codec.size)]
        for piece in pieces:
            try:
                f = codec.parse(piece, ts)
            except FrameError as exc:
                yield _Row(ts, error=str(exc))
                continue
            vals = [float(v) * s for v, s in zip(f.values, scale, strict=True)]
            yield _Row(ts, seq=f.seq, time=f.ts, names=names, values=vals,
                       bad=implausible(vals, ranges))


def _c37_config(stream: Any) -> Any:
    from gateway.codecs import c37118

    fmt = (c37118.FMT_POLAR | c37118.FMT_PHASOR_FLOAT | c37118.FMT_FREQ_FLOAT
           | c37118.FMT_ANALOG_FLOAT)  # what hil.c37server sends
    stations = [(p.station, p.idcode, [ph.name for ph in p.phasors]) for p in stream.pmus]
    return c37118.make_config(stream.idcode, stations, fmt=fmt,
                              data_rate=int(stream.rate_hz))


def _c37_rows(path: Path, stream: Any, seen: dict[str, int]) -> Iterator[_Row]:
    from gateway.codecs import c37118
    from gateway.codecs.stream import StreamReassembler
    from gateway.errors import FrameError

    cfg = _c37_config(stream) if stream.pmus else None
    streams: dict[Any, StreamReassembler] = {}
    for ts, flow, payload in _chunks(path, stream, seen):
        if flow is None:
            frames = [payload]  # UDP: one frame per datagram
        else:
            frames = streams.setdefault(flow, StreamReassembler()).feed(payload)
        for raw in frames:
            try:
                fr = c37118.parse(raw, ts, cfg)
            except FrameError as exc:
                yield _Row(ts, error=str(exc))
                continue
            if isinstance(fr, c37118.ConfigFrame):
                cfg = fr
                yield _Row(ts, info=f"{c37118.FRAME_NAMES[fr.frame_type]} idcode={fr.idcode} "
                                    f"pmus={len(fr.pmus)} rate={fr.data_rate}")
            elif isinstance(fr, c37118.DataFrame):
                assert cfg is not None
                yield _Row(ts, time=fr.time, names=cfg.channel_names(),
                           values=fr.flat(cfg).tolist())
            elif isinstance(fr, c37118.HeaderFrame):
                yield _Row(ts, info=f"header idcode={fr.idcode}: {fr.text!r}")
            else:
                yield _Row(ts, info=f"command idcode={fr.idcode} cmd={fr.cmd}")
    for r in streams.values():
        if r.garbage_bytes:
            yield _Row(0.0, error=f"{r.garbage_bytes} bytes between frames skipped")


def _json_value(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _emit(rows: Iterator[_Row], fmt: str, out: TextIO) -> tuple[int, int, int]:
    n = errors = bad = 0
    writer = csv.writer(out) if fmt == "csv" else None
    header_done = False
    for i, r in enumerate(rows):
        if r.error is not None:
            errors += 1
            print(f"frame {i}: {r.error}", file=sys.stderr)
            if fmt == "json":
                out.write(json.dumps({"frame": i, "error": r.error}) + "\n")
            continue
        n += 1
        bad += sum(r.bad)
        if fmt == "table":
            if r.info:
                print(f"frame {i}  arrival={r.arrival:.6f}  {r.info}", file=out)
                continue
            seq = "" if r.seq is None else f"  seq={r.seq}"
            t = "" if r.time is None else f"  time={r.time:.6f}"
            print(f"frame {i}  arrival={r.arrival:.6f}{seq}{t}", file=out)
            width = max((len(x) for x in r.names), default=0)
            for name, v, b in zip(r.names, r.values, r.bad, strict=True):
                print(f"  {name:<{width}}  {v:.9g}{'  (implausible)' if b else ''}", file=out)
        elif fmt == "csv":
            assert writer is not None
            if r.info:
                continue
            if not header_done:
                writer.writerow(["frame", "arrival", "seq", "time", *r.names])
                header_done = True
            writer.writerow([i, r.arrival, "" if r.seq is None else r.seq,
                             "" if r.time is None else r.time, *r.values])
        else:
            obj: dict[str, Any] = {"frame": i, "arrival": r.arrival}
            if r.info:
                obj["info"] = r.info
            else:
                obj.update(seq=r.seq, time=r.time, values={
                    k: _json_value(v) for k, v in zip(r.names, r.values, strict=True)},
                    implausible=[k for k, b in zip(r.names, r.bad, strict=True) if b])
            out.write(json.dumps(obj) + "\n")
    return n, errors, bad


def run(args: argparse.Namespace) -> int:
    from gateway.capture import CaptureError
    from gateway.config import load_config
    from gateway.errors import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    stream = next((s for s in cfg.streams if s.name == args.stream), None)
    if stream is None:
        names = ", ".join(s.name for s in cfg.streams)
        print(f"no stream {args.stream!r} in the config (streams: {names})", file=sys.stderr)
        return 2
    path = Path(args.capture)
    if path.is_dir():
        print(f"{path}: is a directory; give a pcap, pcapng or raw frame file",
              file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    seen: dict[str, int] = {}
    rows = _c37_rows(path, stream, seen) if stream.format == "c37.118" else \
        _skt_rows(path, stream, point_ranges(cfg, stream), seen)
    import numpy as np

    try:
        # garbage decodes to signalling NaNs; they are reported as implausible, not warned
        with np.errstate(all="ignore"):
            n, errors, bad = _emit(rows, args.format, sys.stdout)
    except CaptureError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gridtwin decode ... | head`: the reader has had enough
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _summary(path, stream, n, errors, bad, seen)


def _summary(path: Path, stream: Any, n: int, errors: int, bad: int, seen: dict[str, int]
             ) -> int:
    """The closing lines; non-zero when nothing decoded, frames failed or values are
    implausible (the capture does not match the stream as configured)."""
    print(f"{n} frames decoded, {errors} errors", file=sys.stderr)
    if seen.get("capture") and not seen.get("matched"):
        print(f"{path}: no {stream.scheme.upper()} packet to or from port {stream.port} "
              f"among {seen.get('packets', 0)} UDP/TCP packets of the capture: its records "
              "are not Ethernet/IP traffic of this stream (wrong port, link type or a "
              "damaged file)", file=sys.stderr)
        return 1
    if bad:
        print(f"{bad} implausible values: the point list or the byte order may not match",
              file=sys.stderr)
    return 1 if errors or bad or not n else 0
