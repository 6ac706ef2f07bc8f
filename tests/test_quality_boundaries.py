"""The bad-data detector's threshold, pinned at its boundary on both code paths.

The statistic is ``z = |x - x̂| / σ`` and a value is BAD exactly when ``z > k``. The tests
drive the quality stage's own detector (reached through :class:`QualityStage`, whichever
module defines it) with a feed whose prediction and spread are known exactly: a constant
level, the prediction equal to it and ``σ_meas = 1``, so after warm-up the running spread
has decayed under its floor and ``σ = 1``; then ``z`` is the innovation itself. A value
``k (1 - ε)`` away must pass, one ``k (1 + ε)`` away must be flagged, on the steady path
(every channel ready, none missing) and on the general path (one channel missing). Two
consecutive independent gross errors (opposite signs: not a ramp) must both be BAD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import load_config
from gateway.quality import QualityStage

K = 8.0  # the threshold the stage is built with
LEVEL = 100.0  # the constant signal and its prediction
EPS = 1e-6
BAD = 1  # Flag.BAD, bit 0 of the quality word


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return load_config("ieee33")


def _warm_detector(cfg: Any) -> tuple[Any, int]:
    """The stage's detector after warm-up on a constant feed (σ = σ_meas = 1)."""
    stage = QualityStage(cfg, threshold=K)
    assert stage.threshold == K
    det = stage.detector
    n = det.n
    flat = np.full(n, LEVEL)
    none = np.zeros(n, bool)
    ones = np.ones(n)
    for _ in range(det.hist_len + 5):
        r = det.step(flat.copy(), none, flat.copy(), ones)
        assert not (r.flags & BAD).any()
    return det, n


def _step(det: Any, n: int, offsets: dict[int, float], missing: int | None) -> Any:
    x = np.full(n, LEVEL)
    for j, off in offsets.items():
        x[j] = LEVEL + off
    miss = np.zeros(n, bool)
    if missing is not None:
        miss[missing] = True
        x[missing] = np.nan
    return det.step(x, miss, np.full(n, LEVEL), np.ones(n))


@pytest.mark.parametrize("path", ["steady", "general"])
def test_threshold_boundary(cfg: Any, path: str) -> None:
    det, n = _warm_detector(cfg)
    assert n >= 6
    missing = n - 1 if path == "general" else None
    below, above, neg_below, neg_above = 0, 1, 2, 3
    r = _step(det, n, {below: K * (1 - EPS), above: K * (1 + EPS),
                       neg_below: -K * (1 - EPS), neg_above: -K * (1 + EPS)}, missing)
    # σ is exactly the floor: z is the innovation
    np.testing.assert_allclose(r.z[[below, above, neg_below, neg_above]],
                               [K * (1 - EPS), K * (1 + EPS)] * 2, rtol=1e-9)
    assert not r.flags[below] & BAD and not r.flags[neg_below] & BAD
    assert r.flags[above] & BAD and r.flags[neg_above] & BAD
    # a flagged value is replaced by the prediction; an accepted one is kept
    assert r.values[above] == LEVEL and r.values[neg_above] == LEVEL
    assert r.values[below] == pytest.approx(LEVEL + K * (1 - EPS))
    others = np.setdiff1d(np.arange(n), [below, above, neg_below, neg_above, n - 1])
    assert not (r.flags[others] & BAD).any()


@pytest.mark.parametrize("path", ["steady", "general"])
def test_two_consecutive_independent_gross_errors_are_both_bad(cfg: Any, path: str) -> None:
    det, n = _warm_detector(cfg)
    missing = n - 1 if path == "general" else None
    j = 2
    first = _step(det, n, {j: 2 * K}, missing)
    second = _step(det, n, {j: -2 * K}, missing)
    assert first.flags[j] & BAD and second.flags[j] & BAD
    assert first.values[j] == LEVEL and second.values[j] == LEVEL
    # the channel recovers: the next clean value is accepted
    third = _step(det, n, {}, missing)
    assert not third.flags[j] & BAD


def test_detector_rebase_takes_a_switching_jump_as_a_new_regime() -> None:
    """Every channel jumps by 30 % at once and stays there (a feeder switching): without
    a re-base the jump is flagged BAD on two snapshots; with :meth:`rebase` before it,
    neither the jump nor the snapshots after it are flagged, and the history ends on the
    new level."""
    from gateway.quality.detector import TemporalDetector

    n, h = 6, 9
    rng = np.random.default_rng(3)
    level = np.linspace(1.0, 2.0, n)
    sig = np.full(n, 1e-3)
    none = np.zeros(n, bool)

    def run(rebase: bool) -> list[int]:
        det = TemporalDetector(n, h)
        flagged = []
        for t in range(30):
            x = level * (1.3 if t >= 20 else 1.0) + rng.normal(0, 1e-3, n)
            pred = det.ring[:, -1].copy()  # persistence: the last cleaned value
            if rebase and t == 20:
                det.rebase()
            res = det.step(x, none, pred, sig)
            flagged.append(int((res.flags & 1).astype(bool).sum()))
            if rebase and t == 20:
                assert np.allclose(det.ring[:, -1], x)
                assert np.allclose(det.ring[:, -2], det.ring[:, -1], atol=0.02)
        return flagged[20:]

    assert sum(run(False)) >= n  # the jump is taken for bad data without a re-base
    assert run(True) == [0] * 10
