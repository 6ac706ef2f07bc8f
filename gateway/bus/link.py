"""The gateway's side of the bus: what the runner calls, in the runner's own terms.

:class:`BusLink` wraps an :class:`~gateway.bus.edge.EdgeBus` for one twin:

* every cleaned snapshot handed on (``snapshot``) is published; with ``[bus] estimate =
  "local"`` the gateway's own states are published too (``state``), so a sink stores them
  beside every other feeder's; with ``"workers"`` the states come back from the fleet's
  workers and reach the runner's ``on_state`` as if from its own estimator (same
  latency bookkeeping, deadline counted against the config's);
* events and, every :data:`HEALTH_S`, the streams' health are published as JSON.

Publishing never blocks: the edge buffers (bounded) and spools while the bus is away.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.bus import wire
from gateway.bus.conn import BusOptions
from gateway.bus.edge import EdgeBus
from gateway.config import TwinConfig
from gateway.handoff import StateMsg

__all__ = ["HEALTH_S", "BusLink", "bus_options"]

HEALTH_S = 5.0


def bus_options(cfg: TwinConfig, url: str | None = None) -> BusOptions:
    """Connection options from ``[bus]`` (``url`` overrides it, e.g. ``--bus``)."""
    b = cfg.bus
    return BusOptions(url=url or b.url, user=b.user,
                      password=b.password or os.environ.get("GRIDTWIN_BUS_PASSWORD"),
                      token=b.token, creds=b.creds, seed=b.nkey, tls_ca=b.tls_ca,
                      tls_cert=b.tls_cert, tls_key=b.tls_key, name=f"gridtwin-edge-{cfg.name}",
                      replicas=b.replicas)


class BusLink:
    def __init__(self, cfg: TwinConfig, opts: BusOptions, *, clock: Callable[[], float],
                 on_state: Callable[[StateMsg, float, bool], None] | None) -> None:
        self.twin = cfg.name
        self.workers = on_state is not None
        self.deadline_s = cfg.estimator.deadline_s
        self._on_state = on_state
        # the edges of one process share their bus connection (one write per loop turn
        # for all of them)
        self.edge = EdgeBus(cfg.name, opts, buffer=cfg.bus.buffer, clock=clock,
                            on_state=self._state if on_state is not None else None,
                            shared=True)
        self.clock = clock
        self._events = 0
        self._last_health = -math.inf
        self.rtt_s: list[float] = []  # publish at the edge -> state back (workers mode)
        #: every snapshot's first frame at the edge -> the first state back for it or a
        #: newer snapshot (workers mode): the latency of superseded snapshots included
        self.fresh_s: deque[float] = deque(maxlen=100_000)
        self._waiting: deque[tuple[int, float]] = deque(maxlen=100_000)

    async def start(self) -> None:
        await self.edge.start()

    async def close(self) -> None:
        await self.edge.flush(2.0)
        await self.edge.close()

    # ------------------------------------------------------------------ outgoing
    def snapshot(self, snap: Any, pv_mw: np.ndarray, pv_sigma_mw: np.ndarray) -> None:
        if self.workers:
            self._waiting.append((snap.seq, snap.arrival_time))
        self.edge.offer_snapshot(snap.seq, snap.source_time, snap.arrival_time, snap.values,
                                 snap.flags, pv_mw, pv_sigma_mw,
                                 getattr(snap, "topology", None))

    def state(self, st: StateMsg) -> None:
        """A state of the gateway's own estimator (``estimate = "local"``)."""
        msg = wire.encode_state(wire.BusState(
            self.edge.run, st.seq, st.source_time, st.arrival_time, st.published_time,
            st.done_time, st.chi2, st.chi2_threshold, st.t_solve_s, st.iterations,
            st.converged, st.vm, st.va, st.topology))
        self.edge.offer(wire.STATE, st.seq, msg)

    def on_estimate(self, st: StateMsg, received: float) -> None:
        """The runner's hook for the gateway's own states (``estimate = "local"``)."""
        self.state(st)

    def event(self, time: float, kind: str, source: str, detail: dict[str, Any]) -> None:
        self._events += 1
        self.edge.offer_event(self._events, {"time": time, "kind": kind, "source": source,
                                             "detail": detail, "run": self.edge.run})

    def health(self, now: float, streams: list[dict[str, Any]]) -> None:
        """The streams' health, at most every :data:`HEALTH_S`."""
        if now - self._last_health < HEALTH_S:
            return
        self._last_health = now
        self.edge.offer_health(int(now), {"time": now, "run": self.edge.run,
                                          "streams": streams})

    # ------------------------------------------------------------------ incoming
    def _state(self, st: wire.BusState, rtt: float) -> None:
        if st.run != self.edge.run or self._on_state is None:
            return  # a state of an earlier run of this twin (a redelivery): not ours now
        self.rtt_s.append(rtt)
        if len(self.rtt_s) > 100_000:
            del self.rtt_s[:50_000]
        received = self.clock()
        waiting = self._waiting
        while waiting and waiting[0][0] <= st.seq:  # answered: by this state or a newer
            self.fresh_s.append(received - waiting.popleft()[1])
        msg = StateMsg(st.seq, st.source_time, st.arrival_time, st.publish_time,
                       st.publish_time, st.done_time - st.t_solve_s, st.done_time, st.chi2,
                       st.chi2_threshold, 0.0, st.t_solve_s, st.iterations, st.converged,
                       st.vm_pu, st.va_rad, st.topology)
        self._on_state(msg, received, received - st.publish_time <= self.deadline_s)

    @property
    def unanswered(self) -> int:
        """Snapshots published with no state back yet for them or a newer one."""
        return len(self._waiting)

    def stats(self) -> dict[str, Any]:
        s = self.edge.stats
        rtt = np.asarray(self.rtt_s[-10_000:]) * 1e3
        fresh = np.asarray(self.fresh_s) * 1e3
        return {"published": s.published, "dropped": s.dropped, "pending": self.edge.pending,
                "duplicates": s.duplicates, "errors": s.errors, "connected": s.connected,
                "reconnects": s.reconnects, "states_back": s.states,
                "rtt_ms": {"p50": float(np.percentile(rtt, 50)) if rtt.size else None,
                           "p99": float(np.percentile(rtt, 99)) if rtt.size else None},
                "fresh_ms": {"p50": float(np.percentile(fresh, 50)) if fresh.size else None,
                             "p99": float(np.percentile(fresh, 99)) if fresh.size else None}}
