"""Decode benchmarks (the contract in docs/measured.md): µs per frame, median.

The peer is a plain construct parse of the same bytes through the same declaration, so
the ratio shows what deriving numpy layouts from the declaration buys on the hot path.
"""

from __future__ import annotations

import numpy as np

from gateway.bench import BenchResult, median, time_call_us
from gateway.codecs import c37118
from gateway.codecs.gtnet_skt import GtnetSktCodec


def skt_300() -> tuple[GtnetSktCodec, bytes]:
    """A 300-point list, every fourth point int32 (status words), the rest float32."""
    types = ["int32" if i % 4 == 3 else "float32" for i in range(300)]
    codec = GtnetSktCodec(types, header=False)
    values = np.random.default_rng(1).normal(size=300) * 100
    return codec, codec.build(values)


def c37118_8pmu() -> tuple[c37118.ConfigFrame, bytes]:
    """8 PMUs x 12 float rectangular phasors, float FREQ/DFREQ, in one data frame."""
    cfg = c37118.make_config(
        1, [(f"PMU{i}", 100 + i, [f"PH{k}" for k in range(12)]) for i in range(8)])
    rng = np.random.default_rng(2)
    z = rng.normal(size=96) + 1j * rng.normal(size=96)
    frame = c37118.DataFrame(1, 1_700_000_000, 20_000, np.zeros(8, np.uint16), z,
                             np.full(8, 50.01), np.zeros(8), np.zeros(0),
                             np.zeros(0, np.uint16))
    return cfg, frame.build(cfg)


def benchmarks(quick: bool) -> list[BenchResult]:
    n = 2000 if quick else 20000
    n_peer = 50 if quick else 300
    out = []
    codec, data = skt_300()
    fast = median(time_call_us(lambda: codec.parse(data, 0.0), repeat=n))
    peer = median(time_call_us(lambda: codec.declaration.parse(data), repeat=n_peer))
    out.append(BenchResult("decode.gtnet_skt_300", fast, "us", "construct parse", peer))
    cfg, frame = c37118_8pmu()
    dec = cfg.decoder()
    fast = median(time_call_us(lambda: dec.decode(frame, 0.0), repeat=n))
    peer = median(time_call_us(lambda: dec.declaration.parse(frame), repeat=n_peer))
    out.append(BenchResult("decode.c37118_data_8pmu", fast, "us", "construct parse", peer))
    return out
