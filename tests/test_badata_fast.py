"""The largest-normalized-residual search decides what the unoptimised estimator decides.

The bad-data search on the live path is made cheap (residual sensitivities from dense
products, factorizations of a trial set derived from a cached one instead of rebuilt,
observability checked from cached rows); none of that may change which values it removes
or the state it returns. ``tests/linear_reference.py`` (the estimator before its fast
paths) is the reference: snapshots with one to three gross errors, fed the way the
estimator worker feeds them (a first ``solve``, then ``solve_clean`` warm-started from
it), with a few values missing (filled from the estimate) or a tenth and more left out
(every trial set then has a factorization of its own), caller sigmas and sigma factors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tests.linear_reference as ref
from estimator.errors import EstimatorError
from estimator.linear import LinearStateEstimator
from tests.test_linear_fast import _model

#: the state may move by rounding only (the brief's bound: 1e-9 pu)
STATE_TOL = 1e-9


def _cases(model: Any, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """``k`` noisy snapshots along a load ramp with 1-3 gross errors (15-60 sigma) each,
    an active mask (all, a few left out, or 12-18 % left out) and the error count."""
    from estimator import pgm

    net = model.net
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.7, 1.1, k)[:, None]
    p = net.p_gen - scale * net.p_load
    q = net.q_gen - scale * net.q_load
    v = pgm.power_flow(net, p, q, tolerance=1e-12, max_iterations=50)
    out = []
    for j in range(k):
        z = model.h(v[j])
        sig = model.sigma(z)
        z = z + rng.standard_normal(z.size) * sig
        n_err = 1 + j % 3
        cols = rng.choice(model.m, n_err, replace=False)
        z[cols] += rng.choice([-1.0, 1.0], n_err) * rng.uniform(15, 60, n_err) * sig[cols]
        act = np.ones(model.m, bool)
        kind = j % 4
        if kind == 1:  # a value or two missing: filled from the estimate
            act[rng.choice(model.m, 2, replace=False)] = False
        elif kind >= 2:  # a device's worth left out: every trial set factorized anew
            act[rng.choice(model.m, int(model.m * rng.uniform(0.12, 0.18)),
                           replace=False)] = False
        out.append((z, act, n_err))
    return out


def _clean(est: Any, z: np.ndarray, act: np.ndarray, **kw: Any) -> Any:
    """What the estimator worker does: a solve, then the search warm-started from it."""
    try:
        first = est.solve(z, active=act, **kw)
        return est.solve_clean(z, active=act, warm_start=first.v,
                               **({"sigma": kw["sigma"]} if "sigma" in kw else {}))
    except EstimatorError as exc:
        return type(exc)


@pytest.mark.parametrize("seed", [11, 12])
def test_lnr_removes_what_the_reference_removes(seed: int) -> None:
    model_a, model_b = _model(), _model()
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    removed = multi = 0
    for j, (z, act, _) in enumerate(_cases(model_a, 36, seed)):
        kw: dict[str, Any] = {}
        if j % 5 == 4:  # the PV forecaster's own sigma on the pseudo-measurements
            sig = np.full(z.size, np.nan)
            sig[-4:] = 0.02
            kw["sigma"] = sig
        a, b = _clean(fast, z, act, **kw), _clean(slow, z, act, **kw)
        if isinstance(b, type):
            assert a is b
            continue
        assert a.removed == b.removed, j
        assert np.abs(a.v - b.v).max() <= STATE_TOL, j
        np.testing.assert_array_equal(a.active, b.active)
        np.testing.assert_allclose(a.normalized_residual, b.normalized_residual,
                                   rtol=1e-6, atol=1e-4)
        assert a.objective == pytest.approx(b.objective, rel=1e-9)
        assert a.dof == b.dof
        removed += len(b.removed)
        multi += len(b.removed) >= 2
    # the cases exercise the search: removals in most snapshots, several per snapshot
    assert removed >= 25 and multi >= 6


def test_lnr_with_sigma_factors_removes_what_the_reference_removes() -> None:
    """A sigma-factor pattern (corrected values weigh less) on the first solve, as the
    worker passes it; the search itself then solves without it."""
    model_a, model_b = _model(), _model()
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    rng = np.random.default_rng(3)
    for z, act, _ in _cases(model_a, 12, 21):
        scale = np.ones(z.size)
        scale[rng.choice(z.size, 3, replace=False)] = 50.0
        a = _clean(fast, z, act, sigma_scale=scale)
        b = _clean(slow, z, act, sigma_scale=scale)
        if isinstance(b, type):
            assert a is b
            continue
        assert a.removed == b.removed
        assert np.abs(a.v - b.v).max() <= STATE_TOL


def test_compiled_fill_iteration_is_the_numpy_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kernels.fill_run`` (a trial set's solve: missing members from the estimate)
    returns the NumPy loop's state to rounding and its iteration count, with gross errors
    in the snapshot and one to three members of the full set left out."""
    import estimator.linear as lin_mod

    pytest.importorskip("numba")
    model = _model()
    est = LinearStateEstimator(model)
    if lin_mod._kernels() is None:
        pytest.skip("GRIDTWIN_JIT=0: no compiled kernels")
    rng = np.random.default_rng(5)
    checked = 0
    for z, _, n_err in _cases(model, 12, 31):
        act = np.ones(model.m, bool)
        act[rng.choice(model.m, n_err, replace=False)] = False
        first = est.solve(z)
        try:
            fac, has0, has1, complete, _, _ = est._select(z, model.sigma(z), act)
        except EstimatorError:  # a critical member left out
            continue
        assert not complete and fac is est.factor(est._all)
        zc = np.where(act, z, 0.0)
        z0 = np.where(has0, zc[fac.idx0], 0.0)
        z1 = np.where(has1, zc[fac.idx1], 0.0)
        args = (fac, first.v, z0, z1, has0, has1, 1e-7, 30)
        fast = est._iterate(*args)
        monkeypatch.setattr(lin_mod, "_KERNELS", False)
        slow = est._iterate(*args)
        monkeypatch.undo()
        assert fast[1] == slow[1] and fast[1] >= 2
        assert np.abs(fast[0] - slow[0]).max() <= 1e-12
        checked += 1
    assert checked >= 8 and model.pv_nodes.size


