"""The pandapower baseline on a feeder with two voltage levels (issue 16, item 11).

pandapower converts a line's ohms to per unit with the from-bus voltage; the baseline's
conversion must use the same bus, or the 110/20 kV branch comes out (110/20)^2 = 30x off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from estimator.baselines import PandapowerEstimator
from estimator.measurement import MeasurementModel, Spec
from estimator.network import load_case

CASE = Path(__file__).resolve().parent / "data" / "two_levels.m"


def test_pandapower_network_has_our_per_unit_impedances() -> None:
    pytest.importorskip("pandapower")
    from pandapower.converter.pypower.to_ppc import to_ppc

    net = load_case(CASE)
    assert sorted({float(k) for k in net.base_kv}) == [20.0, 110.0]
    model = MeasurementModel(net, [Spec("vm", bus=0, sigma=1e-3)])
    pnet = PandapowerEstimator(model)._build()
    ppc = to_ppc(pnet, init="flat")
    scale = ppc["baseMVA"] / net.base_mva  # pandapower's system base vs the case's
    f = ppc["branch"][:, 0].real.astype(int)
    t = ppc["branch"][:, 1].real.astype(int)
    for k in range(net.n_branch):
        row = np.flatnonzero((f == net.branches.from_idx[k]) & (t == net.branches.to_idx[k]))
        assert row.size == 1
        r, x = ppc["branch"][row[0], 2].real, ppc["branch"][row[0], 3].real
        assert r == pytest.approx(net.branches.r[k] * scale, rel=1e-9)
        assert x == pytest.approx(net.branches.x[k] * scale, rel=1e-9)
