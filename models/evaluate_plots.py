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
        ax.set(xlabel=f"time point (every {stride} trace steps of {pv.get('step_s', 1.0):g} s)",
               ylabel="PV output (p.u. of rating)",
               title=f"Figure 12: PV output at plant {names[k]} estimated from the last "
               f"{pv.get('window', 10)} weather samples ({pv.get('stride_s', 2.0):g} s apart; "
               "horizon: now)")
        written.append(_save(plt, fig, ax, out / "fig12_pv_forecast.png"))

    # Figures 13 and 14: SE voltage magnitude per bus (one snapshot) and bus 10 over time
    if se and "truth" in se:
        written.append(_fig13(plt, out, se, cfg))
        truth = se["truth"]
        methods = [k for k in se if k != "truth"]
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


def _fig13(plt: Any, out: Path, se: dict[str, Any], cfg: Any) -> Path:
    """|V| along the feeder with real bus ids: the main feeder and each lateral as its own
    line, in the order of the live view's one-line diagram (:mod:`estimator.layout`), the
    voltage limits drawn, the estimates over the truth."""
    from estimator.layout import one_line

    ol = one_line(cfg.network)
    truth = se["truth"]
    methods = [k for k in se if k != "truth"]
    t = min(len(truth) - 1, 25)
    idx = {int(b): i for i, b in enumerate(cfg.network.bus_ids)}
    depth = {b.id: b.depth for b in ol.buses}
    parent = {}  # child bus -> the bus it hangs from in the drawing's tree
    for r in ol.branches:
        if r.tree:
            up, down = (r.f, r.t) if depth[r.f] < depth[r.t] else (r.t, r.f)
            parent[down] = up
    lanes: dict[int, list[Any]] = {}
    for b in sorted(ol.buses, key=lambda b: (b.y, b.x)):
        lanes.setdefault(b.y, []).append(b)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.axhspan(0.95, 1.05, color="0.93", zorder=0)
    for v in (0.95, 1.05):
        ax.axhline(v, color="0.5", lw=0.8, ls="--", zorder=1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for lane, buses in lanes.items():
        ids = [b.id for b in buses]
        first = parent.get(ids[0])
        if first is not None:  # a lateral starts at the bus it leaves from
            ids = [first, *ids]
        xs = [next(b.x for b in ol.buses if b.id == i) for i in ids]
        cols = [idx[i] for i in ids]
        main = lane == 0
        ax.plot(xs, np.abs(truth[t, cols]), "-", color="k", lw=3 if main else 2,
                alpha=0.35, zorder=2, label="true" if main else None)
        for j, mth in enumerate(methods):
            ax.plot(xs, np.abs(se[mth][t, cols]), ".-", color=colours[j % len(colours)],
                    lw=1, ms=4, zorder=3, label=mth if main else None)
        ax.annotate(f"{ids[0]}→{ids[-1]}", (xs[-1], float(np.abs(truth[t, cols[-1]]))),
                    textcoords="offset points", xytext=(4, 0), fontsize=7, va="center")
    ax.set(xlabel="buses along the drawn path (steps from the substation; each lateral its "
           "own line)", ylabel="|V| (p.u.)",
           title="Figure 13: estimated vs true voltage along the feeder, one snapshot "
           "(shaded: 0.95-1.05 p.u.)")
    return _save(plt, fig, ax, out / "fig13_se_profile.png")


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    """Legend, tight layout, ``path`` at 110 dpi; closes the figure."""
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
