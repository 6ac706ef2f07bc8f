"""The quality stage's compiled kernels (gateway.quality.kernels) hold the NumPy code they
replaced bit for bit: the detector against its frozen copy (tests/quality_reference.py)
over traces with gross errors, gaps, flagged-missing values, steps and ramps, with and
without the window-spread floor and a regime change; the window preparation and the
prediction's finish against the NumPy expressions they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.quality import kernels
from gateway.quality.detector import DetectorParams, TemporalDetector
from tests import quality_reference as ref

N, H, STEPS = 40, 9, 400


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (NaN where NaN, the same payload everywhere else)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _trace(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, missing, predictions): noisy levels with steps, ramps, gross errors (10 %),
    NaN gaps and flagged-missing finite values (2 % each); the predictions are the truth
    plus a little noise (what a good predictor gives)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.5, 2.0, N)
    t = np.arange(STEPS)[:, None]
    truth = level + 0.01 * np.sin(t / 15.0 + np.arange(N))
    truth[200:, :5] += 0.3  # a step on five channels
    truth[250:280, 5:10] += 0.02 * np.arange(30)[:, None]  # a fast ramp
    x = truth + rng.normal(0.0, 1e-3, truth.shape)
    gross = rng.random(x.shape) < 0.10
    x[gross] *= rng.choice([0.6, 1.4], gross.sum())
    gap = rng.random(x.shape) < 0.02
    x[gap] = np.nan
    flagged = (rng.random(x.shape) < 0.02) & ~gap
    pred = truth + rng.normal(0.0, 1e-3, truth.shape)
    return x, gap | flagged, pred


@pytest.mark.parametrize(("seed", "kappa", "rebase_at"), [(1, 0.0, None), (2, 0.5, 300),
                                                          (3, 0.0, 120)])
def test_detector_matches_reference(seed: int, kappa: float, rebase_at: int | None) -> None:
    x, missing, pred = _trace(seed)
    sigma_meas = np.full(N, 1e-3)
    scale = np.full(N, 2e-3) if kappa else None
    params = DetectorParams(threshold=8.0, kappa=kappa)
    new = TemporalDetector(N, H, params)
    old = ref.TemporalDetector(N, H, ref.DetectorParams(threshold=8.0, kappa=kappa))
    bad = fills = shifts = 0
    for k in range(STEPS):
        if k == rebase_at:
            new.rebase()
            old.rebase()
        # every third step without gaps: the path of a healthy snapshot
        miss = missing[k] if k % 3 else np.zeros(N, bool)
        xk = np.where(np.isnan(x[k]) & ~miss, pred[k], x[k])
        run_before = old.run.copy()
        a = new.step(xk.copy(), miss.copy(), pred[k].copy(), sigma_meas, scale)
        b = old.step(xk.copy(), miss.copy(), pred[k].copy(), sigma_meas, scale)
        assert _same(a.values, b.values), k
        assert _same(a.flags, b.flags), k
        assert _same(a.z, b.z), k
        for name in ("ring", "m_abs", "run", "recent", "count"):
            assert _same(getattr(new, name), getattr(old, name)), (k, name)
        bad += int((b.flags & ref.BAD).sum())
        fills += int(((b.flags & ref.MISSING) != 0).sum())
        shifts += int(((run_before >= 1) & (b.flags == 0) & (old.run == 0)
                       & (np.abs(xk - pred[k]) > 0.05)).sum())
    # the trace went through every branch: gross errors, filled gaps, accepted steps
    assert bad > 100 and fills > 50 and shifts > 0


def test_normalise_and_finish_match_numpy() -> None:
    rng = np.random.default_rng(5)
    n = 124
    win = rng.normal(1.0, 0.3, (n, H)) * rng.choice([1e-3, 1.0, 1e3], (n, 1))
    win[:3] = 0.7  # flat windows: the floor decides
    rel_k = np.full(n, 0.01 / 3)
    abs_k = np.maximum(np.full(n, 1e-4) / 3, 1e-12)
    c = np.add.reduce(win, axis=1) / H
    dev = win - c[:, None]
    s = np.einsum("ij,ij->i", dev, dev)
    # the NumPy code the kernel replaced (QualityStage._prepare_next)
    s_ref = s.copy()
    s_ref *= 1.0 / H
    np.sqrt(s_ref, out=s_ref)
    floor = np.abs(c) * rel_k
    np.maximum(floor, abs_k, out=floor)
    np.maximum(s_ref, floor, out=s_ref)
    xn_ref = np.zeros((n, H, 1), np.float32)
    np.divide(dev, s_ref[:, None], out=xn_ref[:, :, 0])
    xn = np.zeros((n, H, 1), np.float32)
    kernels.normalise(dev, c, s, rel_k, abs_k, xn)
    assert _same(s, s_ref) and _same(xn, xn_ref)
    # ... and QualityStage._finish_next
    yn = rng.normal(0.0, 1.0, n).astype(np.float32)
    pred_ref = s_ref * yn
    pred_ref += c
    sm_ref = np.abs(pred_ref) * rel_k
    np.maximum(sm_ref, abs_k, out=sm_ref)
    pred, sm = np.empty(n), np.empty(n)
    kernels.finish(s, yn, c, rel_k, abs_k, pred, sm)
    assert _same(pred, pred_ref) and _same(sm, sm_ref)


def test_nan_propagates_like_numpy() -> None:
    """A NaN prediction (a broken model output) gives NaN spreads and floors, as
    ``np.maximum``/``np.minimum`` do, and a missing value it cannot fill stays MISSING."""
    n = 3
    pred, sm = np.empty(n), np.empty(n)
    kernels.finish(np.ones(n), np.array([np.nan, 0.0, 1.0], np.float32), np.zeros(n),
                   np.full(n, 0.1), np.full(n, 1e-3), pred, sm)
    assert np.isnan(pred[0]) and np.isnan(sm[0]) and sm[1] == 1e-3
    det = TemporalDetector(n, H)
    det.ring[:] = 1.0
    det.count[:] = H
    det.m_abs[:] = 1e-3
    res = det.step(np.array([np.nan, 1.0, 1.0]), np.array([True, False, False]),
                   np.array([np.nan, 1.0, 1.0]), np.array([np.nan, 1e-3, 1e-3]))
    assert np.isnan(res.values[0]) and res.flags[0] == ref.MISSING
    assert np.isnan(res.z[0]) and res.z[1] == 0.0
    assert (det.ring[0] == 1.0).all()  # nothing stored for the unfilled gap


@pytest.mark.parametrize("h", [3, 9, 20])
def test_prepare_matches_numpy(h: int) -> None:
    """The fused window preparation gives NumPy's means, deviations, spreads and float32
    windows bit for bit wherever the stage uses it (``sums_match``)."""
    if not kernels.sums_match(h):
        pytest.skip("NumPy sums in another order on this machine: the stage keeps them")
    rng = np.random.default_rng(h)
    n = 500
    win = rng.normal(0.0, 1.0, (n, h)) * 10.0 ** rng.integers(-3, 4, (n, 1)) \
        + rng.choice([0.0, 2.0, -40.0], (n, 1))
    win[:4] = 0.25  # flat windows
    rel_k = rng.uniform(1e-3, 1e-2, n)
    abs_k = rng.uniform(1e-6, 1e-3, n)
    c_ref = np.add.reduce(win, axis=1)
    np.divide(c_ref, h, out=c_ref)
    dev_ref = win - c_ref[:, None]
    s_ref = np.einsum("ij,ij->i", dev_ref, dev_ref)
    xn_ref = np.zeros((n, h, 1), np.float32)
    kernels.normalise(dev_ref, c_ref, s_ref, rel_k, abs_k, xn_ref)
    c, dev, s = np.empty(n), np.empty((n, h)), np.empty(n)
    xn = np.zeros((n, h, 1), np.float32)
    kernels.prepare(win, c, dev, s, rel_k, abs_k, xn)
    assert _same(c, c_ref) and _same(dev, dev_ref) and _same(s, s_ref)
    assert _same(xn, xn_ref)


def test_gridtwin_jit_off_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRIDTWIN_JIT=0 (the hardened systemd units: no writable+executable memory) keeps
    the quality stage on its NumPy code, with the compiled stage's numbers bit for bit:
    values, flags, statistic and PV, over gross errors, gaps and a level shift."""
    from gateway.config import load_config
    from gateway.quality import QualityStage
    from models.bench import synthetic_snapshots

    cfg = load_config("ieee33")
    x = synthetic_snapshots(cfg, 300, seed=4, bad_frac=0.05)
    x[200:, 20] *= 1.3  # a level shift
    rng = np.random.default_rng(4)
    x[rng.random(x.shape) < 0.01] = np.nan
    monkeypatch.setenv("GRIDTWIN_JIT", "1")
    compiled = QualityStage(cfg)
    monkeypatch.setenv("GRIDTWIN_JIT", "0")
    plain = QualityStage(cfg)
    assert compiled.detector._kernels is not None and compiled._kernels is not None
    assert plain.detector._kernels is None and plain._kernels is None
    zero = np.zeros(x.shape[1], np.uint32)
    for k in range(x.shape[0]):
        a = compiled.process(x[k], zero, k / 50)
        b = plain.process(x[k], zero, k / 50)
        assert _same(a.values, b.values) and _same(a.flags, b.flags), k
        assert _same(a.z, b.z) and _same(a.pv_mw, b.pv_mw), k
        compiled.lookahead()
        plain.lookahead()


