"""The physics-informed PV forecaster: shipped card against its ONNX graph, the quality
stage running it, the typical-plane inputs, and the in-graph physical prior."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from gateway.config import load_config
from gateway.quality import QualityStage
from models.bench import synthetic_snapshots
from models.card import card_path, load_card, sha256_file
from models.runtime import PV, default_models_dir, load_model

MODELS = default_models_dir()


def test_shipped_card_matches_the_onnx_graph() -> None:
    path = MODELS / "pv_forecaster.onnx"
    card = load_card(card_path(path))
    assert card.sha256 == sha256_file(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    dims = [d if isinstance(d, int) else None for d in inp.shape]  # batch axis is symbolic
    assert inp.name == card.inputs[0].name
    assert dims == list(card.inputs[0].shape)
    feats = card.normalisation["features"]
    assert dims[1] == card.window and dims[2] == len(feats) == len(card.normalisation["min"])
    assert [o.name for o in sess.get_outputs()] == [card.outputs[0].name]
    # the prior's plane is one of the inputs; every unseen site is not the training site
    assert "poa_typical" in feats
    unseen = [m["site"] for m in card.metrics["unseen_sites"]]
    assert len(unseen) >= 2 and card.extra["train_site"] not in unseen


def test_quality_stage_runs_the_shipped_forecaster() -> None:
    cfg = load_config("ieee33")
    stage = QualityStage(cfg)
    assert stage.pv_model is not None
    assert stage.pv_n_inputs == len(stage.pv_model.card.normalisation["features"])
    x = synthetic_snapshots(cfg, 40, seed=2, bad_frac=0.0)
    zero = np.zeros(x.shape[1], np.uint32)
    t0 = float(np.datetime64("1990-06-01T17:00", "s").astype(np.int64))  # midday at -80 deg
    for k in range(40):
        r = stage.process(x[k], zero, t0 + k)
    rating = np.array([p.rating_mw for p in cfg.plants])
    assert np.isfinite(r.pv_mw).all() and (r.pv_mw >= 0).all()
    assert (r.pv_mw <= rating * stage.pv_max + 1e-9).all()
    assert (r.pv_sigma_mw > 0).all()


def test_typical_plane_faces_the_equinox_noon_sun_at_its_tilt() -> None:
    from models.pv_features import PV_SUN_FEATURES, feature_series, typical_tilt

    assert typical_tilt(25.8) == pytest.approx(19.35)
    assert typical_tilt(-55.3) == 35.0 and typical_tilt(5.0) == 10.0
    lat, lon = 36.1, -79.95
    t_noon = float(np.datetime64("2021-03-20T12:00", "s").astype(np.int64)) - lon * 240.0
    ts = t_noon + np.arange(-600.0, 601.0, 60.0)
    wx = np.tile([800.0, 700.0, 150.0, 15.0, 2.0, 180.0], (ts.size, 1))
    f = feature_series(wx, ts, lat, lon, PV_SUN_FEATURES)
    i = PV_SUN_FEATURES.index("cos_aoi_typical")
    # at equinox noon the sun is at zenith = latitude: incidence angle = latitude - tilt
    want = np.cos(np.radians(lat - typical_tilt(lat)))
    assert f[:, i].max() == pytest.approx(want, abs=2e-3)
    assert f[:, i + 1].max() > f[:, PV_SUN_FEATURES.index("poa_nominal")].max() - 50.0


def test_physical_prior_of_the_network_is_pvwatts() -> None:
    torch = pytest.importorskip("torch")
    from models.features import minmax
    from models.pv_features import PV_SUN_FEATURES, feature_ranges
    from models.training.nets import PhysicsPv, RecurrentRegressor

    lo, hi = feature_ranges(PV_SUN_FEATURES)
    core = RecurrentRegressor(len(PV_SUN_FEATURES), 4, bidirectional=True, n_out=2)
    torch.nn.init.zeros_(core.head.weight)
    torch.nn.init.zeros_(core.head.bias)  # k = r = 0: the output is the prior alone
    model = PhysicsPv(core, lo, hi, PV_SUN_FEATURES).eval()
    rng = np.random.default_rng(0)
    raw = rng.uniform(lo, hi, (64, 10, len(lo)))
    raw[:, :, 3] = rng.uniform(-10, 40, (64, 10))
    raw[:, :, 4] = rng.uniform(0, 10, (64, 10))
    with torch.inference_mode():
        got = model(torch.from_numpy(minmax(raw, lo, hi))).numpy()[:, 0]
    e = raw[:, -1, PV_SUN_FEATURES.index("poa_typical")]
    tc = raw[:, -1, 3] + e / (25.0 + 6.84 * raw[:, -1, 4])
    want = np.minimum(e / 1000 * 1.2 * 0.95 * 0.975 * 0.965 * (1 - 0.0037 * (tc - 25)), 1.0)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (want == 1.0).any() and (want < 0.5).any()  # both regimes exercised
    # and the runtime loads what the exporter writes from it (shipped: PV)
    assert load_model(PV).card.name == "pv_forecaster"
