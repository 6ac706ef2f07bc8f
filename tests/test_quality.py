"""The data-quality stage: detect, correct, fill, PV pseudo-measurements (committed models)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gateway.config import load_config
from gateway.metrics import Metrics
from gateway.quality import QualityError, QualityStage
from gateway.quality.detector import (
    BAD,
    CORRECTED,
    SUSPECT,
    DetectorParams,
    TemporalDetector,
    choose_threshold,
    confirm_with_residuals,
)
from gateway.quality.predictor import late_hook
from gateway.snapshot import Flag
from models.bench import synthetic_snapshots


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return load_config("ieee33")


def _counter(metrics: Metrics, name: str) -> float:
    """The value of an unlabelled counter in ``metrics``' exposition."""
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def _clean(cfg, n: int, seed: int = 1) -> np.ndarray:  # type: ignore[no-untyped-def]
    return synthetic_snapshots(cfg, n, seed=seed, bad_frac=0.0)


def test_gross_errors_are_flagged_and_replaced(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    x = _clean(cfg, 200)
    zero = np.zeros(x.shape[1], np.uint32)
    for k in range(150):
        stage.process(x[k], zero, k / 50)
    elec = np.array([c.electrical for c in cfg.channels])
    j = np.flatnonzero(elec)[[0, 10, 40, 100]]
    snap = x[150].copy()
    snap[j] *= 1.45
    r = stage.process(snap, zero, 150 / 50)
    assert ((r.flags[j] & Flag.BAD) != 0).all()
    assert ((r.flags[j] & Flag.CORRECTED) != 0).all()
    rel = np.abs(r.values[j] - x[150, j]) / np.abs(x[150, j])
    assert rel.max() < 0.02  # the replacement is the prediction, near the clean value
    others = np.setdiff1d(np.flatnonzero(elec), j)
    assert ((r.flags[others] & Flag.BAD) == 0).all()
    assert np.isfinite(r.z[j]).all() and (r.z[j] > stage.threshold).all()


def test_missing_values_are_filled_weather_held(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    x = _clean(cfg, 60)
    zero = np.zeros(x.shape[1], np.uint32)
    for k in range(50):
        stage.process(x[k], zero, float(k))
    snap = x[50].copy()
    snap[3] = np.nan  # electrical
    w = cfg.channel_index["wx8.ghi"]
    snap[w] = np.nan
    flags = zero.copy()
    flags[5] = Flag.MISSING  # flagged missing by the aligner
    r = stage.process(snap, flags, 50.0)
    for i in (3, 5):
        assert r.flags[i] & Flag.MISSING and r.flags[i] & Flag.CORRECTED
        tol = 0.02 * abs(x[50, i]) + 4 * cfg.channels[i].sigma_at(x[50, i])
        assert abs(r.values[i] - x[50, i]) <= tol
    assert r.flags[w] == Flag.MISSING | Flag.CORRECTED
    assert r.values[w] == x[49, w]
    assert r.pv_mw.shape == (4,) and (r.pv_mw >= 0).all() and (r.pv_sigma_mw > 0).all()
    assert set(r.timings) >= {"predict_s", "total_s"}


def test_first_value_bad_does_not_poison_history(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    x = _clean(cfg, 80)
    zero = np.zeros(x.shape[1], np.uint32)
    first = x[0].copy()
    first[7] *= 1.4
    stage.process(first, zero, 0.0)
    flagged = 0
    for k in range(1, 80):
        r = stage.process(x[k], zero, float(k))
        flagged += int(r.flags[7] & Flag.BAD != 0)
    assert flagged == 0
    assert abs(r.values[7] - x[79, 7]) < 1e-9


def test_level_shift_is_accepted(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    x = _clean(cfg, 120)
    zero = np.zeros(x.shape[1], np.uint32)
    for k in range(80):
        stage.process(x[k], zero, float(k))
    flags = []
    for k in range(80, 120):
        snap = x[k].copy()
        snap[20] *= 1.3  # a real step: stays there
        flags.append(stage.process(snap, zero, float(k)).flags[20])
    assert flags[0] & Flag.BAD
    assert all(f & Flag.BAD == 0 for f in flags[5:])


def test_shape_and_config_errors(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    with pytest.raises(QualityError, match="channels"):
        stage.process(np.zeros(3), np.zeros(3, np.uint32), 0.0)
    bad = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, window=12))
    with pytest.raises(QualityError, match="window"):
        QualityStage(bad)
    with pytest.raises(QualityError, match="not found"):
        QualityStage(cfg, models_dir="/nonexistent")


def test_threshold_from_card_or_config(cfg) -> None:  # type: ignore[no-untyped-def]
    from models.card import card_path, load_card
    from models.runtime import default_models_dir

    card = load_card(card_path(default_models_dir() / "predictor.onnx"))
    assert QualityStage(cfg).threshold == pytest.approx(float(card.extra["threshold"]))
    c2 = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, threshold=11.0))
    assert QualityStage(c2).threshold == 11.0


def test_choose_threshold() -> None:
    z = np.abs(np.random.default_rng(0).standard_normal(200_000))
    k, s = choose_threshold(z)
    assert s == pytest.approx(1.0, abs=0.02)  # |N(0, 1)|: robust scale 1
    assert k == pytest.approx(8 * s)
    heavy = np.concatenate([z, np.full(500, 300.0)])  # a few ramps do not move it
    assert choose_threshold(heavy)[0] == pytest.approx(k, rel=0.01)
    assert choose_threshold(np.array([0.1, 0.2]))[0] == 4.0


def test_detector_warmup_and_confirmation() -> None:
    det = TemporalDetector(2, 9, DetectorParams(threshold=6.0))
    sig = np.array([0.01, 0.01])
    seen = []
    for k in range(12):
        x = np.array([1.0, 2.0]) + 0.001 * k
        if k == 5:
            x[1] = 3.0
        r = det.step(x, np.zeros(2, bool), np.full(2, np.nan), sig)
        seen.append(r.flags.copy())
    assert seen[5][1] == BAD | CORRECTED and seen[5][0] == 0
    assert det.ready.all() and abs(det.ring[1].max() - 2.011) < 1e-6
    flags = np.array([0, 0, BAD], np.uint32)
    out = confirm_with_residuals(flags, np.array([1.0, 5.0, 9.0]), np.array([0.5, 4.0, 9.0]),
                                 k_low=4.0)
    assert out[0] == 0 and out[1] == SUSPECT | BAD and out[2] == BAD
    assert CORRECTED not in (out[0], out[1])


def test_steady_fast_path_matches_general_path(cfg) -> None:  # type: ignore[no-untyped-def]
    # a LATE bit on one weather channel sends every snapshot through the general (masked)
    # path; the healthy feed takes the steady path after warm-up: same values, flags, z
    x = synthetic_snapshots(cfg, 400, seed=11, bad_frac=0.05)
    x[250:, 20] *= 1.3  # a level shift (ramp rule) on the steady path too
    zero = np.zeros(x.shape[1], np.uint32)
    late = zero.copy()
    w = cfg.channel_index["wx8.ghi"]
    late[w] = Flag.LATE
    fast, general = QualityStage(cfg), QualityStage(cfg)
    for k in range(x.shape[0]):
        a = fast.process(x[k], zero, k / 50)
        b = general.process(x[k], late, k / 50)
        assert np.array_equal(a.values, b.values)
        assert np.array_equal(a.flags | late, b.flags)
        assert np.array_equal(a.z, b.z, equal_nan=True)
        assert np.array_equal(a.pv_mw, b.pv_mw)


def test_results_do_not_alias_reused_buffers(cfg) -> None:  # type: ignore[no-untyped-def]
    stage = QualityStage(cfg)
    x = _clean(cfg, 40)
    zero = np.zeros(x.shape[1], np.uint32)
    first = stage.process(x[0], zero, 0.0)
    keep = (first.values.copy(), first.flags.copy(), first.z.copy())
    for k in range(1, 40):
        stage.process(x[k], zero, k / 50)
    assert np.array_equal(first.values, keep[0]) and np.array_equal(first.flags, keep[1])
    assert np.array_equal(first.z, keep[2], equal_nan=True)
    assert stage.predictor_input.shape == (stage.det_idx.size, stage.hist_len, 1)


def test_pv_plants_without_coordinates_get_the_nameplate_guess(cfg) -> None:  # type: ignore[no-untyped-def]
    from models.pv_features import needs_sun

    stage = QualityStage(cfg)
    assert stage.pv_model is not None
    assert needs_sun(stage.pv_model.card.normalisation["features"])
    plants = list(cfg.plants)
    plants[1] = dataclasses.replace(plants[1], latitude=None, longitude=None)
    cfg2 = dataclasses.replace(cfg, plants=plants)
    stage2 = QualityStage(cfg2)
    assert stage2.pv_fallback.tolist() == [False, True, False, False]
    x = _clean(cfg, 40)
    zero = np.zeros(x.shape[1], np.uint32)
    t0 = float(np.datetime64("1990-06-01T16:00", "s").astype(np.int64))
    for k in range(40):
        r = stage2.process(x[k], zero, t0 + k)
    assert r.pv_sigma_mw[1] == pytest.approx(0.3 * plants[1].rating_mw)
    assert (r.pv_sigma_mw[[0, 2, 3]] < 0.3 * plants[1].rating_mw).all()


def test_predictor_process_gives_the_in_process_numbers(cfg) -> None:  # type: ignore[no-untyped-def]
    """The look-ahead through ``python -m models.serve`` is the same model: same values,
    flags and statistics as the stage predicting in-process, snapshot for snapshot."""
    x = synthetic_snapshots(cfg, 60, seed=3, bad_frac=0.1)
    zero = np.zeros(x.shape[1], np.uint32)
    local = QualityStage(cfg)
    remote = QualityStage(cfg, predictor_process=True)
    try:
        assert remote.remote is not None and remote.remote_error is None
        assert remote.remote.pending  # the first snapshot's prediction, asked at start
        for k in range(len(x)):
            a = local.process(x[k], zero, float(k))
            b = remote.process(x[k], zero, float(k))
            remote.lookahead()  # sends the windows; process() collects the answer
            if k % 2:
                remote.collect()  # as the gateway's reader callback would
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.flags, b.flags)
            np.testing.assert_array_equal(a.z, b.z)
        assert remote.remote is not None  # never fell back
        proc = remote.remote.proc
    finally:
        remote.close()
    assert proc.returncode is not None  # stopped by close()


