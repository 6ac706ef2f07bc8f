"""The linear SE's fast paths answer what the unoptimised estimator answers.

``tests/linear_reference.py`` is a frozen copy of the estimator before its kernels were
made faster; every test here feeds the same snapshots to both and asks for the same
voltages (to 1e-10 relative), iteration counts, residuals, normalized residuals, J(x),
thresholds, degrees of freedom and re-weightings: noisy snapshots along a load and PV
ramp, with gross errors, missing values (a few: filled from the estimate; many: a
factorization of their own), caller sigmas, and a switched topology.

Why 1e-10 and not bit for bit: a re-weighting inverts the gain by its Cholesky factor
(``potrf``/``potri``, a third of the LU inverse's cost) and takes the solution operator
without the LU refinement step, and the batch iterates in the correction form; with the
gain's condition number near 5e8 on IEEE33 any two such routes differ by about 1e-12 pu
in the voltages (up to 7e-12 measured), where the fixed point itself is only defined to
the iteration tolerance (1e-7 pu) and the meters' noise is about 1e-4 pu: 1e-10 still
catches any change of algorithm (a different weight, iteration or stopping rule moves the
answers by 1e-8 or more) while leaving the rounding of the route free. A power residual
moves by up to ``2 max_k sum_j |Y_kj|`` (about 1000 pu here) times the voltages, hence
``RES_ATOL``; the iteration counts must still agree exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import tests.linear_reference as ref
from estimator.errors import EstimatorError
from estimator.linear import LinearStateEstimator
from estimator.topology import SwitchSet
from gateway.bench_se import _snapshots as bench_snapshots
from gateway.config import load_config
from gateway.se_model import measurement_model

RTOL = 1e-10  # voltages, relative to the largest |V| (see the module docstring)
RES_ATOL = 1e-8  # residuals, pu: RTOL times the power's sensitivity to V


def _model(closed: tuple[str, ...] = ()) -> Any:
    cfg = load_config("ieee33")
    if not closed:
        return measurement_model(cfg)
    sw = SwitchSet.of(cfg.network)
    # close a tie: a meshed feeder
    topo = sw.with_states(sw.normal, {name: True for name in closed})
    return measurement_model(replace(cfg, network=sw.network(topo)))


def _snapshots(model: Any, k: int, seed: int) -> np.ndarray:
    """``k`` noisy snapshots along the bench's load (x2) and PV (x5) ramp, so the
    re-weighting rule fires along the way, with gross errors and missing values sprinkled
    in."""
    z, _ = bench_snapshots(model, k, seed)
    rng = np.random.default_rng([seed, 1])  # the sprinkles' own stream
    bad = rng.random(k) < 0.1  # one gross error (20 sigma) in a tenth of the snapshots
    cols = rng.integers(0, model.m, k)
    sig = np.array([model.sigma(zz) for zz in z])
    z[bad, cols[bad]] += 20 * sig[bad, cols[bad]] + 0.01
    few = rng.random(k) < 0.15  # one or two values missing: filled from the estimate
    z[few, rng.integers(0, model.m, k)[few]] = np.nan
    z[few, rng.integers(0, model.m, k)[few]] = np.nan
    many = np.flatnonzero(rng.random(k) < 0.03)  # a whole device gone: own factorization
    for r in many:
        z[r, rng.choice(model.m, size=model.m // 6, replace=False)] = np.nan
    return z


def _same_state(a: Any, b: Any, rtol: float = RTOL) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    scale = np.abs(b.v).max()
    assert np.abs(a.v - b.v).max() <= rtol * scale
    assert a.iterations == b.iterations
    assert a.dof == b.dof
    np.testing.assert_array_equal(a.active, b.active)
    np.testing.assert_allclose(a.residual, b.residual, rtol=0, atol=RES_ATOL)
    # r / (sigma sqrt(s)): the 1e-12 pu differences in V measured are up to 1e-8 of a
    # sigma at its floor, and a critical measurement's s is floored at 1e-6 (x 1000)
    np.testing.assert_allclose(a.normalized_residual, b.normalized_residual, rtol=1e-6,
                               atol=1e-4)
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    assert a.chi2_threshold == pytest.approx(b.chi2_threshold, rel=1e-9, nan_ok=True)


def _solve(est: Any, z: np.ndarray, **kw: Any) -> Any:
    try:
        return est.solve(z, **kw)
    except EstimatorError:
        return None


@pytest.mark.parametrize("closed", [(), ("sw_9_15",)])
def test_solve_sequence_matches_reference(closed: tuple[str, ...]) -> None:
    """Row after row through ``solve`` (warm start, re-weightings, caller sigmas on every
    seventh snapshot) on the normal and on a switched topology."""
    model_a, model_b = _model(closed), _model(closed)
    z = _snapshots(model_a, 240, seed=1 + len(closed))
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    for k, zk in enumerate(z):
        kw = {}
        if k % 7 == 3:  # a caller's sigma on the PV pseudo-measurements (forecast's own)
            sig = np.full(zk.size, np.nan)
            sig[-4:] = 0.02
            kw = {"sigma": sig}
        _same_state(_solve(fast, zk, **kw), _solve(slow, zk, **kw))
    assert fast.reweights == slow.reweights > 3


def test_solve_batch_matches_reference() -> None:
    """One ``solve_batch`` over the sequence, then a second continuing from it."""
    model_a, model_b = _model(), _model()
    z = _snapshots(model_a, 400, seed=5)
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    for est in (fast, slow):
        est.solve(z[0])
        est.reset()
    for part in (z[:300], z[300:][::-1]):
        a, b = fast.solve_batch(part), slow.solve_batch(part)
        np.testing.assert_array_equal(a.converged, b.converged)
        ok = b.converged
        assert ok.mean() > 0.9
        scale = np.abs(b.v[ok]).max()
        assert np.abs(a.v[ok] - b.v[ok]).max() <= RTOL * scale
        np.testing.assert_array_equal(a.iterations[ok], b.iterations[ok])
        np.testing.assert_array_equal(a.dof[ok], b.dof[ok])
        np.testing.assert_allclose(a.objective[ok], b.objective[ok], rtol=1e-9)
        np.testing.assert_allclose(a.chi2_threshold[ok], b.chi2_threshold[ok], rtol=1e-9)
        np.testing.assert_allclose(a.normalized_residual[ok], b.normalized_residual[ok],
                                   rtol=1e-6, atol=1e-4)
    assert fast.reweights == slow.reweights > 3


def test_solve_batch_with_zero_injection_matches_reference() -> None:
    """A feeder with zero-injection junctions (dense mode with the KKT rows: the LU
    re-weighting and the direct-form rows) along a load ramp that re-weights."""
    from estimator.measurement import MeasurementModel
    from estimator.synthetic import paper_specs, radial_feeder, truth

    def model() -> MeasurementModel:
        net = radial_feeder(120, seed=1)
        pmus = [int(net.bus_ids[i]) for i in range(0, 120, 20)]
        return MeasurementModel(net, paper_specs(net, pmus=pmus, injections=(), plants=()))

    model_a, model_b = model(), model()
    assert model_a.zero_injection.size > 0
    _, z = truth(model_a)
    rng = np.random.default_rng(3)
    sig = model_a.sigma(z)
    zs = z * np.linspace(0.7, 1.6, 120)[:, None] + rng.standard_normal((120, z.size)) * sig
    ang = model_a.is_angle
    zs[:, ang] = z[ang] + rng.standard_normal((120, int(ang.sum()))) * sig[ang]
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    for est in (fast, slow):
        est.solve(zs[0])
        est.reset()
    a, b = fast.solve_batch(zs), slow.solve_batch(zs)
    assert fast.last_factor is not None and fast.last_factor.c.shape[0] > 0
    assert fast.last_factor.dense
    np.testing.assert_array_equal(a.converged, b.converged)
    assert b.converged.all()
    assert np.abs(a.v - b.v).max() <= RTOL * np.abs(b.v).max()
    np.testing.assert_array_equal(a.iterations, b.iterations)
    # (not J(x): the synthetic feeder measures the angle of a current that is zero, so
    # that residual is the angle of rounding noise, different for any two products)
    assert fast.reweights == slow.reweights > 0


def test_solve_clean_matches_reference() -> None:
    """The largest-normalized-residual search removes the same values."""
    model_a, model_b = _model(), _model()
    z = _snapshots(model_a, 60, seed=9)
    fast = LinearStateEstimator(model_a)
    slow = ref.LinearStateEstimator(model_b)
    for zk in z:
        try:
            a = fast.solve_clean(zk)
        except EstimatorError:
            a = None
        try:
            b = slow.solve_clean(zk)
        except EstimatorError:
            b = None
        # a trial set's factorization is derived from the full set's dense structure
        # (re-weighted, LinearStateEstimator._derived) instead of rebuilt: the same
        # operator to rounding, which moves the fixed point by about 1e-12
        _same_state(a, b, rtol=1e-10)
        if b is not None:
            assert a.removed == b.removed


def test_derived_trial_sets_use_the_compiled_fill_iteration_of_the_full_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A derived trial set's masks (columns of one 2-D array) reach ``kernels.fill_run``
    in C order like the full set's: one compiled version, the one the warm-up loads (a
    second layout was compiled or loaded on the first live search, on a deadline)."""
    import estimator.linear as lin_mod

    pytest.importorskip("numba")
    real = lin_mod._kernels()
    if real is None:
        pytest.skip("compiled kernels off (GRIDTWIN_JIT=0)")
    layouts: list[bool] = []

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def fill_run(*a: Any) -> Any:
            layouts.append(a[5].flags.c_contiguous and a[6].flags.c_contiguous)
            return real.fill_run(*a)

    derived: list[bool] = []
    orig = LinearStateEstimator._derived

    def spy_derived(self: Any, active: np.ndarray) -> Any:
        fac = orig(self, active)
        derived.append(fac is not None)
        return fac

    monkeypatch.setattr(lin_mod, "_kernels", lambda: Spy())
    monkeypatch.setattr(LinearStateEstimator, "_derived", spy_derived)
    model = _model()
    est = LinearStateEstimator(model)
    for zk in _snapshots(model, 60, seed=9):
        with contextlib.suppress(EstimatorError):
            est.solve_clean(zk)
    assert any(derived)  # the searches went through derived trial sets
    assert layouts and all(layouts)


