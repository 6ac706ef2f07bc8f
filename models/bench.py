"""``gridtwin bench`` figures of the models package.

All on the same synthetic IEEE33 snapshots at 50 Hz (148 channels; 124 electrical go
through the BiLSTM predictor in one batched call), after a warm-up of 200 snapshots
(the detector's rings full, onnxruntime's and torch's first-call costs paid):

* ``quality.ieee33.snapshot`` (µs, p99) and ``quality.ieee33.snapshot_p50`` (µs, median):
  one whole call of ``QualityStage.process`` (normalise ▸ predict ▸ detect ▸ correct ▸
  weather hold ▸ PV forecaster every card ``stride_s`` = 2 s of snapshot time). Peer: the
  identical stage with the predictor run by PyTorch eager (``nn.LSTM`` with the committed
  weights ``predictor.torch.npz``, one thread, inference mode).
* ``quality.ieee33.critical_p99`` (µs, p99): what the live gateway waits for per snapshot,
  ``QualityStage.process`` with the next prediction already made by ``lookahead()`` (the
  gateway runs it after the handoff, off the critical path; not timed here). No peer.
* ``quality.ieee33.predictor_p99`` / ``quality.ieee33.predictor`` (µs, p99 / median):
  the network alone on the windows the stage prepared for each snapshot: our
  onnxruntime call (IO-bound buffers) against ``nn.LSTM`` on the same float32 array.
* ``quality.ieee33.pv_stride_critical`` (µs, median over strides): ``process`` of the
  snapshots that take a PV stride sample (every 8th here: snapshot time steps by an eighth
  of the card's stride), as the gateway calls it after ``lookahead()``; and
  ``quality.ieee33.pv_stride_lookahead`` (µs, median over strides of the largest): the
  ``lookahead()`` after each of them and after the next, where the sample's sun terms and
  the forecaster's run go. No peer.
* ``quality.ieee33.startup`` (ms, median of 3 new stages): ``process`` summed over a new
  stage's first 10 snapshots (the detector still filling its rings, the very first PV
  forecast), arriving at 1 kHz, with the predictor process and ``lookahead()`` as in the
  gateway. No peer.

Ours and the peer are timed alternately in blocks of 100 snapshots, over the same snapshot
sequence, so that both see the same machine load (the figures are p99s on a shared
machine: a load spike hits both, not one).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np

from gateway.bench import BenchResult, p99


def synthetic_snapshots(cfg: object, n: int, *, seed: int = 0, bad_frac: float = 0.02
                        ) -> np.ndarray:
    """(n, m) plausible IEEE33 values at 50 Hz: levels by quantity, slow drift, noise,
    ``bad_frac`` gross errors (+-40 %)."""
    rng = np.random.default_rng(seed)
    chans = cfg.channels  # type: ignore[attr-defined]
    m = len(chans)
    level = np.empty(m)
    for i, c in enumerate(chans):
        level[i] = {"vm": 12.3, "va": -0.01, "im": 0.08, "ia": -0.4, "p": 0.8, "q": 0.4,
                    "pinj": -0.1, "qinj": -0.05, "ghi": 600.0, "dni": 700.0, "dhi": 120.0,
                    "temp_air": 24.0, "wind_speed": 3.0, "wind_dir": 200.0
                    }.get(c.quantity, 1.0) * rng.uniform(0.8, 1.2)
    t = np.arange(n)[:, None] / 50.0
    truth = level * (1 + 0.02 * np.sin(2 * np.pi * t / 60.0 + rng.uniform(0, 6, m)))
    rel = np.array([c.rel for c in chans])
    ab = np.array([c.abs for c in chans])
    k = np.array([c.k for c in chans])
    sig = np.maximum(rel * np.abs(truth), ab) / k
    x = truth + rng.standard_normal(truth.shape) * sig
    elec = np.array([c.electrical for c in chans])
    bad = (rng.random(x.shape) < bad_frac) & elec
    x[bad] *= 1 + rng.choice([-0.4, 0.4], bad.sum())
    return x


def _torch_predictor() -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        import torch
    except ImportError:
        return None
    from models.card import card_path, load_card, sha256_file
    from models.errors import ModelCardMismatch
    from models.runtime import default_models_dir
    from models.training.nets import RecurrentRegressor

    d = default_models_dir()
    card = load_card(card_path(d / "predictor.onnx"))
    wpath = d / str(card.extra.get("torch_weights", "predictor.torch.npz"))
    if sha256_file(wpath) != card.extra.get("torch_weights_sha256"):
        raise ModelCardMismatch(f"{wpath} does not match the predictor card")
    model = RecurrentRegressor(1, int(card.extra.get("hidden", 8)), bidirectional=True)
    with np.load(wpath) as w:
        model.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    model.eval()
    torch.set_num_threads(1)

    def run(xn: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(xn)).numpy()
        return out

    return run


def _interleaved(fns: list[Callable[[int], object]], ks: range, block: int = 100
                 ) -> list[np.ndarray]:
    """Time ``fn(k)`` for every k in ``ks`` (µs), the functions alternating per block."""
    clock = time.perf_counter_ns
    out: list[list[float]] = [[] for _ in fns]
    for k0 in range(ks.start, ks.stop, block):
        for fn, acc in zip(fns, out, strict=True):
            for k in range(k0, min(k0 + block, ks.stop)):
                t0 = clock()
                fn(k)
                acc.append((clock() - t0) / 1e3)
    return [np.asarray(a) for a in out]


def benchmarks(quick: bool) -> list[BenchResult]:
    from gateway.config import load_config
    from gateway.quality import QualityStage

    cfg = load_config("ieee33")
    warm, reps = 200, (500 if quick else 3000)
    snaps = synthetic_snapshots(cfg, warm + reps)
    flags = np.zeros(snaps.shape[1], np.uint32)
    peer_fn = _torch_predictor()

    stages = [QualityStage(cfg)]
    if peer_fn is not None:
        stages.append(QualityStage(cfg, predictor=peer_fn))
    for st in stages:  # warm-up: rings full, first-call costs paid
        for k in range(warm):
            st.process(snaps[k], flags, k / 50.0)
    gc.collect()
    whole = _interleaved(
        [lambda k, st=st: st.process(snaps[k], flags, k / 50.0) for st in stages],  # type: ignore[misc]
        range(warm, warm + reps))

    # the critical path: process() after lookahead(), as the gateway calls them
    crit_stage = QualityStage(cfg)
    for k in range(warm):
        crit_stage.process(snaps[k], flags, k / 50.0)
        crit_stage.lookahead()
    crit: list[float] = []
    clock = time.perf_counter_ns
    gc.collect()
    for k in range(warm, warm + reps):
        t0 = clock()
        crit_stage.process(snaps[k], flags, k / 50.0)
        crit.append((clock() - t0) / 1e3)
        crit_stage.lookahead()

    # the network alone, on the windows the stage prepared for each snapshot
    probe = QualityStage(cfg)
    bound = probe.predictor_bound
    inputs = np.empty((reps, *probe.predictor_input.shape), np.float32)
    for k in range(warm + reps):
        probe.process(snaps[k], flags, k / 50.0)
        if k >= warm:
            inputs[k - warm] = probe.predictor_input
    nets: list[Callable[[int], object]] = []
    if bound is not None:
        def ours(k: int) -> None:
            bound.input[...] = inputs[k - warm]
            bound()

        nets.append(ours)
    if peer_fn is not None:
        nets.append(lambda k: peer_fn(inputs[k - warm]))
    gc.collect()
    net = _interleaved(nets, range(warm, warm + reps)) if bound is not None else []

    peer_name = "PyTorch eager" if peer_fn is not None else None
    p_whole = whole[1] if peer_fn is not None else None
    p_net = net[1] if peer_fn is not None and len(net) > 1 else None
    res = [
        BenchResult("quality.ieee33.snapshot", p99(whole[0]), "us", peer_name,
                    p99(p_whole) if p_whole is not None else None),
        BenchResult("quality.ieee33.snapshot_p50", float(np.median(whole[0])), "us",
                    peer_name, float(np.median(p_whole)) if p_whole is not None else None),
        BenchResult("quality.ieee33.critical_p99", p99(crit), "us"),
    ]
    if net:
        res += [
            BenchResult("quality.ieee33.predictor_p99", p99(net[0]), "us", peer_name,
                        p99(p_net) if p_net is not None else None),
            BenchResult("quality.ieee33.predictor", float(np.median(net[0])), "us",
                        peer_name, float(np.median(p_net)) if p_net is not None else None),
        ]
    return res + _pv_stride(cfg, snaps, flags, quick) + [_startup(cfg, snaps, flags)]


def _pv_stride(cfg: object, snaps: np.ndarray, flags: np.ndarray, quick: bool
               ) -> list[BenchResult]:
    """``quality.ieee33.pv_stride_critical`` and ``…_pv_stride_lookahead`` (module doc)."""
    from gateway.quality import QualityStage

    st = QualityStage(cfg)  # type: ignore[arg-type]
    step = st.pv_stride_s / 8
    t0 = float(np.datetime64("1990-06-01T16:00", "s").astype(np.int64))  # daylight
    clock = time.perf_counter_ns
    crit, ahead = [], []
    n = min(len(snaps), 800 if quick else 2400)
    for k in range(n):
        a = clock()
        st.process(snaps[k], flags, t0 + k * step)
        b = clock()
        st.lookahead()
        c = clock()
        if k >= 80 and k % 8 == 0:
            crit.append((b - a) / 1e3)
            ahead.append((c - b) / 1e3)
        elif k >= 80 and k % 8 == 1:
            ahead[-1] = max(ahead[-1], (c - b) / 1e3)
    return [BenchResult("quality.ieee33.pv_stride_critical", float(np.median(crit)), "us"),
            BenchResult("quality.ieee33.pv_stride_lookahead", float(np.median(ahead)), "us")]


def _startup(cfg: object, snaps: np.ndarray, flags: np.ndarray) -> BenchResult:
    """``quality.ieee33.startup`` (module doc)."""
    from gateway.quality import QualityStage

    t0 = float(np.datetime64("1990-06-01T16:00", "s").astype(np.int64))
    sums = []
    for _ in range(3):
        st = QualityStage(cfg, predictor_process=True)  # type: ignore[arg-type]
        try:
            total = 0.0
            start = time.perf_counter()
            for k in range(10):  # arriving at 1 kHz
                time.sleep(max(0.0, start + k / 1000.0 - time.perf_counter()))
                st.collect()  # the predictor process's answer, if it has come
                a = time.perf_counter()
                st.process(snaps[k], flags, t0 + k / 1000.0)
                total += time.perf_counter() - a
                st.lookahead()
            sums.append(total * 1e3)
        finally:
            st.close()
    return BenchResult("quality.ieee33.startup", float(np.median(sums)), "ms")
