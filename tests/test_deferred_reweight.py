"""The deferred re-weighting (``LinearStateEstimator.defer_reweight``, what the estimator
worker uses below ``HOLD_PERIOD_S``): a re-weighting the rules decide on a snapshot is
made after it, by ``reweight_pending`` (the worker's time between snapshots) or at the
start of the next solve; only the snapshot that decided it is estimated on the weights
before, and what follows is the immediate rule's estimate again."""

from __future__ import annotations

from typing import Any

import numpy as np

from estimator.linear import LinearStateEstimator
from gateway.bench_se import _snapshots
from gateway.config import load_config
from gateway.se_model import measurement_model

N = 240


def _pair() -> tuple[LinearStateEstimator, LinearStateEstimator, np.ndarray, np.ndarray]:
    cfg = load_config("ieee33")
    now, later = measurement_model(cfg), measurement_model(cfg)
    z, v = _snapshots(now, N, seed=3)  # a load and PV ramp: the rules fire along it
    deferred = LinearStateEstimator(later)
    deferred.defer_reweight = True
    return LinearStateEstimator(now), deferred, z, v


def _run(est: LinearStateEstimator, z: np.ndarray, *, idle: bool) -> tuple[Any, list[int]]:
    out, fired = [], []
    for k, zk in enumerate(z):
        out.append(est.solve(zk).v)
        if idle:  # one piece per gap between snapshots, as the worker does
            n = est.reweights
            est.idle()
            if est.reweights > n:
                fired.append(k)
    return np.array(out), fired


def test_the_snapshot_that_decides_is_the_only_one_on_the_old_weights() -> None:
    now, deferred, z, v = _pair()
    a, _ = _run(now, z, idle=False)
    b, fired = _run(deferred, z, idle=True)
    assert now.reweights == deferred.reweights == len(fired) > 3
    gap = np.abs(a - b).max(axis=1)  # pu, the largest bus difference per snapshot
    others = np.setdiff1d(np.arange(N), fired)
    tol = now.tolerance
    # after a re-weighting both estimate on the same weights: the same fixed point, to
    # the iteration's tolerance (the deferred one starts from the snapshot before's
    # other answer and iterates with the Newton matrix of the weights before)
    assert gap[others].max() < 10 * tol
    # the deciding snapshots themselves: on weights up to the rule's ratio off, which
    # shows, but far inside the estimates' own error against the truth
    err = np.abs(a - v).max(axis=1)
    assert 10 * tol < gap[fired].max() < 0.1 * err.mean()
    assert np.abs(b - v).max(axis=1).mean() <= 1.001 * err.mean()


def test_without_idle_time_the_next_solve_makes_it_first() -> None:
    _, with_idle, z, _ = _pair()
    _, without, _, _ = _pair()
    a, fired = _run(with_idle, z, idle=True)
    b, none = _run(without, z, idle=False)
    assert none == [] and without.reweights == with_idle.reweights == len(fired)
    # the same weights throughout; the Newton matrices differ (the solve builds the
    # set's own, idle() first the one of the weights before): the same fixed point
    np.testing.assert_allclose(b, a, rtol=0, atol=10 * with_idle.tolerance)


def test_a_held_snapshot_sets_no_weights() -> None:
    _, est, z, _ = _pair()
    fired = None
    for k, zk in enumerate(z):
        est.solve(zk)
        if est._pending is not None:
            fired = k
            break
    assert fired is not None
    before = est.reweights
    assert est.hold() is not None  # the worker judged that snapshot gross
    assert not est.reweight_pending() and est.reweights == before


def test_idle_does_one_piece_per_call() -> None:
    """The worker's idle() between snapshots, one piece a call: the re-weighting; the
    set's fast path on the Newton matrix of the weights before; after the next
    snapshot, that set's own Newton matrix; then nothing."""
    _, est, z, _ = _pair()
    k = 0
    while est._pending is None:
        est.solve(z[k])
        k += 1
    before = est.reweights
    assert est.idle() and est.reweights == before + 1  # 1: the re-weighting
    assert est._ready is not None
    fac = est._ready[0]
    assert fac.step is None
    assert est.idle()  # 2: its fast path, on the Newton matrix of the weights before
    assert fac.step is not None
    reused = fac.step.newton
    est.solve(z[k])
    assert est.last_factor is fac
    assert est.idle()  # 3: its own Newton matrix
    assert fac.step.newton is not reused
    assert not np.allclose(fac.step.newton, reused, rtol=0, atol=1e-12)
    assert not est.idle()


def test_a_snapshot_between_the_pieces_takes_the_fast_path_as_idle_would() -> None:
    """A snapshot that comes after the re-weighting (piece 1) and before its fast path
    (piece 2): the solve builds that fast path on the Newton matrix of the weights
    before, as piece 2 would (not its own Newton matrix at this snapshot: that made
    the solve 0.7-0.9 ms at 1 kHz), and leaves the set's own Newton matrix to idle()."""
    _, est, z, _ = _pair()
    _, ref, _, _ = _pair()  # the same snapshots with every piece done in its gap
    k = 0
    while est._pending is None:
        est.solve(z[k])
        ref.solve(z[k])
        k += 1
    for e in (est, ref):
        assert e.idle()  # 1: the re-weighting
    fac = est._ready[0]
    assert ref.idle()  # 2 for the reference only
    a = est.solve(z[k])  # the snapshot came first
    b = ref.solve(z[k])
    assert est.last_factor is fac and fac.step is not None
    # the Newton matrix of the weights before (what piece 2 takes), not a fresh one
    assert np.array_equal(fac.step.newton, ref.last_factor.step.newton)
    np.testing.assert_allclose(a.v, b.v, rtol=0, atol=10 * est.tolerance)
    assert est.idle()  # what is left: piece 2's rules' constants (already made) ...
    assert est.idle()  # ... and the set's own Newton matrix
    assert not np.array_equal(fac.step.newton, ref.last_factor.step.newton)
    assert not est.idle()