def test_lost_predictor_process_falls_back_in_process(cfg) -> None:  # type: ignore[no-untyped-def]
    x = synthetic_snapshots(cfg, 40, seed=4, bad_frac=0.1)
    zero = np.zeros(x.shape[1], np.uint32)
    local = QualityStage(cfg)
    remote = QualityStage(cfg, predictor_process=True)
    lost: list[str] = []
    remote.on_remote_lost = lost.append
    try:
        for k in range(len(x)):
            if k == 20:
                assert remote.remote is not None
                remote.remote.proc.kill()
                remote.remote.proc.wait()
            a = local.process(x[k], zero, float(k))
            b = remote.process(x[k], zero, float(k))
            remote.lookahead()
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.flags, b.flags)
    finally:
        remote.close()
    assert len(lost) == 1 and "predictor process" in lost[0]
    assert remote.remote is None


def test_a_late_predictor_answer_is_not_waited_for(cfg) -> None:  # type: ignore[no-untyped-def]
    """A child that does not answer in time (stopped here: SIGSTOP) costs a snapshot at
    most the short late wait: the stage predicts in-process (same numbers), keeps the
    child, drops its late answer when it comes and uses the child again after that."""
    import select
    import signal

    x = synthetic_snapshots(cfg, 30, seed=5, bad_frac=0.1)
    zero = np.zeros(x.shape[1], np.uint32)
    local = QualityStage(cfg)
    remote = QualityStage(cfg, predictor_process=True)
    lost: list[str] = []
    remote.on_remote_lost = lost.append

    def both(k: int) -> None:
        a = local.process(x[k], zero, float(k))
        b = remote.process(x[k], zero, float(k))
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.flags, b.flags)
        np.testing.assert_array_equal(a.z, b.z)

    try:
        child = remote.remote
        assert child is not None
        for k in range(10):
            both(k)
            remote.lookahead()
        child.proc.send_signal(signal.SIGSTOP)  # may hold the windows sent at k = 9
        for k in range(10, 14):
            both(k)
            remote.lookahead()
        assert remote.late_answers >= 3 and remote.remote is child and not lost
        # what /metrics shows: gridtwin_predictor_late_total follows the count at scrape
        metrics = Metrics()
        sync = late_hook(metrics.predictor_late, remote)
        sync()
        sync()  # idempotent
        assert _counter(metrics, "gridtwin_predictor_late_total") == remote.late_answers
        child.proc.send_signal(signal.SIGCONT)
        # the stale answer comes; the reader callback drops it
        assert select.select([child.sock], [], [], 30)[0]
        remote.collect()
        assert not remote.remote.pending
        late = remote.late_answers
        both(14)
        remote.lookahead()  # the child's turn again: its answer is what process() uses
        assert remote.remote.pending
        assert select.select([child.sock], [], [], 30)[0]
        remote.collect()
        both(15)
        assert remote.late_answers == late and remote.remote is child and not lost
    finally:
        remote.close()
