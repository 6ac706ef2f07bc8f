"""Scenarios with scheduled switching: the feeder reconfigures, the truth follows.

A :class:`Switching` closes and opens named switches (``sw_8_21`` ...) at a time into the
scenario; the classic IEEE33 reconfiguration closes a tie and opens a sectionalising
switch on the loop it forms, so the feeder stays radial. :func:`reconfigure` takes a
trace made by :func:`hil.scenario.make_trace` on the normal topology and recomputes,
from each switching on, the truth on the switched network with the same functions the
scenario uses: the same bus injections (loads and PV), a power-grid-model power flow on
``Network.with_switch``'s copy, :func:`hil.scenario.channel_truth` for every channel,
fresh noise at the channels' accuracies (:mod:`hil.corruption`).

The switch statuses a twin would receive are :func:`status_values`, one column per
switch, in one of four modes:

* ``sent``: the true states, from the switching on;
* ``withheld``: nothing (NaN) from the switching on: the status never arrives;
* ``stuck``: falsified, the old state keeps being reported;
* ``phantom``: falsified the other way: the change is reported, but the truth (built with
  ``phantom=True``) keeps the old topology.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from estimator.pgm import power_flow
from estimator.topology import SwitchSet, TopologyError
from hil import corruption
from hil.errors import ScenarioError
from hil.scenario import PF_TOLERANCE, channel_truth
from hil.trace import STATUS_PREFIX, Trace

__all__ = ["STATUS_MODES", "Switching", "reconfigure", "status_values", "with_statuses"]

STATUS_MODES = ("sent", "withheld", "stuck", "phantom")


@dataclass(frozen=True)
class Switching:
    """Set ``states`` (``{switch: closed}``) at ``at_step`` (a step of the trace)."""

    at_step: int
    states: tuple[tuple[str, bool], ...]

    @classmethod
    def of(cls, at_step: int, **states: bool) -> Switching:
        return cls(int(at_step), tuple(states.items()))


def _topologies(sw: SwitchSet, plan: Sequence[Switching], n: int) -> list[tuple[int, Any]]:
    """``(first step, topology)`` segments of the plan, in time order."""
    segs: list[tuple[int, Any]] = [(0, sw.normal)]
    for s in sorted(plan, key=lambda s: s.at_step):
        if not 0 < s.at_step < n:
            raise ScenarioError(f"switching at step {s.at_step} is outside the trace "
                                f"(1..{n - 1})")
        try:
            topo = sw.with_states(segs[-1][1], dict(s.states))
        except TopologyError as exc:
            raise ScenarioError(f"switching at step {s.at_step}: {exc}") from exc
        segs.append((s.at_step, topo))
    return segs


def reconfigure(trace: Trace, cfg: Any, plan: Sequence[Switching], *, seed: int = 0,
                phantom: bool = False) -> Trace:
    """``trace`` with its truth and measurements recomputed after each switching (see the
    module docstring); ``phantom``: keep the truth (only the statuses will lie)."""
    sw = SwitchSet.of(cfg.network)
    n = trace.n_steps
    segs = _topologies(sw, plan, n)
    meta = {**trace.meta, "switching": [{"step": s.at_step, "states": dict(s.states)}
                                        for s in plan], "phantom": phantom}
    if phantom:
        return replace(trace, meta=meta)
    v = trace.v.copy()
    i_from = trace.i_branch_from.copy()
    s_from, s_to = trace.s_branch_from.copy(), trace.s_branch_to.copy()
    s_inj = trace.s_inj.copy()
    truth = trace.truth.copy()
    measured = trace.measured.copy()
    bad = trace.bad.copy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    chans = cfg.channels
    rel = np.array([c.rel for c in chans])
    abs_ = np.array([c.abs for c in chans])
    kdiv = np.array([c.k for c in chans])
    bounds = [*[s for s, _ in segs], n]
    for (start, topo), stop in zip(segs, bounds[1:], strict=True):
        if start == 0:
            continue
        net = sw.network(topo)
        sl = slice(start, stop)
        # the same injections as the trace (exact at every bus but the slack)
        spec = trace.s_inj[sl]
        try:
            vs = power_flow(net, spec.real, spec.imag, batch=True, tolerance=PF_TOLERANCE)
        except Exception as exc:  # power-grid-model reports divergence as its own errors
            raise ScenarioError(f"power flow after the switching at step {start} failed: "
                                f"{exc}") from exc
        yf, yt = net.branch_admittance()
        ifr = np.asarray((yf @ vs.T).T)
        ito = np.asarray((yt @ vs.T).T)
        v[sl], i_from[sl] = vs, ifr
        s_from[sl] = vs[:, net.branches.from_idx] * np.conj(ifr)
        s_to[sl] = vs[:, net.branches.to_idx] * np.conj(ito)
        s_inj[sl] = vs * np.conj(np.asarray((net.ybus() @ vs.T).T))
        t = channel_truth(replace(cfg, network=net), vs, ifr, ito, s_inj[sl], trace.pv_mw[sl],
                          trace.weather[sl], trace.plant_names)
        sigma = corruption.noise_sigma(t, rel, abs_, kdiv)
        m = corruption.add_noise(t, sigma, rng)
        for j, c in enumerate(chans):
            if c.quantity in corruption.ANGLE_QUANTITIES:
                m[:, j] = np.angle(np.exp(1j * m[:, j]))
        m[trace.missing[sl]] = np.nan
        truth[sl] = t
        elec = np.array([c.electrical for c in chans], bool)
        measured[sl][:, elec] = m[:, elec]
        bad[sl][:, elec] = False  # fresh noise: the gross errors injected before are gone
    return replace(trace, v=v, i_branch_from=i_from, s_branch_from=s_from, s_branch_to=s_to,
                   s_inj=s_inj, truth=truth, measured=measured, bad=bad, meta=meta)


def status_values(cfg: Any, plan: Sequence[Switching], n: int,
                  mode: str = "sent") -> tuple[list[str], np.ndarray]:
    """``(switch names, (n, k) statuses)``: 1 closed, 0 open, NaN not received, for the
    switches the plan touches (see the module docstring for ``mode``)."""
    if mode not in STATUS_MODES:
        raise ScenarioError(f"status mode {mode!r}: use one of {', '.join(STATUS_MODES)}")
    sw = SwitchSet.of(cfg.network)
    segs = _topologies(sw, plan, n)
    names = sorted({name for s in plan for name, _ in s.states})
    cols = [sw.index(name) for name in names]
    out = np.empty((n, len(names)))
    bounds = [*[s for s, _ in segs], n]
    first = segs[0][1]
    for (start, topo), stop in zip(segs, bounds[1:], strict=True):
        shown = topo
        if start > 0 and mode == "stuck":
            shown = first
        out[start:stop] = [float(shown[k]) for k in cols]
        if start > 0 and mode == "withheld":
            out[start:stop] = np.nan
    return names, out


def with_statuses(trace: Trace, cfg: Any, plan: Sequence[Switching], mode: str = "sent",
                  names: Sequence[str] | None = None) -> Trace:
    """``trace`` with the statuses of :func:`status_values` as extras columns
    (``status__<switch>``): the emulator sends them on the status points of those names.
    ``names`` (default: the plan's switches) may add switches the plan leaves alone:
    their status is their state in the normal topology, all along."""
    touched, values = status_values(cfg, plan, trace.n_steps, mode)
    sw = SwitchSet.of(cfg.network)
    extras = dict(trace.extras)
    for name in names if names is not None else touched:
        if name in touched:
            col = values[:, touched.index(name)]
        else:
            try:
                col = np.full(trace.n_steps, float(sw.normal[sw.index(name)]))
            except TopologyError as exc:
                raise ScenarioError(str(exc)) from exc
        extras[STATUS_PREFIX + name] = col
    return replace(trace, extras=extras)
