"""Closed loop: commands from the twin change the emulated plant in the following steps.

The twin sends GTNET-SKT frames back (``[commands]`` in the config; the URL's port is where
the *emulator* listens, UDP). Each frame carries the command points, in list order, with or
without the 3-word sequence/timestamp header (both sizes are accepted). Point names:

* ``cmd_seq`` (int32): the sequence number (= emulator step) of the frame the command
  reacts to; used for the command round-trip time;
* ``<plant>_curtail`` (float32): PV curtailment, output cap as a fraction of the plant's
  rating (clipped to 0..1; 1 lifts the cap);
* ``<plant>_p_max_mw`` (float32): output cap in MW (negative -> 0; +inf lifts it).

A NaN value leaves that plant's cap unchanged; other point names are ignored. A command
received while step ``k`` is the next to be built applies from step ``k`` on (never to a
frame already built or sent).

For a step where a cap binds (cap < the trace's PV output), the ground truth is
recomputed: the plant node's injection becomes the capped output, the power flow is
re-solved with power-grid-model (Newton-Raphson to 1e-12 on the model of
:func:`estimator.pgm.input_data`: the same network as the trace) and every channel is
recomputed from the new voltages with the scenario generator's own measurement model
(:func:`hil.scenario.channel_truth`); measured = new truth + the trace's own error at
that step (``measured - truth``: the same noise draw, the same gross errors, the same
NaNs). Weather channels are unchanged. Steps are re-solved ``CHUNK`` at a time.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gateway.codecs.gtnet_skt import HEADER_WORDS, GtnetSktCodec
from gateway.config import COMMAND_SEQ, Point, TwinConfig, command_point_plant
from gateway.errors import FrameError
from hil.errors import HilError

CHUNK = 8  # steps re-solved per power-flow batch once a cap binds (~1-2 ms)
_CACHE_ROWS = 4096


class CommandError(HilError):
    """A command frame cannot be decoded, or the command points are inconsistent."""


@dataclass
class StepState:
    """The ground truth actually emulated at one step."""

    truth: np.ndarray  # (m,) channel truth
    measured: np.ndarray  # (m,) what was sent
    pv_mw: np.ndarray  # (n_plants,)
    v: np.ndarray  # (n_bus,) complex pu


@dataclass
class CommandRecord:
    """One command received: when, what it changed, its round trip."""

    recv_step: int  # first step the command applies to
    cmd_seq: int | None
    rtt_ms: float | None  # receive time - send time of frame ``cmd_seq``
    caps_mw: dict[str, float]  # plant -> cap after the command (inf: none)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["caps_mw"] = {k: (None if math.isinf(v) else v) for k, v in self.caps_mw.items()}
        return d


class ClosedLoop:
    """Command decoding, plant caps and the re-solved ground truth (see module doc)."""

    def __init__(self, cfg: TwinConfig, trace: Any, points: tuple[Point, ...] | None = None
                 ) -> None:
        self.cfg = cfg
        self.trace = trace
        pts = tuple(points if points is not None else cfg.commands.points)
        if not pts:
            raise CommandError("commands.points is empty: list e.g. "
                               '["cmd_seq:int32", "pv8_curtail"]')
        self.points = pts
        types = [p.type for p in pts]
        self._codecs = {len(types) * 4: GtnetSktCodec(types, header=False),
                        (len(types) + HEADER_WORDS) * 4: GtnetSktCodec(types, header=True)}
        plant_idx = {p.name: k for k, p in enumerate(cfg.plants)}
        self.rating = np.array([p.rating_mw for p in cfg.plants], float)
        self.caps = np.full(len(cfg.plants), np.inf)
        self._seq_at: int | None = None
        self._cap_pts: list[tuple[int, int, str]] = []  # (point idx, plant idx, kind)
        for j, p in enumerate(pts):
            if p.name == COMMAND_SEQ:
                self._seq_at = j
            pp = command_point_plant(p.name)
            if pp is not None and pp[0] in plant_idx:
                self._cap_pts.append((j, plant_idx[pp[0]], pp[1]))
        if not self._cap_pts:
            raise CommandError(
                "no command point names a plant: use <plant>_curtail or <plant>_p_max_mw "
                f"with a plant of {', '.join(plant_idx)}")
        net = cfg.network
        yf, yt = net.branch_admittance()
        self._yf, self._yt, self._ybus = yf.tocsr(), yt.tocsr(), net.ybus().tocsr()
        self.plant_names = [p.name for p in cfg.plants]
        self.plant_nodes = np.array([cfg.network.index_of(p.node) for p in cfg.plants],
                                    np.intp)
        # cap history: (first step, caps) — caps in force from that step on
        self.history: list[tuple[int, np.ndarray]] = []
        self.records: list[CommandRecord] = []
        self.errors = 0
        self._model: Any = None
        self._cache: OrderedDict[tuple[int, bytes], StepState] = OrderedDict()

    # -- commands ---------------------------------------------------------------------
    def receive(self, data: bytes, *, next_step: int, now: float,
                sent_at: dict[int, float] | None = None, source: str = "") -> CommandRecord:
        """Apply one command frame from ``next_step`` on; CommandError if undecodable."""
        codec = self._codecs.get(len(data))
        if codec is None:
            self.errors += 1
            raise CommandError(f"command of {len(data)} bytes; the point list expects "
                               f"{' or '.join(str(n) for n in sorted(self._codecs))}")
        try:
            vals = codec.parse(data, now).values
        except FrameError as exc:
            self.errors += 1
            raise CommandError(f"undecodable command: {exc}") from exc
        caps = self.caps.copy()
        for j, k, kind in self._cap_pts:
            x = float(vals[j])
            if math.isnan(x):
                continue
            caps[k] = (min(max(x, 0.0), 1.0) * self.rating[k] if kind == "curtail"
                       else max(x, 0.0))
        self.caps = caps
        self.history.append((next_step, caps.copy()))
        cmd_seq = int(vals[self._seq_at]) if self._seq_at is not None else None
        rtt = None
        if cmd_seq is not None and sent_at is not None and cmd_seq in sent_at:
            rtt = (now - sent_at[cmd_seq]) * 1000.0
        rec = CommandRecord(next_step, cmd_seq, rtt,
                            {p.name: float(c) for p, c in zip(self.cfg.plants, caps,
                                                              strict=True)}, source)
        self.records.append(rec)
        return rec

    # -- truth ------------------------------------------------------------------------
    def binds(self, row: int) -> bool:
        return bool(np.any(self.trace.pv_mw[row] > self.caps))

    def state(self, row: int) -> StepState | None:
        """The re-solved state of trace row ``row`` under the current caps, or None when
        no cap binds there (the trace row holds)."""
        if not self.binds(row):
            return None
        key = (row, self.caps.tobytes())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        rows = np.arange(row, min(row + CHUNK, self.trace.pv_mw.shape[0]))
        for r, st in zip(rows, self.solve(rows, self.caps), strict=True):
            self._cache[(int(r), key[1])] = st
        while len(self._cache) > _CACHE_ROWS:
            self._cache.popitem(last=False)
        return self._cache[key]

    def _power_flow(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Bus voltages (pu) for injection rows ``p``/``q`` (pu): power-grid-model Newton-
        Raphson to 1e-12 on one model built once (:func:`estimator.pgm.input_data`), the
        injections as a batch update of the per-bus loads, as ``estimator.pgm.power_flow``
        does (that function rebuilds the model per call: ~10 ms)."""
        from power_grid_model import CalculationMethod, ComponentType, PowerGridModel
        from power_grid_model.errors import PowerGridError

        from estimator.pgm import input_data

        if self._model is None:
            self._model = PowerGridModel(input_data(self.cfg.network))
        base_va = self.cfg.network.base_mva * 1e6
        # load = -(injection), W / var
        upd = {ComponentType.sym_load: {"p_specified": -p * base_va,
                                        "q_specified": -q * base_va}}
        try:
            res = self._model.calculate_power_flow(
                update_data=upd, calculation_method=CalculationMethod.newton_raphson,
                error_tolerance=1e-12, max_iterations=30, threading=-1,
                output_component_types={ComponentType.node: ["u_pu", "u_angle"]})
        except PowerGridError as exc:
            raise HilError(f"closed loop: power flow failed: {exc}") from exc
        nd = res[ComponentType.node]
        return np.asarray(nd["u_pu"] * np.exp(1j * nd["u_angle"]))

    def solve(self, rows: np.ndarray, caps: np.ndarray) -> list[StepState]:
        """Re-solve trace ``rows`` with plant outputs capped at ``caps`` (MW)."""
        from hil.scenario import channel_truth

        tr = self.trace
        net = self.cfg.network
        pv_old = np.asarray(tr.pv_mw[rows], float)
        pv_new = np.minimum(pv_old, caps)
        s = np.array(tr.s_inj[rows], dtype=complex)
        # plant node injection changes by the curtailed power (pu)
        s[:, self.plant_nodes] += (pv_new - pv_old) / net.base_mva
        v = self._power_flow(s.real, s.imag)
        # I_from = Yf V, I_to = Yt V, S_inj = V conj(Ybus V) (rows = steps)
        i_from = np.asarray((self._yf @ v.T).T)
        i_to = np.asarray((self._yt @ v.T).T)
        s_inj = v * np.conj(np.asarray((self._ybus @ v.T).T))
        truth = channel_truth(self.cfg, v, i_from, i_to, s_inj, pv_new,
                              np.asarray(tr.weather[rows], float), self.plant_names)
        # measured = new truth + the trace's own error (noise, gross errors, NaN)
        measured = truth + (np.asarray(tr.measured[rows], float)
                            - np.asarray(tr.truth[rows], float))
        return [StepState(truth[i], measured[i], pv_new[i], v[i]) for i in range(len(rows))]


__all__ = ["ClosedLoop", "CommandError", "CommandRecord", "StepState"]
