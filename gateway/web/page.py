"""The operator's live view: what the page shows, built from the twin config and each state.

:class:`LiveView` holds what does not change while the twin runs (the one-line layout of
:mod:`estimator.layout`, meters and plants at their buses, voltage limits and colours, as
``/layout.json``) and turns the latest estimate into the live update the page draws:
|V| and angle per bus, active power per branch (from the estimated voltages and the branch
admittances: ``P_f = Re(V_f · conj(Y_f V)) · S_base``), the flags each meter showed since
the previous update, PV forecast against measurement, stream health, latency and events.

Updates are built at most ``max_rate_hz`` times per second (see :mod:`gateway.web.live`),
so the branch-flow product and the JSON encoding cost nothing per snapshot; the per
snapshot work is one OR of the snapshot's flags into the per-meter accumulator, and only
while a browser is connected.

Voltage colours (:func:`voltage_band`): under ``low`` → *under*, over ``high`` → *over*,
within ``margin`` × (high − low) of a limit → *low* / *high*, otherwise *ok*. The page's
script applies the same rule to the numbers it receives.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from estimator.layout import one_line
from gateway.config import TwinConfig

__all__ = ["BAND_COLOURS", "LiveView", "VoltageLimits", "asset", "voltage_band"]

#: fill colour of a bus per |V| band (the page's legend shows the same)
BAND_COLOURS = {"under": "#3b7ddd", "low": "#7fb8e6", "ok": "#3cb371", "high": "#f0a04b",
                "over": "#e0473c", "unknown": "#5b6b7c"}
_ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
           "/assets/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/assets/style.css": ("style.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class VoltageLimits:
    low: float = 0.95
    high: float = 1.05
    margin: float = 0.25  # fraction of (high - low) near a limit drawn as low/high


def voltage_band(vm: float, lim: VoltageLimits) -> str:
    """The colour band of ``vm`` (pu); the page's ``band()`` is the same rule."""
    if not math.isfinite(vm):
        return "unknown"
    m = lim.margin * (lim.high - lim.low)
    if vm < lim.low:
        return "under"
    if vm > lim.high:
        return "over"
    if vm < lim.low + m:
        return "low"
    if vm > lim.high - m:
        return "high"
    return "ok"


def asset(path: str) -> tuple[bytes, str] | None:
    """The shipped page file for a URL path (``/``, ``/assets/…``), or None."""
    hit = _ASSETS.get(path)
    if hit is None:
        return None
    name, ctype = hit
    return resources.files("gateway.web").joinpath("assets", name).read_bytes(), ctype


