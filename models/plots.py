"""PNG figures like the DT paper's Figures 10-14 (matplotlib, Agg backend: the ``plots``
extra, ``pip install 'gridtwin[plots]'``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def write_plots(out: Path, pred: dict[str, Any], pv: dict[str, Any], se: dict[str, Any],
                cfg: Any, *, log: Callable[[str], None] = print) -> list[Path]:
    from models.extras import require

    require("the evaluation figures", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    # Figures 10 and 11: branch 3-4 P and Q, 500 test points, truth vs BP/LSTM/BiLSTM
    for fig_no, name in ((10, "p"), (11, "q")):
        key = next((k for k in pred if k.endswith(f"3-4.{name}")), None)
        if key is None:
            key = next((k for k in pred if k.endswith(f".{name}")), None)
        if key is None:
            continue
        s = pred[key]
        n = min(500, len(s["truth"]))
        start = max(0, len(s["truth"]) // 2 - n // 2)
        sl = slice(start, start + n)
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(s["truth"][sl], "k-", lw=2, label="true")
        for method, style in (("BP", ":"), ("LSTM", "--"), ("BiLSTM (ours)", "-")):
            if method in s:
                ax.plot(s[method][sl], style, lw=1, label=method)
        unit = "MW" if name == "p" else "MVAr"
        ax.set(xlabel="test point", ylabel=f"{name.upper()} ({unit})",
               title=f"Figure {fig_no}: predicted vs true {name.upper()}, {key}")
        written.append(_save(plt, fig, ax, out / f"fig{fig_no}_branch_{name}_prediction.png"))

    # Figure 12: PV forecast vs actual at the bus-22 plant, 300 consecutive 20 s points
    if pv:
        names = [p.name for p in cfg.plants]
        k = names.index("pv22") if "pv22" in names else 0
        truth = pv["truth"][k]
        stride = 20
        day = np.flatnonzero(truth > 0.05)
        mid = int(day[len(day) // 2]) if day.size else len(truth) // 2
        idx = np.arange(mid - 150 * stride, mid + 150 * stride, stride)
        idx = idx[(idx >= 0) & (idx < len(truth))]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(truth[idx], "k-", lw=2, label="actual")
        for method in ("ANN/BP", "pvlib physical (nameplate)", "BiLSTM (ours)"):
            if method in pv:
                ax.plot(pv[method][k][idx], lw=1, label=method)
        ax.set(xlabel="time point (20 s)", ylabel="PV output (p.u. of rating)",
               title=f"Figure 12: PV forecast vs actual, plant {names[k]}")
        written.append(_save(plt, fig, ax, out / "fig12_pv_forecast.png"))

    # Figures 13 and 14: SE voltage magnitude per bus (one snapshot) and bus 10 over time
    if se and "truth" in se:
        truth = se["truth"]
        methods = [k for k in se if k != "truth"]
        fig, ax = plt.subplots(figsize=(9, 4))
        t = min(len(truth) - 1, 25)
        ax.plot(np.abs(truth[t]), "ko-", lw=2, ms=3, label="true")
        for mth in methods:
            ax.plot(np.abs(se[mth][t]), ".-", lw=1, label=mth)
        ax.set(xlabel="bus (internal index)", ylabel="|V| (p.u.)",
               title="Figure 13: estimated vs true voltage magnitude, one snapshot")
        written.append(_save(plt, fig, ax, out / "fig13_se_profile.png"))
        b = cfg.network.index_of(10)
        fig, ax = plt.subplots(figsize=(9, 4))
        n = min(50, len(truth))
        ax.plot(np.abs(truth[:n, b]), "k-", lw=2, label="true")
        for mth in methods:
            ax.plot(np.abs(se[mth][:n, b]), lw=1, label=mth)
        ax.set(xlabel="time section (1 s)", ylabel="|V| bus 10 (p.u.)",
               title="Figure 14: state estimate at bus 10, sections 0-50")
        written.append(_save(plt, fig, ax, out / "fig14_se_bus10.png"))
    for p in written:
        log(f"  wrote {p}")
    return written


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    """Legend, tight layout, ``path`` at 110 dpi; closes the figure."""
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
