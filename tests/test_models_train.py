"""Training smoke run (a few steps) when torch is installed: the code path, not the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.card import card_path, load_card, sha256_file  # noqa: E402
from models.runtime import OnnxModel  # noqa: E402
from models.training.data import synthetic_predictor_data  # noqa: E402


def test_predictor_training_smoke(tmp_path: Path) -> None:
    from models.training.train import train_predictor

    data = synthetic_predictor_data(6, 200, seed=3)
    report = train_predictor(data, tmp_path, steps=5, seed=0, source={"kind": "test"},
                             batch=64, log=lambda _m: None)
    assert set(report) == {"bilstm", "lstm", "bp"}
    for path in (tmp_path / "predictor.onnx", tmp_path / "baselines" / "predictor_bp.onnx",
                 tmp_path / "baselines" / "predictor_lstm.onnx"):
        card = load_card(card_path(path))
        assert card.sha256 == sha256_file(path)
        model = OnnxModel(path)
        assert model.run(data.x[:7]).shape == (7, 1)


def test_fused_export_matches_nn_lstm() -> None:
    from models.training.nets import FusedBiLstm, RecurrentRegressor

    torch.manual_seed(0)
    for n_in, length in ((1, 9), (6, 10)):
        model = RecurrentRegressor(n_in, 5, bidirectional=True, head_hidden=3).eval()
        fused = FusedBiLstm(model, length).eval()
        x = torch.randn(11, length, n_in)
        with torch.inference_mode():
            assert torch.allclose(model(x), fused(x), atol=1e-5)


def test_lean_bilstm_export_matches_nn_lstm(tmp_path: Path) -> None:
    import onnxruntime as ort

    from models.training.nets import RecurrentRegressor
    from models.training.train import export_bilstm

    torch.manual_seed(0)
    for n_in, length, head_hidden in ((1, 9, 0), (6, 10, 3)):
        model = RecurrentRegressor(n_in, 5, bidirectional=True, head_hidden=head_hidden).eval()
        x = torch.randn(13, length, n_in)
        path = tmp_path / f"m{n_in}.onnx"
        export_bilstm(model, length, x, path, input_name="x", output_name="y")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for b in (1, 13):
            with torch.inference_mode():
                ref = model(x[:b]).numpy()
            got = sess.run(None, {"x": x[:b].numpy()})[0]
            assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-5


def test_committed_predictor_matches_its_torch_weights() -> None:
    from models.runtime import PREDICTOR, default_models_dir, load_model
    from models.training.nets import RecurrentRegressor

    d = default_models_dir()
    card = load_card(card_path(d / "predictor.onnx"))
    wpath = d / str(card.extra["torch_weights"])
    assert sha256_file(wpath) == card.extra["torch_weights_sha256"]
    model = RecurrentRegressor(1, int(card.extra["hidden"]), bidirectional=True)
    with np.load(wpath) as w:
        model.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    model.eval()
    x = np.random.default_rng(0).standard_normal((500, 9, 1)).astype(np.float32) * 3
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(load_model(PREDICTOR).run(x) - ref).max() < 1e-5


def test_pv_training_smoke(tmp_path: Path) -> None:
    from models.training.train_pv import train_pv

    report = train_pv(tmp_path, site="miami", test_site="greensboro", n_days=2, steps=3,
                      seed=0, batch=32, log=lambda _m: None, sim_step_s=300.0)
    assert "unseen_site" in report["bilstm"]
    model = OnnxModel(tmp_path / "pv_forecaster.onnx")
    n_in = len(model.card.normalisation["features"])
    from models.pv_features import PV_SUN_FEATURES

    assert n_in == len(PV_SUN_FEATURES) == 13  # six weather inputs + seven sun terms
    assert model.run(np.zeros((2, 10, n_in), np.float32)).shape == (2, 1)