class LiveView:
    """Static layout and live payloads for one twin (see the module docstring)."""

    def __init__(self, cfg: TwinConfig, *, limits: VoltageLimits | None = None,
                 history_s: float = 600.0, max_rate_hz: float = 10.0) -> None:
        self.cfg = cfg
        self.limits = limits or VoltageLimits()
        net = cfg.network
        self.bus_ids = [int(b) for b in net.bus_ids]
        yf, _ = net.branch_admittance()
        self._yf = yf.tocsr()
        self._f = np.asarray(net.branches.from_idx, np.intp)
        self._base_mva = float(net.base_mva)
        self._meter_ids = [m.id for m in cfg.meters if m.kind != "weather"]
        meter_pos = {m: i for i, m in enumerate(self._meter_ids)}
        chan_meter = [meter_pos.get(c.meter, -1) for c in cfg.channels]
        # channels grouped by meter, so one reduceat ORs each meter's flags together
        pairs = sorted((m, i) for i, m in enumerate(chan_meter) if m >= 0)
        self._chan = np.array([i for _, i in pairs], np.intp)
        meters_sorted = np.array([m for m, _ in pairs], np.intp)
        starts = np.flatnonzero(np.r_[True, meters_sorted[1:] != meters_sorted[:-1]]) \
            if pairs else np.zeros(0, np.intp)
        self._starts = starts.astype(np.intp)
        self._starts_meter = meters_sorted[self._starts] if pairs else self._starts
        self._acc = np.zeros(len(self._meter_ids), np.uint32)
        self._pv_meas = [self._plant_channel(p.name) for p in cfg.plants]
        self.layout_json = self._layout(net)
        # history ring: at most max_rate_hz samples per second for history_s seconds
        self.history: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray | None]] = deque(
            maxlen=max(1, int(history_s * max_rate_hz)))
        # metered |V| (kV on the wire) per bus id, for the page's estimate-against-meter
        kv = dict(zip(self.bus_ids, np.asarray(net.base_kv, float).tolist(), strict=True))
        self._vm_chan = {c.bus: (c.index, kv[c.bus]) for c in cfg.channels
                         if c.quantity == "vm" and c.bus in kv}

    def _plant_channel(self, plant: str) -> int | None:
        for c in self.cfg.channels:
            if c.plant == plant and c.kind != "weather" and c.quantity in ("p", "pinj"):
                return c.index
        return None

    def _layout(self, net: Any) -> dict[str, Any]:
        ol = one_line(net).as_dict()
        br = net.branches
        ids = self.bus_ids
        meters = []
        for m in self.cfg.meters:
            if m.kind == "weather":
                continue
            f = ids[int(br.from_idx[m.branch])] if m.branch is not None else None
            meters.append({"id": m.id, "kind": m.kind, "bus": m.bus, "branch": m.branch,
                           "branch_from": f})
        plants = [{"name": p.name, "bus": p.bus} for p in self.cfg.plants]
        return {"name": self.cfg.name, **ol, "meters": meters, "plants": plants,
                "limits": {"low": self.limits.low, "high": self.limits.high,
                           "margin": self.limits.margin},
                "colours": BAND_COLOURS}

    # ------------------------------------------------------------------ per snapshot
    def note_flags(self, flags: np.ndarray) -> None:
        """OR one snapshot's flags into the per-meter accumulator (call only while a
        client is connected: it is the only per-snapshot cost of the live view)."""
        if self._chan.size:
            self._acc[self._starts_meter] |= np.bitwise_or.reduceat(flags[self._chan],
                                                                    self._starts)

    # ------------------------------------------------------------------ per update
    def payload(self, state: dict[str, Any], *, values: np.ndarray | None,
                pv_mw: np.ndarray | None, extras: dict[str, Any]) -> dict[str, Any]:
        """The live update for the ``/state`` object ``state`` (vm, va, chi2…)."""
        vm = np.asarray(state["vm_pu"], float)
        va = np.asarray(state["va_rad"], float)
        v = vm * np.exp(1j * va)
        # P_f = Re(V_f conj(Y_f V)) S_base, per branch at its from end
        p_mw = (v[self._f] * np.conj(self._yf @ v)).real * self._base_mva
        flags = {m: int(f) for m, f in zip(self._meter_ids, self._acc.tolist(), strict=True)}
        self._acc[:] = 0
        plants = []
        for i, p in enumerate(self.cfg.plants):
            ch = self._pv_meas[i]
            meas = float(values[ch]) if values is not None and ch is not None else None
            fc = float(pv_mw[i]) if pv_mw is not None and i < len(pv_mw) else None
            plants.append({"name": p.name, "forecast_mw": fc, "measured_mw": meas})
        meter_vm = None
        if values is not None:
            meter_vm = np.full(len(self.bus_ids), np.nan)
            for i, b in enumerate(self.bus_ids):
                if b in self._vm_chan:
                    ch, kv = self._vm_chan[b]
                    meter_vm[i] = values[ch] / kv
        self.history.append((float(state["source_time"]), vm, va, meter_vm))
        return {"seq": state["seq"], "source_time": state["source_time"],
                "vm": vm.tolist(), "va": va.tolist(), "chi2": state.get("chi2"),
                "chi2_threshold": state.get("chi2_threshold"),
                "branch_p_mw": [round(x, 6) for x in p_mw.tolist()],
                "meter_flags": flags, "plants": plants, **extras}

    def bus_history(self, bus_id: int) -> dict[str, Any] | None:
        """|V|, angle (and the meter's |V| where one exists) of one bus over the ring."""
        if bus_id not in self.bus_ids:
            return None
        i = self.bus_ids.index(bus_id)
        rows = list(self.history)
        meter = None
        if bus_id in self._vm_chan:
            meter = [None if r[3] is None or not math.isfinite(r[3][i]) else float(r[3][i])
                     for r in rows]
        return {"bus": bus_id, "source": "memory", "t": [r[0] for r in rows],
                "vm": [float(r[1][i]) for r in rows], "va": [float(r[2][i]) for r in rows],
                "meter_vm": meter}