def test_compiled_sensitivity_inputs_are_the_numpy_ones(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """``kernels.sens_jacobians`` and ``kernels.sens_raw_jacobian`` build ``J_x``,
    ``H^T W J_z`` and the raw Jacobian as the NumPy code does (to rounding), for complete and
    incomplete sets (members filled from the estimate), and the residual sensitivities
    built on them agree."""
    import estimator.linear as lin_mod

    pytest.importorskip("numba")
    model = _model()
    est = LinearStateEstimator(model)
    if lin_mod._kernels() is None:
        pytest.skip("GRIDTWIN_JIT=0: no compiled kernels")
    rng = np.random.default_rng(9)
    for z, _, _ in _cases(model, 6, 41):
        st = est.solve(z)
        fac = est.factor(est._all)
        hd, htw, inv_il, _ = lin_mod._sens_plan(model, fac)
        for drop in (0, 3):
            act = np.ones(model.m, bool)
            act[rng.choice(model.m, drop, replace=False)] = False
            fast = lin_mod._sens_jacobians(model, fac, st.v, act, hd, htw, inv_il)
            sig = model.sigma(z)
            s_fast = lin_mod.linear_sensitivity(model, fac, st.v, sig, act, moments=True)
            monkeypatch.setattr(lin_mod, "_KERNELS", False)
            slow = lin_mod._sens_jacobians(model, fac, st.v, act, hd, htw, inv_il)
            s_slow = lin_mod.linear_sensitivity(model, fac, st.v, sig, act, moments=True)
            monkeypatch.undo()
            for a, b in zip(fast, slow, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(s_fast[0], s_slow[0], rtol=1e-9)
            assert s_fast[1:] == pytest.approx(s_slow[1:], rel=1e-9)
            assert np.count_nonzero(fast[0]) > 0 and np.count_nonzero(fast[2]) > 0


def test_the_bench_searches_remove_what_the_reference_removes() -> None:
    """The searches of ``se.ieee33.bad_data_3`` (three gross errors per snapshot along a
    load ramp, trial sets seen for the first time) remove the reference's values. One of
    them meets an exact tie (two measurements of a critical pair, equal r_N to rounding):
    the search takes the lower index (``badata.TIE_RTOL``), not whichever the last bits
    of the sensitivities favour, so both estimators choose alike."""
    from gateway.bench_se import _gross, _snapshots

    model_a, model_b = _model(), _model()
    zs, _ = _snapshots(model_a, 24, seed=4)
    bad = _gross(model_a, zs, 3, seed=13)
    full = np.ones(model_a.m, bool).tobytes()
    ests = (LinearStateEstimator(model_a, max_iterations=30),
            ref.LinearStateEstimator(model_b, max_iterations=30))
    removed = 0
    for z, zb in zip(zs, bad, strict=True):
        out = []
        for est in ests:
            for cache in (est._sens, est._obs_ok):
                for key in [key for key in cache if key != full]:
                    del cache[key]
            est.solve(z)
            try:
                out.append(est.solve_clean(zb, warm_start=est.solve(zb).v))
            except EstimatorError as exc:
                out.append(type(exc))
        a, b = out
        if isinstance(b, type):
            assert a is b
            continue
        assert a.removed == b.removed
        assert np.abs(a.v - b.v).max() <= STATE_TOL
        removed += len(b.removed)
    assert removed >= 40


def test_hold_takes_the_last_solve_back() -> None:
    """``LinearStateEstimator.hold`` after a solve: the previous solve's state, returned
    and as the next warm start, rule (b)'s drift memory forgotten; None before a second
    solve (nothing to go back to) and after ``reset``."""
    model = _model()
    est = LinearStateEstimator(model)
    cases = _cases(model, 3, 13)
    est.solve(cases[0][0])
    assert est.hold() is None
    good = est.solve(cases[1][0]).v.copy()
    z = cases[2][0]
    bad = est.solve(z)
    assert np.abs(bad.v - good).max() > 1e-4  # its gross errors moved the estimate
    est._drift_prev[:] = True
    est._drift_any = True
    held = est.hold()
    assert held is not None
    np.testing.assert_array_equal(held, good)
    assert not est._drift_prev.any() and not est._drift_any
    np.testing.assert_array_equal(est._last_v, good)  # the next warm start
    est.reset()
    assert est.hold() is None
