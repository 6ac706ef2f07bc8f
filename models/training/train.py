"""Training and ONNX export of the measurement predictor (and shared training helpers).

``gridtwin train predictor [--trace T.npz ...] [--steps N] [--seed S] [--out DIR]``

* Data: windows of 9 measured values -> the next true value, from scenario traces
  (every PMU/SCADA channel, windows touching bad or missing data skipped) or, without
  traces, from synthetic channels (:func:`models.training.data.synthetic_predictor_data`).
  80 % of each channel's time span trains, the last 20 % is held out.
* Models (same data, same normalisation, same steps): the BiLSTM (ours, committed as
  ``predictor.onnx``), and the baselines LSTM (unidirectional) and BP (MLP), committed
  under ``baselines/`` for ``gridtwin evaluate``.
* Export: opset 17, dynamic batch axis (batch = channels of a snapshot), the BiLSTM as a
  lean fused, unrolled ONNX graph written from its weights
  (:func:`models.training.nets.bilstm_onnx`, 79 nodes after onnxruntime's fusions); the exported
  graph is run with onnxruntime and compared with ``nn.LSTM`` before the card is written.
* The detector threshold goes into the card (``extra.threshold``), chosen from the
  held-out clean distribution of the statistic when a held-out trace is given
  (:func:`gateway.quality.detector.choose_threshold`), else the documented default 8.

torch is imported here (training extra); the run time never imports this module.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.card import ModelCard, TensorSpec, card_path, save_card, sha256_file
from models.features import HIST, WINDOW
from models.training.data import PredictorData
from models.training.nets import MlpRegressor, RecurrentRegressor, bilstm_onnx

OPSET = 17
PRED_HIDDEN = 8  # BiLSTM hidden size per direction (latency budget: see models/bench.py)


class MseL1(nn.Module):
    """mean(d^2) + w mean(|d|): the squared error keeps the estimate near the conditional
    mean (what a pseudo-measurement wants); the small absolute term, w = 0.05 (comparable
    to the squared term at errors of a few % of rating), stops low-output samples, which
    the squared error all but ignores, from drifting in relative terms."""

    def __init__(self, w: float = 0.05) -> None:
        super().__init__()
        self.w = w

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = pred - target
        return (d * d).mean() + self.w * d.abs().mean()


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, *, steps: int, batch: int,
        lr: float, seed: int, loss: str = "huber", log: Callable[[str], None] | None = None,
        x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> dict[str, Any]:
    """Adam with cosine decay over ``steps`` mini-batches; returns a small history."""
    set_seed(seed)
    gen = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    crit: nn.Module = {"huber": nn.SmoothL1Loss(beta=1.0), "l1": nn.L1Loss(),
                       "mse+l1": MseL1()}.get(loss, nn.MSELoss())
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).reshape(-1, 1)
    n = xt.shape[0]
    model.train()
    t0 = time.perf_counter()
    hist: dict[str, Any] = {"loss": []}
    for k in range(steps):
        idx = torch.from_numpy(gen.integers(0, n, batch))
        opt.zero_grad()
        out = crit(model(xt[idx]), yt[idx])
        out.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (k % max(1, steps // 10) == 0 or k == steps - 1):
            msg = f"  step {k + 1}/{steps} loss {out.item():.4g}"
            if x_val is not None and y_val is not None:
                msg += f" val_rmse {rmse(predict(model, x_val), y_val):.4g}"
            log(msg + f" ({time.perf_counter() - t0:.0f} s)")
        if k % 50 == 0:
            hist["loss"].append(float(out.item()))
    model.eval()
    hist["seconds"] = time.perf_counter() - t0
    return hist


def predict(model: nn.Module, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    model.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(
                x[i:i + batch], dtype=np.float32))).numpy().reshape(-1))
    return np.concatenate(outs) if outs else np.zeros(0)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, input_name: str,
                output_name: str, check: nn.Module | None = None) -> None:
    """Legacy (TorchScript) exporter, opset 17, dynamic batch; verified with onnxruntime."""
    import warnings

    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET, dynamo=False)
    verify_onnx(path, check or module, example, input_name=input_name)


def verify_onnx(path: Path, reference: nn.Module, example: torch.Tensor, *, input_name: str,
                tol: float = 1e-4) -> float:
    """Run ``path`` with onnxruntime on ``example`` (batch 1 and full) and compare with
    ``reference`` in torch; raises if they differ by ``tol`` or more; returns the max error."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in (1, example.shape[0]):
        xe = example[:b]
        got = sess.run(None, {input_name: xe.numpy()})[0]
        with torch.inference_mode():
            ref = reference(xe).numpy()
        err = float(np.max(np.abs(got - ref)))
        if not err < tol:
            raise RuntimeError(f"{path}: onnxruntime differs from torch by {err}")
        worst = max(worst, err)
    return worst


def export_bilstm(model: RecurrentRegressor, length: int, example: torch.Tensor, path: Path,
                  *, input_name: str, output_name: str) -> None:
    """The lean unrolled ONNX graph of a trained BiLSTM (:func:`models.training.nets.bilstm_onnx`),
    opset 17, dynamic batch; verified against ``model`` (``nn.LSTM``) with onnxruntime."""
    import onnx

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(bilstm_onnx(model, length, input_name=input_name, output_name=output_name,
                          opset=OPSET), str(path))
    verify_onnx(path, model, example, input_name=input_name)


def save_torch_weights(model: nn.Module, path: Path) -> None:
    """The nn.LSTM state dict as .npz: the bench's PyTorch-eager peer runs the same model."""
    np.savez(path, **{k: v.detach().numpy() for k, v in model.state_dict().items()})


