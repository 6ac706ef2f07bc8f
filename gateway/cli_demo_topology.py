"""``gridtwin demo --reconfigure``: the demo's feeder switches half-way through the run.

The demo's scenario is reconfigured with :mod:`hil.reconfigure` (close the tie 8-21, open
the sectionalising switch 7-8 on the loop it forms: buses 8-18 then hang off the 19-22
lateral) at the middle of the run; the emulator sends both switches' statuses as
GTNET-SKT ``int32`` points of the scada stream, ``sent`` (the truth), ``withheld`` (never
sent from the switching on) or ``falsified`` (the old state keeps being reported). The
twin's config maps the two points and runs a hypothesis test after every estimate.

The report adds what the twin did about it, read from its historian: the topology
changes (events), whether and how fast the topology was identified from the
measurements, and the estimates' accuracy before and after the switching against the
switched scenario's truth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STATUS_MODES", "SWITCHING", "config_text", "prepare", "report"]

#: demo --status -> hil.reconfigure's status mode
STATUS_MODES = {"sent": "sent", "withheld": "withheld", "falsified": "stuck"}
#: the switching: close the tie 8-21, open 7-8 (on the loop the tie forms)
SWITCHING = (("sw_8_21", True), ("sw_7_8", False))
_SCADA = 'points = ["flow.*", "inj.*", "scada_status:int32"]'


def config_text(text: str) -> str:
    """The demo config with the two switch statuses on the scada stream and a hypothesis
    test after every estimate (``[topology] probe_s = 0``)."""
    if _SCADA not in text:
        raise ValueError("the demo config has no scada point list to add the switches to")
    points = ", ".join(f'"{n}:int32"' for n, _ in SWITCHING)
    return text.replace(_SCADA, _SCADA[:-1] + ", " + points + "]") + \
        "\n[topology]\nprobe_s = 5\n"


def prepare(trace_path: Path, out: Path, *, seconds: float, rate: float, status: str,
            seed: int) -> dict[str, Any]:
    """Write the reconfigured scenario to ``out``; what was switched, when (trace time
    and step) and how the statuses are sent."""
    from gateway.config import load_config
    from hil.reconfigure import Switching, reconfigure, with_statuses
    from hil.trace import load_trace, save_trace

    if status not in STATUS_MODES:
        raise ValueError(f"--status {status!r}: use one of {', '.join(STATUS_MODES)}")
    cfg = load_config("ieee33")
    trace = load_trace(trace_path)
    at = round(seconds * rate / 2)
    if not 0 < at < trace.n_steps:
        raise ValueError(f"a {seconds:g} s run at {rate:g} Hz has no middle to switch at")
    plan = [Switching(at, SWITCHING)]
    switched = reconfigure(trace, cfg, plan, seed=seed)
    switched = with_statuses(switched, cfg, plan, STATUS_MODES[status],
                             names=[n for n, _ in SWITCHING])
    save_trace(switched, out)
    return {"step": at, "time": float(trace.time[at]), "status": status,
            "switches": {n: "closed" if c else "open" for n, c in SWITCHING}}


def report(db: Path, trace_path: Path, switching: dict[str, Any], rate: float
           ) -> dict[str, Any]:
    """The topology part of the demo's report card, from the twin's historian."""
    from gateway.historian.reader import HistorianReader
    from hil.trace import load_trace

    trace = load_trace(trace_path)
    with HistorianReader(f"sqlite:///{db}") as rd:
        run_id = rd.latest_run()
        st = rd.states(run_id=run_id)
        events = [e for e in rd.events(run_id=run_id)
                  if e["kind"] in ("topology_changed", "topology_identified")]
    t_sw = float(switching["time"])
    after = st.source_time >= t_sw - 1e-6
    new = np.array([lab == _label(switching) for lab in st.topology], bool)
    changes = [{"time": e["time"], "trace_time": _detail(e).get("time"),
                "from": _detail(e).get("from"), "to": _detail(e).get("topology"),
                "source": _detail(e).get("source")} for e in events]
    return {"switching": switching,
            "topology_changes": changes,
            "topology_identified": _identified(st, events, t_sw, rate),
            "accuracy": {"before": _accuracy(st, trace, ~after),
                         "after": _accuracy(st, trace, after),
                         "after_on_new_topology": _accuracy(st, trace, after & new),
                         "right_after": _right_after(st, trace, t_sw)},
            "states_by_topology": _count(st.topology)}


def _label(switching: dict[str, Any]) -> str:
    """The switched topology's label (estimator.topology.SwitchSet.label: sorted names)."""
    return ",".join(f"{n}={s}" for n, s in sorted(switching["switches"].items()))


