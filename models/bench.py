"""``gridtwin bench`` figures of the models package.

``quality.ieee33.snapshot`` (µs, p99): one call of ``QualityStage.process`` on an IEEE33
snapshot (148 channels: 124 electrical go through the BiLSTM predictor in one batched
onnxruntime call, detection, correction; weather hold; PV forecaster every 20 s of
snapshot time). Peer, same run, same snapshots: the identical stage with the predictor
run by PyTorch eager (``nn.LSTM`` with the committed weights, one thread, inference
mode), when torch is installed. Both use one intra-op thread.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gateway.bench import BenchResult, p99, time_call_us


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
    from models.nets import RecurrentRegressor
    from models.runtime import default_models_dir

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


def benchmarks(quick: bool) -> list[BenchResult]:
    from gateway.config import load_config
    from gateway.quality import QualityStage

    cfg = load_config("ieee33")
    warm, reps = 50, (300 if quick else 2000)
    snaps = synthetic_snapshots(cfg, warm + reps)
    flags = np.zeros(snaps.shape[1], np.uint32)

    def measure(stage: QualityStage) -> float:
        for k in range(warm):
            stage.process(snaps[k], flags, k / 50.0)
        it = iter(range(warm, warm + reps))

        def one() -> None:
            k = next(it)
            stage.process(snaps[k], flags, k / 50.0)

        return p99(time_call_us(one, repeat=reps, warmup=0))

    ours = measure(QualityStage(cfg))
    peer_fn = _torch_predictor()
    peer = measure(QualityStage(cfg, predictor=peer_fn)) if peer_fn is not None else None
    return [BenchResult("quality.ieee33.snapshot", ours, "us",
                        "PyTorch eager" if peer is not None else None, peer)]