def write_card(path: Path, *, name: str, task: str, inputs: list[TensorSpec],
               outputs: list[TensorSpec], window: int, normalisation: dict[str, Any],
               training: dict[str, Any], metrics: dict[str, Any],
               extra: dict[str, Any]) -> ModelCard:
    card = ModelCard(name=name, task=task, onnx_file=path.name, sha256=sha256_file(path),
                     opset=OPSET, inputs=inputs, outputs=outputs, window=window,
                     normalisation=normalisation, training=training, metrics=metrics,
                     extra=extra)
    save_card(card, card_path(path))
    return card


# ------------------------------------------------------------------ measurement predictor

PRED_INPUTS = [TensorSpec("window", (None, HIST, 1), "float32", "1",
                          "previous T-1 cleaned values of one channel, (w - mean(w)) / "
                          "max(std(w), sigma_meas); batch = channels")]
PRED_OUTPUTS = [TensorSpec("next", (None, 1), "float32", "1",
                           "current value, same normalisation: x = mean(w) + scale * next")]
PRED_NORMALISATION = {
    "centre": "mean of the window",
    "scale": "max(population std of the window, channel measurement sigma from the config)",
    "target_clip": 12.0,
}


def split_by_time(data: PredictorData, frac: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``frac`` of each group's windows (train) and the rest."""
    tr, va = [], []
    for g in np.unique(data.group):
        idx = np.flatnonzero(data.group == g)
        cut = int(len(idx) * frac)
        tr.append(idx[:cut])
        va.append(idx[cut:])
    return np.concatenate(tr), np.concatenate(va)


def regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MAPE (%, over |truth| > 1e-6), RMSE, R^2 (paper's eqs.)."""
    err = pred - truth
    nz = np.abs(truth) > 1e-6
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    return {"mape_pct": float(100 * np.mean(np.abs(err[nz] / truth[nz]))) if nz.any() else 0.0,
            "rmse": rmse(pred, truth),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


def build_predictors(seed: int) -> dict[str, nn.Module]:
    set_seed(seed)
    return {
        "bilstm": RecurrentRegressor(1, PRED_HIDDEN, bidirectional=True),
        "lstm": RecurrentRegressor(1, PRED_HIDDEN * 2, bidirectional=False),
        "bp": MlpRegressor(1, HIST, 32),
    }


def train_predictor(data: PredictorData, out_dir: Path, *, steps: int, seed: int,
                    source: dict[str, Any], batch: int = 512, lr: float = 3e-3,
                    log: Callable[[str], None] = print,
                    which: tuple[str, ...] = ("bilstm", "lstm", "bp")) -> dict[str, Any]:
    """Train BiLSTM + baselines on ``data`` and write the ONNX files and cards."""
    torch.set_num_threads(1)  # small nets: threads only add sync overhead
    tr, va = split_by_time(data)
    log(f"predictor: {tr.size} training windows, {va.size} held out")
    models = build_predictors(seed)
    report: dict[str, Any] = {}
    for name in which:
        model = models[name]
        log(f"training {name} ({sum(p.numel() for p in model.parameters())} parameters)")
        hist = fit(model, data.x[tr], data.y[tr], steps=steps, batch=batch, lr=lr, seed=seed,
                   log=log, x_val=data.x[va][:20000], y_val=data.y[va][:20000])
        yn = predict(model, data.x[va])
        pred = data.centre[va] + data.scale[va] * yn
        m = regression_metrics(pred, data.truth[va])
        m["rmse_normalised"] = rmse(yn, data.y[va])
        report[name] = m
        log(f"  held-out: {json.dumps(m)}")
        example = torch.from_numpy(data.x[va][:64].copy())
        if name == "bilstm":
            path = out_dir / "predictor.onnx"
            assert isinstance(model, RecurrentRegressor)
            export_bilstm(model, HIST, example, path, input_name="window", output_name="next")
            save_torch_weights(model, out_dir / "predictor.torch.npz")
        else:
            path = out_dir / "baselines" / f"predictor_{name}.onnx"
            export_onnx(model, example, path, input_name="window", output_name="next")
        write_card(
            path, name=path.stem,
            task=f"measurement predictor ({name}): previous T-1 values -> current value",
            inputs=PRED_INPUTS, outputs=PRED_OUTPUTS, window=WINDOW,
            normalisation=PRED_NORMALISATION,
            training={"data": source, "seed": seed, "steps": steps, "batch": batch, "lr": lr,
                      "optimizer": "Adam, cosine decay", "loss": "Huber (SmoothL1, beta 1)",
                      "train_windows": int(tr.size), "held_out_windows": int(va.size),
                      "architecture": _describe(name), "seconds": round(hist["seconds"], 1)},
            metrics={"held_out": m},
            extra={"threshold": 8.0,
                   "threshold_method": "default (no held-out trace calibration yet)",
                   "torch_weights": "predictor.torch.npz", "hidden": PRED_HIDDEN,
                   "torch_weights_sha256": sha256_file(out_dir / "predictor.torch.npz")}
            if name == "bilstm" else {},
        )
        log(f"  wrote {path} ({path.stat().st_size} bytes)")
    return report


def _describe(name: str) -> str:
    return {
        "bilstm": f"1-layer bidirectional LSTM, hidden {PRED_HIDDEN}/direction, final states "
                  "of both directions -> linear; exported as a lean fused/unrolled graph "
                  "(models.training.nets.bilstm_onnx)",
        "lstm": f"1-layer LSTM, hidden {2 * PRED_HIDDEN}, final state -> linear",
        "bp": "MLP 9-32-32-1, tanh (BP neural network)",
    }[name]