def _detail(e: dict[str, Any]) -> dict[str, Any]:
    d = e.get("detail")
    return json.loads(d) if isinstance(d, str) else dict(d or {})


def _identified(st: Any, events: list[dict[str, Any]], t_sw: float, rate: float
                ) -> dict[str, Any]:
    """Whether the measurements identified the topology, which, and the snapshots from
    the switching to the first estimate on it."""
    idf = [_detail(e) for e in events if e["kind"] == "topology_identified"]
    if not idf:
        return {"identified": False, "topology": None, "snapshots": None}
    label = idf[0].get("topology")
    on = [t for t, lab in zip(st.source_time, st.topology, strict=True)
          if lab == label and t >= t_sw - 1e-6]
    snaps = round((min(on) - t_sw) * rate) if on else None
    return {"identified": True, "topology": label, "snapshots": snaps,
            "confidence": idf[0].get("confidence"), "evidence": idf[0].get("evidence")}


def _accuracy(st: Any, trace: Any, sel: np.ndarray) -> dict[str, Any]:
    """|V| MAPE (%) and angle RMSE (rad) of the selected estimates against the switched
    scenario's truth."""
    if not sel.any():
        return {"states": 0, "vm_mape_pct": None, "va_rmse_rad": None}
    t0, step, n = float(trace.time[0]), float(trace.step_s), trace.time.shape[0]
    rows = np.mod(np.rint((st.source_time[sel] - t0) / step).astype(np.int64), n)
    v = trace.v[rows]
    vm, va = st.vm[sel], st.va[sel]
    return {"states": int(sel.sum()),
            "vm_mape_pct": float(np.mean(np.abs(vm - np.abs(v)) / np.abs(v)) * 100),
            "va_rmse_rad": float(np.sqrt(np.mean((va - np.angle(v)) ** 2)))}


#: the estimates after the switching whose worst |V| error the report gives
RIGHT_AFTER = 5


def _right_after(st: Any, trace: Any, t_sw: float) -> dict[str, Any]:
    """The worst |V| error (%, over the buses) of each of the first :data:`RIGHT_AFTER`
    estimates from the switching on, and the largest of them: where a quality stage that
    took the switching for bad data shows (the averages over the run's second half hide
    two bad estimates)."""
    idx = np.flatnonzero(st.source_time >= t_sw - 1e-6)
    idx = idx[np.argsort(st.source_time[idx], kind="stable")][:RIGHT_AFTER]
    if idx.size == 0:
        return {"states": 0, "vm_worst_pct": None, "vm_worst_pct_each": []}
    t0, step, n = float(trace.time[0]), float(trace.step_s), trace.time.shape[0]
    rows = np.mod(np.rint((st.source_time[idx] - t0) / step).astype(np.int64), n)
    v = np.abs(trace.v[rows])
    each = np.max(np.abs(st.vm[idx] - v) / v, axis=1) * 100
    return {"states": int(idx.size), "vm_worst_pct": float(each.max()),
            "vm_worst_pct_each": [round(float(e), 4) for e in each]}


def _count(labels: list[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lab in labels:
        out[str(lab)] = out.get(str(lab), 0) + 1
    return out