def test_mode_matches_numpy() -> None:
    """The warm-up's robust centre (kernels.mode) against the NumPy ``_mode`` it replaces:
    rows with gross values, ties between groups, NaN gaps and rows of NaN only."""
    from gateway.quality.detector import _mode

    assert kernels.sums_match(H)
    rng = np.random.default_rng(11)
    n = 5000
    vals = rng.normal(1.0, 1e-3, (n, H)) * 10.0 ** rng.integers(-3, 4, (n, 1))
    gross = rng.random(vals.shape) < 0.3
    vals[gross] *= rng.choice([0.2, 3.0, -1.0], gross.sum())
    vals[rng.random(vals.shape) < 0.1] = np.nan
    vals[:50] = np.nan  # nothing to centre on
    vals[50:100, :4] = vals[50:100, :1] * 2.0  # two groups of four and five values
    vals[100:150, :] = np.round(vals[100:150, :], 1)  # many exact ties
    scale = np.abs(np.where(np.isnan(vals), 0.0, vals)).max(axis=1)
    tol = np.where(scale > 0, 0.01 * scale, 1e-3)
    floor = tol / 10.0
    want_c, want_s = _mode(vals, tol, floor)
    c, s = np.empty(n), np.empty(n)
    kernels.mode(vals, tol, floor, c, s, np.empty_like(vals))
    assert _same(c, want_c) and _same(s, want_s)
    assert np.isnan(c[:50]).all() and np.isfinite(c[50:]).sum() > n // 2
