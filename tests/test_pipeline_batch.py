"""The batch path (:meth:`Pipeline.feed_frames`, what the UDP transport calls once per
wake-up) gives what the one-frame path gives: the same outputs in the same order and the
same statistics, aligner counts and telemetry, over random frame orders.

The frames are random but realistic: each stream sends its slot's frame most of the time,
some are lost, duplicated, swapped with the next, held back a few slots, stamped 0 (time
source lost), stamped far ahead, cut short, or the sender restarts its sequence. Both
pipelines see the same frames with the same arrival times; the one-frame pipeline gets
them one by one, the other in batches of consecutive frames of one stream, split at
random; both get the same lag-window ticks between batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import TwinConfig, load_config
from gateway.pipeline import (
    Event,
    Handoff,
    Output,
    Pipeline,
    Settle,
    StoreForecast,
    StoreLate,
    StoreSnapshot,
)
from gateway.telemetry import Telemetry

T0 = 1_700_000_000.0
RATE = 50.0
CFG = load_config("ieee33")
SINGLE = dataclasses.replace(CFG, streams=[
    s if s.name == CFG.enabled_streams[0].name else dataclasses.replace(s, enabled=False)
    for s in CFG.streams])
CODECS = {s.name: GtnetSktCodec([p.type for p in s.points], header=s.header)
          for s in CFG.enabled_streams}

# what becomes of a stream's frame in one slot (weights: mostly ordinary)
FATES = ["ok"] * 30 + ["lost", "dup", "swap", "hold", "ts0", "future", "short", "restart",
                       "nan", "jitter", "silent"]
SILENT_SLOTS = 100  # a stream silent this long: more slots pend than the aligner keeps


def make(cfg: TwinConfig) -> Pipeline:
    p = Pipeline(cfg, Telemetry(cfg, clock=lambda: 0.0), perf=lambda: 0.0)
    p.handoff = p.store = True
    return p


def build(name: str, k: int, seq: int, ts: float, nan: bool) -> bytes:
    c = CODECS[name]
    vals = np.arange(c.n_points, dtype=float) * 0.25 + k
    if nan:
        vals[::3] = np.nan
    return c.build(vals, seq=seq, ts=ts)


def schedule(cfg: TwinConfig, fates: list[str], delays: list[float]
             ) -> list[tuple[str, bytes, float]]:
    """(stream, frame, arrival) in arrival order: slot by slot, each enabled stream's
    frame with the fate drawn for it."""
    names = [s.name for s in cfg.enabled_streams]
    seq = dict.fromkeys(names, 0)
    silent = dict.fromkeys(names, -1)
    held: list[tuple[float, str, bytes]] = []
    out: list[tuple[float, str, bytes]] = []
    n_slots = len(fates) // len(names)
    for k in range(n_slots):
        for j, name in enumerate(names):
            fate = fates[k * len(names) + j]
            now = T0 + k / RATE + 1e-4 + j * 1e-5 + delays[(k * 7 + j) % len(delays)]
            if fate == "silent" and silent[name] < k:
                silent[name] = k + SILENT_SLOTS
            if k <= silent[name]:
                seq[name] += 1
                continue
            if fate == "restart":
                seq[name] = 3
            s = seq[name]
            seq[name] = s + 1
            ts = {"ts0": 0.0, "future": T0 + 3600.0}.get(fate, T0 + k / RATE)
            if fate == "jitter":  # stamped off the grid: the phase estimate is clipped
                ts += (delays[k % len(delays)] * 50 - 0.75) / RATE
            data = build(name, k, s, ts, fate == "nan")
            if fate == "lost":
                continue
            if fate == "short":
                data = data[:-4]
            if fate == "hold":  # arrives three slots later
                held.append((now + 3 / RATE, name, data))
                continue
            out.append((now, name, data))
            if fate == "dup":
                out.append((now + 1e-6, name, data))
            if fate == "swap" and len(out) >= 2 and out[-2][1] == name:
                out[-1], out[-2] = (out[-2][0], name, out[-1][2]), (now, name, out[-2][2])
    out += held
    out.sort(key=lambda x: x[0])
    return [(name, data, now) for now, name, data in out]


def canon(o: Output) -> tuple[Any, ...]:
    """An output as comparable plain data (array bytes, NaN included)."""
    if isinstance(o, Handoff):
        s = o.snapshot
        return ("handoff", s.seq, s.source_time, s.arrival_time, s.published_time,
                s.values.tobytes(), s.flags.tobytes(), o.pv_mw.tobytes(),
                o.pv_sigma_mw.tobytes())
    if isinstance(o, StoreSnapshot):
        return ("snapshot", o.seq, o.source_time, o.arrival_time, o.raw_values.tobytes(),
                o.raw_flags.tobytes(), o.values.tobytes(), o.flags.tobytes())
    if isinstance(o, StoreLate):
        return ("late", o.seq, o.source_time, o.arrival_time, o.values.tobytes(),
                o.flags.tobytes())
    if isinstance(o, StoreForecast):
        return ("forecast", o.seq, o.time, sorted(o.pv_mw.items()),
                sorted(o.sigma_mw.items()))
    if isinstance(o, Event):
        return ("event", o.kind, o.source, repr(sorted(o.detail.items())))
    assert isinstance(o, Settle)
    return ("settle",)


def carry(p: Pipeline, out: list[Output], log: list[tuple[Any, ...]]) -> None:
    """What the runner does with outputs: note them, settle after each SETTLE."""
    for o in list(out):
        log.append(canon(o))
        if isinstance(o, Settle):
            log.extend(canon(x) for x in p.settle())


def state(p: Pipeline) -> dict[str, Any]:
    """Everything the pipeline counted (rates measured at one instant)."""
    tel = p.telemetry
    return {"streams": [s.as_dict(T0 + 1e4) for s in p.stats.values()],
            "aligner": dataclasses.asdict(p.aligner.stats),
            "pending": p.aligner.pending, "held": p.aligner.held,
            "snapshots": tel.snapshots, "flags": tel.flag_counts.tolist(),
            "align_s": list(tel.align_s),
            "decode_samples": {n: len(v) for n, v in tel.obs_decode.items()}}


def batches(frames: list[tuple[str, bytes, float]], cuts: list[int]
            ) -> list[tuple[str, list[bytes], list[float]]]:
    """What the runner's wake-ups read: each stream's frames queue in its own socket; a
    wake-up takes up to ``cut`` frames of the stream whose oldest frame arrived first.
    Arrival times are the read times (never decreasing in processing order)."""
    queues: dict[str, list[tuple[bytes, float]]] = {}
    for name, data, now in frames:
        queues.setdefault(name, []).append((data, now))
    out: list[tuple[str, list[bytes], list[float]]] = []
    clock = -np.inf
    b = 0
    while any(queues.values()):
        name = min((q[0][1], n) for n, q in queues.items() if q)[1]
        q = queues[name]
        take, queues[name] = q[:max(1, cuts[b % len(cuts)])], q[max(1, cuts[b % len(cuts)]):]
        nows = []
        for _, now in take:
            clock = max(clock + 1e-6, now)
            nows.append(clock)
        out.append((name, [d for d, _ in take], nows))
        b += 1
    return out


def run_both(cfg: TwinConfig, frames: list[tuple[str, bytes, float]], cuts: list[int],
             ticks: list[bool]) -> tuple[list[Any], list[Any], Pipeline, Pipeline]:
    one, many = make(cfg), make(cfg)
    log_one: list[tuple[Any, ...]] = []
    log_many: list[tuple[Any, ...]] = []
    end = T0
    for b, (name, datas, nows) in enumerate(batches(frames, cuts)):
        for data, now in zip(datas, nows, strict=True):
            carry(one, one.feed_frame(name, data, now), log_one)
        carry(many, many.feed_frames(name, datas, nows), log_many)
        end = nows[-1]
        if ticks[b % len(ticks)]:
            carry(one, one.tick(end), log_one)
            carry(many, many.tick(end), log_many)
    carry(one, one.flush(end + 1.0), log_one)
    carry(many, many.flush(end + 1.0), log_many)
    return log_one, log_many, one, many


fates_st = hst.lists(hst.sampled_from(FATES), min_size=30, max_size=240)
delays_st = hst.lists(hst.floats(0.0, 0.03), min_size=1, max_size=8)
# fewer ticks than batches: the lag window does not always publish in time
cuts_st = hst.lists(hst.integers(1, 40), min_size=1, max_size=6)
ticks_st = hst.lists(hst.booleans(), min_size=1, max_size=5)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fates_st, delays_st, cuts_st, ticks_st)
def test_batch_equals_frame_by_frame_three_streams(
        fates: list[str], delays: list[float], cuts: list[int], ticks: list[bool]) -> None:
    frames = schedule(CFG, fates, delays)
    log_one, log_many, one, many = run_both(CFG, frames, cuts, ticks)
    assert log_many == log_one
    assert state(many) == state(one)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fates_st, delays_st, cuts_st, ticks_st)
def test_batch_equals_frame_by_frame_one_stream(
        fates: list[str], delays: list[float], cuts: list[int], ticks: list[bool]) -> None:
    frames = schedule(SINGLE, fates, delays)
    log_one, log_many, one, many = run_both(SINGLE, frames, cuts, ticks)
    assert log_many == log_one
    assert state(many) == state(one)


@pytest.mark.parametrize(("cfg", "fates", "ticks"), [
    # a stream silent for longer than the aligner keeps slots, no lag-window tick: the
    # oldest slots are published as new ones open
    (CFG, ["ok"] * 30 + ["silent"] + ["ok"] * 600, [False]),
    # timestamps off the grid by more than the phase tracking's clip
    (SINGLE, ["ok", "jitter"] * 100, [True]),
    (CFG, ["ok", "ok", "jitter", "ok"] * 100, [False, True]),
])
def test_batch_equals_frame_by_frame_cases(cfg: TwinConfig, fates: list[str],
                                           ticks: list[bool]) -> None:
    for delays in ([0.0, 0.03, 0.011, 0.027], [0.029, 0.001]):
        frames = schedule(cfg, fates, delays)
        log_one, log_many, one, many = run_both(cfg, frames, [32, 7], ticks)
        assert log_many == log_one
        assert state(many) == state(one)


def test_batch_path_takes_runs() -> None:
    """In-order frames go through the run path (one decode for the batch), and what it
    publishes is what the frames say: one snapshot per frame on a single stream."""
    frames = schedule(SINGLE, ["ok"] * 64, [0.0])
    p = make(SINGLE)
    calls = 0
    parse_many = CODECS["pmu"].parse_many
    codec = p.decoders["pmu"].codec  # type: ignore[union-attr]

    def counting(fr: Any) -> Any:
        nonlocal calls
        calls += 1
        return parse_many(fr)

    codec.parse_many = counting  # type: ignore[method-assign]
    log: list[tuple[Any, ...]] = []
    carry(p, p.feed_frames("pmu", [d for _, d, _ in frames], [t for _, _, t in frames]),
          log)
    assert calls == 1
    handoffs = [x for x in log if x[0] == "handoff"]
    assert [h[1] for h in handoffs] == [round((T0 + k / RATE) * RATE) for k in range(64)]
    first = CODECS["pmu"].parse(frames[5][1], 0.0).values
    stream = SINGLE.stream("pmu")
    chans = [pt.channel for pt in stream.points if pt.channel is not None]
    got = np.frombuffer(handoffs[5][5])[chans]
    scale = np.array([pt.scale for pt in stream.points if pt.channel is not None])
    assert np.array_equal(got, first[[i for i, pt in enumerate(stream.points)
                                      if pt.channel is not None]] * scale)
    assert p.stats["pmu"].received == 64
    assert p.telemetry.snapshots == 64