def test_derived_trial_sets_keep_their_masks_in_c_order() -> None:
    """A derived trial set's own masks (``has0``, ``has1``: what its re-weighting passes
    to ``kernels.weight_blocks``) are C-order arrays, not columns of one 2-D array: a
    strided one made numba load a second version of that kernel mid-run (seen on a 1 kHz
    demo trace, ~9 ms on a live deadline)."""
    model = _model()
    est = LinearStateEstimator(model)
    z, _ = bench_snapshots(model, 1, 3)
    est.solve(z[0])
    full = est.factor(est._all)
    act = np.ones(model.m, bool)
    # a member whose slot keeps another one: the same slots as the full set
    k = int(np.flatnonzero(model.members[model.slot, 1] >= 0)[0])
    act[k] = False
    fac = est._derived(act)
    assert fac is not None
    assert fac.has0.flags.c_contiguous and fac.has1.flags.c_contiguous
    # (and they are this set's: one member fewer than the full set's)
    assert fac.has0.sum() + fac.has1.sum() == full.has0.sum() + full.has1.sum() - 1


def test_weights_are_those_of_the_numpy_code_bit_for_bit(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The gain, its inverse and the solution operator are built from the weights, and
    the answers move with their rounding (about 1e-12 when the operator is computed
    another way): the compiled weights equal the NumPy path's exactly, so every matrix
    is the same bit for bit (all members active, and one missing)."""
    import estimator.linear as lin_mod

    pytest.importorskip("numba")
    if not lin_mod.jit_enabled():
        pytest.skip("GRIDTWIN_JIT=0: no compiled kernels to compare with the NumPy code")
    model = _model()
    z = _snapshots(model, 30, seed=2)
    est = LinearStateEstimator(model)
    for zk in z:
        _solve(est, zk)
    fac = est.last_factor
    assert fac is not None and lin_mod._kernels() is not None
    partial = est._all.copy()
    partial[5] = False
    fast = [est._slot_weight_blocks(fac.slots, a) for a in (est._all, partial)]
    monkeypatch.setattr(lin_mod, "_KERNELS", False)  # the NumPy path
    slow = [est._slot_weight_blocks(fac.slots, a) for a in (est._all, partial)]
    for f, s in zip(fast, slow, strict=True):
        for a, b in zip(f, s, strict=True):
            np.testing.assert_array_equal(a, b)


def test_rule_a_per_row_as_the_numpy_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule (a) for a batch's rows (the kernel decides most rows by counting the
    log-ratios beyond the threshold, without the median): the same verdicts as the NumPy
    median on rows scaled around the threshold, with some values inactive."""
    import estimator.linear as lin_mod

    pytest.importorskip("numba")
    if not lin_mod.jit_enabled():
        pytest.skip("GRIDTWIN_JIT=0: no compiled kernels to compare with the NumPy code")
    model = _model()
    z = _snapshots(model, 40, seed=4)
    est = LinearStateEstimator(model)
    est.solve(np.nan_to_num(z[0], nan=1.0))
    rng = np.random.default_rng(6)
    zb = np.nan_to_num(z) * rng.choice([0.4, 0.5, 0.55, 1.0, 1.9, 2.0, 2.1, 2.5], (40, 1))
    zb *= np.exp(rng.normal(0, 0.3, zb.shape))
    act = rng.random(zb.shape) < 0.95
    fast = est._drifted_rows(zb, act)
    monkeypatch.setattr(lin_mod, "_KERNELS", False)
    slow = est._drifted_rows(zb, act)
    np.testing.assert_array_equal(fast, slow)
    assert 0 < slow.sum() < slow.size  # both verdicts occur


def test_gridtwin_jit_off_selects_the_numpy_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRIDTWIN_JIT=0 (the hardened systemd units) keeps numba out of the process."""
    from estimator import linear

    for off in ("0", "off", "No", "false"):
        monkeypatch.setenv("GRIDTWIN_JIT", off)
        assert not linear.jit_enabled()
        monkeypatch.setattr(linear, "_KERNELS", None)
        assert linear._kernels() is None
    monkeypatch.setenv("GRIDTWIN_JIT", "1")
    assert linear.jit_enabled()
