"""Model cards: the committed ONNX files load only with the card that pins them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.card import card_path, load_card, sha256_file
from models.errors import ModelCardMismatch, ModelError
from models.runtime import PREDICTOR, PV, OnnxModel, default_models_dir, load_model

MODELS = default_models_dir()
COMMITTED = [MODELS / "predictor.onnx", MODELS / "pv_forecaster.onnx",
             MODELS / "baselines" / "predictor_bp.onnx",
             MODELS / "baselines" / "predictor_lstm.onnx", MODELS / "baselines" / "pv_bp.onnx"]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_model_matches_card(path: Path) -> None:
    card = load_card(card_path(path))
    assert card.sha256 == sha256_file(path)
    assert card.onnx_file == path.name
    assert path.stat().st_size < 400_000  # small enough to commit
    assert card.window == 10
    assert card.training["seed"] is not None and card.metrics
    assert card.inputs[0].shape[0] is None  # dynamic batch axis
    for spec in card.inputs + card.outputs:
        assert spec.unit and spec.description


def _copy(tmp_path: Path, name: str = "predictor") -> Path:
    dst = tmp_path / f"{name}.onnx"
    shutil.copy(MODELS / f"{name}.onnx", dst)
    shutil.copy(card_path(MODELS / f"{name}.onnx"), card_path(dst))
    return dst


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    dst = _copy(tmp_path)
    data = bytearray(dst.read_bytes())
    data[-1] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(ModelCardMismatch, match="sha256"):
        OnnxModel(dst)


def test_card_with_other_input_name_is_refused(tmp_path: Path) -> None:
    dst = _copy(tmp_path)
    raw = json.loads(card_path(dst).read_text())
    raw["inputs"][0]["name"] = "x"
    card_path(dst).write_text(json.dumps(raw))
    with pytest.raises(ModelCardMismatch, match="input names"):
        OnnxModel(dst)


def test_card_with_other_shape_is_refused(tmp_path: Path) -> None:
    dst = _copy(tmp_path)
    raw = json.loads(card_path(dst).read_text())
    raw["inputs"][0]["shape"] = [None, 12, 1]
    card_path(dst).write_text(json.dumps(raw))
    with pytest.raises(ModelCardMismatch, match="axis 1"):
        OnnxModel(dst)


def test_missing_card_and_model(tmp_path: Path) -> None:
    dst = _copy(tmp_path)
    card_path(dst).unlink()
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(dst)
    with pytest.raises(ModelError, match="gridtwin train"):
        load_model("nope", tmp_path)
    card_path(dst).write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        OnnxModel(dst)


def test_models_run_with_any_batch() -> None:
    pred = load_model(PREDICTOR)
    for b in (1, 124):
        x = np.random.default_rng(b).standard_normal((b, 9, 1)).astype(np.float32)
        y = pred.run(x)
        assert y.shape == (b, 1) and np.isfinite(y).all()
    pv = load_model(PV)
    n_in = len(pv.card.normalisation["features"])
    x = np.random.default_rng(0).random((4, 10, n_in)).astype(np.float32)
    assert pv.run(x).shape == (4, 1)


def test_bound_model_matches_run() -> None:
    pred = load_model(PREDICTOR)
    bound = pred.bind(124)
    for seed in (0, 1):
        x = np.random.default_rng(seed).standard_normal((124, 9, 1)).astype(np.float32)
        bound.input[...] = x
        y = bound()
        assert y is bound.output  # filled in place, no allocation
        assert np.array_equal(y, pred.run(x))


def test_card_records_threshold_and_pv_error_model() -> None:
    card = load_card(card_path(MODELS / "predictor.onnx"))
    assert 4.0 <= float(card.extra["threshold"]) <= 50.0
    assert "median" in card.extra["threshold_method"]
    pv = load_card(card_path(MODELS / "pv_forecaster.onnx"))
    assert pv.extra["train_site"] != pv.metrics["unseen_site"]["site"]
    feats = pv.normalisation["features"]
    assert len(pv.normalisation["min"]) == len(feats) == pv.inputs[0].shape[-1]
    assert pv.extra["sigma_pu"]["abs"] > 0
    assert pv.extra["sigma_pu"].get("form", "linear") in ("linear", "p(1-p)")
    # every input the card lists is one the runtime can build (models.pv_features)
    from models.pv_features import PV_SUN_FEATURES, feature_ranges

    assert set(feats) <= set(PV_SUN_FEATURES)
    lo, hi = feature_ranges(feats)
    assert lo.tolist() == pv.normalisation["min"] and hi.tolist() == pv.normalisation["max"]
