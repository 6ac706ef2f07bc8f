"""Readiness of the running twin, for ``/healthz`` (a load balancer's or systemd's probe).

Ready means the twin is doing its job now, not that the process is alive: every enabled
stream delivered a frame within ``max(1 s, 10 periods)``, an estimator process is up
(when the twin estimates), the newest estimate is younger than ``max(2 s, 50 periods)``,
and the historian (when there is one) reaches its database. Each failed condition is one
line naming what and for how long; none means ready.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["not_ready"]


def not_ready(now: float, *, streams: Mapping[str, Any], rates: Mapping[str, float],
              estimating: bool, estimator_up: bool, last_state_at: float | None,
              historian: Any | None) -> list[str]:
    """The reasons the twin is not ready (empty: ready)."""
    why: list[str] = []
    for name, st in streams.items():
        quiet = max(1.0, 10.0 / max(rates.get(name, 1.0), 1e-9))
        last = st.last_arrival
        if not math.isfinite(last):
            why.append(f"stream {name}: no frame received yet")
        elif now - last > quiet:
            why.append(f"stream {name}: silent for {now - last:.1f} s")
    if estimating:
        period = 1.0 / max(max(rates.values(), default=1.0), 1e-9)
        if not estimator_up:
            why.append("estimator: no estimator process running")
        if last_state_at is None:
            why.append("estimator: no estimate yet")
        elif now - last_state_at > max(2.0, 50 * period):
            why.append(f"estimator: newest estimate is {now - last_state_at:.1f} s old")
    if historian is not None and not historian.connected:
        why.append(f"historian: database not reachable ({historian.spool_records} rows "
                   "spooled)")
    return why
