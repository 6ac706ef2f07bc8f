"""`gridtwin evaluate --quick --json`: the report has the contract's shape (docs/measured.md),
without torch.

The command runs in a child Python in which torch cannot be found (tests/absent.py), as on
an install without the ``train`` extra: evaluation needs only the run-time install (and
matplotlib for ``--plots``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from absent import gridtwin_without

KEYS = {
    "detection": {"method", "bad_pct", "missed_pct", "false_pct"},
    "prediction": {"method", "mape_pct", "rmse", "r2"},
    "pv": {"method", "site", "mape_pct", "rmse_pct"},
    "se": {"method", "vm_mape_pct", "vm_rmse_pu", "va_rmse_rad", "ms_per_snapshot"},
}


def test_evaluate_quick_json_without_torch(tmp_path: Path) -> None:
    out = gridtwin_without("torch", "evaluate", "--quick", "--json", "--plots", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    for section, keys in KEYS.items():
        rows = report[section]
        assert rows, section
        for row in rows:
            assert keys <= set(row), (section, row)
            assert all(math.isfinite(row[k]) for k in keys if k not in ("method", "site"))
    rates = {r["bad_pct"] for r in report["detection"]}
    assert rates == {5.0, 10.0, 15.0}
    methods = {r["method"] for r in report["prediction"]}
    assert methods == {"BP", "LSTM", "BiLSTM (ours)"}
    assert {p.name for p in tmp_path.glob("fig1*.png")} >= {
        "fig10_branch_p_prediction.png", "fig12_pv_forecast.png"}
