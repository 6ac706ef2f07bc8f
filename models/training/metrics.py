"""Accuracy figures shared by the training cards and ``gridtwin evaluate`` (numpy only).

Kept apart from the training code so that evaluation, which reports the same figures on
held-out traces, never loads torch.
"""

from __future__ import annotations

import numpy as np


def pv_metrics(pred_pu: np.ndarray, true_pu: np.ndarray, *, above: float = 0.05,
               sun_up: np.ndarray | None = None) -> dict[str, float]:
    """MAPE (%) over points whose true output is above ``above`` of rating; RMSE (% of
    rating) over the daytime points (sun up: measured GHI > 0 or output > 0)."""
    p = np.asarray(pred_pu, float)
    t = np.asarray(true_pu, float)
    sel = t > above
    day = sun_up if sun_up is not None else np.ones_like(t, bool)
    return {
        "mape_pct": float(100 * np.mean(np.abs(p[sel] - t[sel]) / t[sel])) if sel.any()
        else float("nan"),
        "rmse_pct": float(100 * np.sqrt(np.mean((p[day] - t[day]) ** 2))),
        "n_mape": int(sel.sum()),
        "n_rmse": int(day.sum()),
    }
