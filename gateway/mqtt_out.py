"""The twin's outputs on MQTT, for SCADA/ADMS-side tools that subscribe instead of polling.

With ``[mqtt] publish = "gridtwin/ieee33"`` the gateway publishes, at most once per
``publish_interval_s`` (default 1 s; estimates come at the frame rate) and retained (a
new subscriber gets the latest at once), JSON on:

* ``<prefix>/state``: seq, source time, bus ids, ``vm_pu``, ``va_rad``, chi², its
  threshold, converged;
* ``<prefix>/flows``: per branch (``from-to`` names), P and Q at the from end (MW,
  MVAr), ``S_from = V_f·conj(Yf·V)·S_base``;
* ``<prefix>/residuals``: per electrical channel, the normalised residual
  ``(z - h(x)) / σ`` of the cleaned snapshot the estimate was made from (NaN-free: a
  channel left out has ``null``);
* ``<prefix>/flags``: the channels whose cleaned value carries a quality flag, by name.

:class:`OutputBuilder` is sans-IO (state and snapshot in, ``(topic, bytes)`` out);
:class:`StatePublisher` owns the paho client.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.se_model import measurement_model
from gateway.sensors_config import MqttSettings
from gateway.snapshot import Flag
from gateway.transports.mqtt import make_client

DEFAULT_INTERVAL_S = 1.0


def _finite(a: np.ndarray, nd: int = 6) -> list[float | None]:
    return [round(float(x), nd) if math.isfinite(x) else None for x in a]


class OutputBuilder:
    """The output messages of one estimate (sans-IO)."""

    def __init__(self, cfg: Any, prefix: str, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.cfg = cfg
        self.prefix = prefix.rstrip("/")
        self.interval_s = interval_s
        net = cfg.network
        self.model = measurement_model(cfg)
        self.yf, _ = net.branch_admittance()
        self.from_idx = np.asarray(net.branches.from_idx)
        self.bus_ids = [int(b) for b in net.bus_ids]
        self.branches = list(net.branches.names)
        self.names = [c.name for c in cfg.channels]
        self.last = -math.inf

    def due(self, now: float) -> bool:
        return now - self.last >= self.interval_s

    def messages(self, st: Any, snapshot: Any | None, now: float) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` for estimate ``st`` (a StateMsg) and the cleaned
        snapshot it was made from (None: no residuals/flags)."""
        self.last = now
        v = np.asarray(st.vm) * np.exp(1j * np.asarray(st.va))
        base = self.cfg.network.base_mva
        head = {"twin": self.cfg.name, "seq": int(st.seq), "time": float(st.source_time)}
        out = [(f"{self.prefix}/state", {**head, "bus": self.bus_ids,
                                         "vm_pu": _finite(st.vm), "va_rad": _finite(st.va),
                                         "chi2": _finite(np.array([st.chi2]))[0],
                                         "chi2_threshold": _finite(
                                             np.array([st.chi2_threshold]))[0],
                                         "converged": bool(st.converged)})]
        s_from = v[self.from_idx] * np.conj(self.yf @ v) * base
        out.append((f"{self.prefix}/flows", {**head, "branch": self.branches,
                                             "p_mw": _finite(s_from.real),
                                             "q_mvar": _finite(s_from.imag)}))
        if snapshot is not None:
            out += self._snapshot(head, v, snapshot)
        return [(t, json.dumps(p, separators=(",", ":")).encode()) for t, p in out]

    def _snapshot(self, head: dict[str, Any], v: np.ndarray, snap: Any
                  ) -> list[tuple[str, dict[str, Any]]]:
        m = self.model
        z = m.values_to_pu(np.asarray(snap.values, float))
        r = m.residual(z, v) / m.sigma(z)
        real = np.asarray(m.channel) >= 0
        chans = np.asarray(m.channel)[real]
        res = {self.names[c]: x for c, x in zip(chans, _finite(r[real], 3), strict=True)}
        flags = {}
        for i in np.flatnonzero(np.asarray(snap.flags)):
            f = Flag(int(snap.flags[i]))
            flags[self.names[i]] = [b.name for b in Flag if b and b in f]
        return [(f"{self.prefix}/residuals", {**head, "normalised": res}),
                (f"{self.prefix}/flags", {**head, "flags": flags})]


class StatePublisher:
    """Publishes :class:`OutputBuilder`'s messages through a paho client (QoS 0,
    retained); reconnects by itself."""

    def __init__(self, builder: OutputBuilder, client: Any, clock: Callable[[], float]
                 ) -> None:
        self.builder = builder
        self.client = client
        self.clock = clock
        self.published = 0
        self._snaps: dict[int, Any] = {}

    @classmethod
    async def open(cls, m: MqttSettings, cfg: Any, *, clock: Callable[[], float]
                   ) -> StatePublisher:
        b = OutputBuilder(cfg, m.publish, m.publish_interval_s)
        c = make_client(m, f"gridtwin-out-{cfg.name}-{os.getpid()}")
        c.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        c.loop_start()
        return cls(b, c, clock)

    def snapshot(self, snap: Any) -> None:
        """A cleaned snapshot handed to the estimator (kept for its estimate)."""
        if len(self._snaps) > 64:
            self._snaps.clear()
        self._snaps[int(snap.seq)] = snap

    def state(self, st: Any) -> None:
        """An estimate came back: publish when the interval has passed."""
        snap = self._snaps.pop(int(st.seq), None)
        now = self.clock()
        if not self.builder.due(now):
            return
        for topic, payload in self.builder.messages(st, snap, now):
            self.client.publish(topic, payload, qos=0, retain=True)
            self.published += 1

    async def close(self) -> None:
        c = self.client
        c.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, c.loop_stop)
