"""The estimator worker's per-snapshot weighing (measurement vector, usable values, sigma
factors), made with gathers and fast paths prepared once: the same arrays as the plain
expressions they replaced, on random flag patterns at 1 s, 50 Hz and 1 kHz."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import load_config
from gateway.estimator_worker import (
    CORRECTED_SIGMA_FACTOR,
    STALE_SIGMA_FACTOR,
    _usable,
    measurement_scale,
    measurement_sigmas,
)
from gateway.se_model import measurement_model

BAD, CORRECTED, STALE = 1, 4, 256


@pytest.fixture(scope="module")
def model() -> Any:
    return measurement_model(load_config("ieee33"))


def _plain_scale(model: Any, flags: np.ndarray, period: float) -> np.ndarray | None:
    real = np.flatnonzero(model.channel >= 0)
    out = np.ones(model.m)
    out[real[(flags & STALE) != 0]] = STALE_SIGMA_FACTOR
    out[real[(flags & CORRECTED) != 0]] = max(1.0, CORRECTED_SIGMA_FACTOR * period)
    return None if np.all(out == 1.0) else out


def _flags(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """kind 0: none; 1: corrected and bad; 2: stale too; 3: one stale value only."""
    f = np.zeros(n, np.uint32)
    if kind in (1, 2):
        f[rng.random(n) < 0.1] |= CORRECTED
        f[rng.random(n) < 0.1] |= BAD
    if kind == 2:
        f[rng.random(n) < 0.05] |= STALE
    if kind == 3:
        f[rng.integers(n)] = STALE
    return f


@pytest.mark.parametrize("period", [1.0, 0.02, 0.001])
def test_weighing_matches_the_plain_expressions(model: Any, period: float) -> None:
    rng = np.random.default_rng(7)
    real = model.channel >= 0
    n_ch = int(model.channel.max()) + 1
    kinds_seen = set()
    for trial in range(40):
        values = rng.normal(1.0, 0.1, n_ch)
        values[rng.random(n_ch) < 0.05] = np.nan
        pv = rng.uniform(0.0, 1.0, model.n_pseudo)
        sig = rng.uniform(0.01, 0.1, model.n_pseudo)
        f = _flags(rng, int(real.sum()), trial % 4)
        z = model.values_to_pu(values, pv)
        want_z = np.empty(model.m)
        want_z[real] = values[model.channel[real]] * model.scale[real]
        want_z[~real] = pv * model.scale[~real]
        assert z.tobytes() == want_z.tobytes()
        active, aged = _usable(z, f, model.real_idx)
        want_active = np.isfinite(z)
        want_active[real] &= ~(((f & BAD) != 0) & ((f & CORRECTED) == 0))
        assert np.array_equal(active, want_active)
        assert np.array_equal(aged, (f & STALE) != 0)
        got, want = measurement_scale(model, f, period), _plain_scale(model, f, period)
        assert (got is None) == (want is None)
        if want is not None:
            assert got is not None and got.tobytes() == want.tobytes()
            kinds_seen.add("factors")
        else:
            kinds_seen.add("none")
        s = measurement_sigmas(model, z, f, sig)
        assert np.isnan(s[real]).all() and s[~real].tobytes() == (
            sig * model.scale[~real]).tobytes()
    # both outcomes were compared at every period (a STALE value always has a factor)
    assert kinds_seen == {"factors", "none"}


def test_the_bench_times_the_worker_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """``gridtwin bench --only se.ieee33.worker`` runs on the demo's 1 kHz scenario
    (made here in a private cache); its figures are timings, for the bench to report."""
    from gateway.bench_worker import benchmarks

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    res = benchmarks(True)
    assert [(r.name, r.unit) for r in res] == [("se.ieee33.worker_1khz", "us"),
                                               ("se.ieee33.worker_1khz_p99", "us")]
    assert 0 < res[0].value <= res[1].value
    assert list((tmp_path / "gridtwin").glob("demo-ieee33-*x1000us-bad10-s1.npz"))
