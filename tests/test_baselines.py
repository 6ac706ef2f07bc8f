"""Baselines behind the same call: WLS (polar), WLAV (HiGHS), power-grid-model, pandapower."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from estimator.badata import largest_normalized_residual
from estimator.baselines import METHODS, make_estimator
from estimator.errors import EstimatorError
from estimator.measurement import MeasurementModel
from estimator.synthetic import ieee33_with_plants, paper_specs, truth

PV = np.array([0.05, 0.08, 0.03, 0.07])


@pytest.fixture(scope="module")
def paper():
    net = ieee33_with_plants()
    model = MeasurementModel(net, paper_specs(net))
    v, z = truth(model, load_scale=1.1, pv_pu=PV)
    rng = np.random.default_rng(7)
    zn = z + rng.standard_normal(z.size) * model.sigma(z)
    return model, v, z, zn


@pytest.mark.parametrize(("method", "tol"), [("wls", 1e-8), ("wlav", 1e-6), ("pgm_il", 1e-6),
                                             ("pgm_nr", 1e-6)])
def test_noise_free_equals_truth(paper, method, tol):
    model, v, z, _ = paper
    st = make_estimator(method, model, tolerance=1e-10, max_iterations=50).solve(z)
    assert st.method == method
    assert np.abs(st.v - v).max() < tol


@pytest.mark.parametrize("method", ["linear", "wls", "wlav", "pgm_il", "pgm_nr"])
def test_noisy_estimates_agree(paper, method):
    model, v, _, zn = paper
    st = make_estimator(method, model).solve(zn, warm_start=False)
    ref = make_estimator("wls", model).solve(zn, warm_start=False)
    # all within the measurement accuracy of the WLS optimum and of the truth
    assert np.abs(np.abs(st.v) - np.abs(ref.v)).max() < 1e-3
    assert np.abs(np.abs(st.v) - np.abs(v)).max() < 2e-3
    assert np.isfinite(st.objective) and st.dof > 0


def test_wls_constraints_exact(paper):
    model, _, _, zn = paper
    st = make_estimator("wls", model, tolerance=1e-10).solve(zn)
    q = (st.v * np.conj(model.net.ybus() @ st.v)).imag
    assert np.abs(q[model.pv_nodes]).max() < 1e-9


def test_wlav_rejects_gross_error_wls_does_not(paper):
    model, v, z, zn = paper
    bad = zn.copy()
    k = model.names.index("p@6-7:from")
    bad[k] += 40 * model.sigma(z)[k]
    wls = make_estimator("wls", model).solve(bad)
    wlav = make_estimator("wlav", model).solve(bad)
    assert abs(wlav.residual[k]) > 20 * model.sigma(z)[k]  # the outlier is left out
    lnr = largest_normalized_residual(make_estimator("wls", model), bad)
    assert lnr.removed == [k]
    assert np.abs(lnr.v - v).max() <= np.abs(wls.v - v).max()


def test_pandapower_noise_free(paper):
    pytest.importorskip("pandapower")
    model, v, z, _ = paper
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = make_estimator("pandapower", model, tolerance=1e-10).solve(z)
    assert np.abs(st.v - v).max() < 1e-6


def test_unknown_method(paper):
    model = paper[0]
    assert "linear" in METHODS
    with pytest.raises(EstimatorError, match="unknown SE method"):
        make_estimator("no_such_method", model)
