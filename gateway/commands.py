"""Commands back to the simulator: IEEE 1547-2018 volt-watt curtailment over GTNET-SKT.

Opt-in (``[commands] enabled = true``); nothing is sent otherwise. The policy is the
volt-watt function of IEEE 1547-2018, sec. 5.4.2 (Table 10 gives the defaults used
here): each controlled plant's active power is capped at a fraction of its rating
taken from the estimated voltage at its feeder bus (the point of common coupling),

    cap(V) = 1                                   for V <= V1
    cap(V) = 1 - (1 - P2) (V - V1) / (V2 - V1)   for V1 < V < V2
    cap(V) = P2                                  for V >= V2

A decision goes out as one GTNET-SKT frame (no header: what an RSCAD GTNET-SKT receive
component expects) with the ``[commands] points`` in list order: ``cmd_seq`` (int32, the
low 32 bits of the sequence number of the snapshot the decision comes from: the
aligner's time slot), ``<plant>_curtail`` (the cap as a fraction of rating) and
``<plant>_p_max_mw`` (cap x rating); NaN leaves a plant the policy does not control as
it is. ``hil.closedloop`` is the receiving side.

Rate limit: at most one command per ``min_interval_s``, and only when a cap moved by
more than ``deadband`` since the last one sent, or ``refresh_s`` has passed (a simulator
that restarted gets the current caps again). Until ``min_interval_s`` has passed a state
costs one comparison: the controller sits on the gateway's hot path.

:class:`CommandController` is sans-IO (state, seq and ``now`` in, a frame or None out);
:class:`CommandSender` owns the UDP socket and counts send errors instead of raising
them into the pipeline.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import COMMAND_SEQ, CommandsConfig, TwinConfig, url_parts
from gateway.config import command_point_plant as point_plant
from gateway.errors import TransportError


def volt_watt(vm: np.ndarray, *, v1: float, v2: float, p2: float) -> np.ndarray:
    """IEEE 1547-2018 volt-watt output cap (fraction of rating) at voltages ``vm`` (pu)."""
    # cap = 1 - (1 - P2) * clip((V - V1) / (V2 - V1), 0, 1)
    x = np.clip((np.asarray(vm, float) - v1) / (v2 - v1), 0.0, 1.0)
    return 1.0 - (1.0 - p2) * x


@dataclass(frozen=True)
class Command:
    """One decision: the frame and what it says (for the events table)."""

    seq: int
    time: float
    reason: str  # "first", "change" or "refresh"
    plants: tuple[str, ...]  # controlled plants, in config order
    caps: tuple[float, ...]  # output cap per controlled plant, fraction of rating
    vm_pu: tuple[float, ...]  # estimated voltage at each controlled plant's bus
    payload: bytes

    def detail(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason,
                "caps": dict(zip(self.plants, self.caps, strict=True)),
                "vm_pu": dict(zip(self.plants, self.vm_pu, strict=True))}


class CommandController:
    """Volt-watt decisions from state estimates, rate-limited (sans-IO; see module doc)."""

    def __init__(self, cfg: TwinConfig) -> None:
        c: CommandsConfig = cfg.commands
        self.conf = c
        names = list(c.plants) or sorted(
            {pp[0] for p in c.points if (pp := point_plant(p.name)) is not None},
            key=[p.name for p in cfg.plants].index)
        plants = [cfg.plant(n) for n in names]
        self.plants = tuple(names)
        self._bus = np.array([cfg.network.index_of(p.bus) for p in plants], np.intp)
        rating = {p.name: p.rating_mw for p in cfg.plants}
        ctl = {n: k for k, n in enumerate(names)}
        self.codec = GtnetSktCodec([p.type for p in c.points], header=False)
        self._seq_at = [j for j, p in enumerate(c.points) if p.name == COMMAND_SEQ]
        # frame value j = caps[plant k] * factor (1 for curtail, rating for p_max_mw)
        pos, src, factor = [], [], []
        for j, p in enumerate(c.points):
            pp = point_plant(p.name)
            if pp is not None and pp[0] in ctl:
                pos.append(j)
                src.append(ctl[pp[0]])
                factor.append(1.0 if pp[1] == "curtail" else rating[pp[0]])
        self._pos = np.array(pos, np.intp)
        self._src = np.array(src, np.intp)
        self._factor = np.array(factor, float)
        self._values = np.full(len(c.points), np.nan)  # uncontrolled points stay NaN
        self._bus_list = self._bus.tolist()
        self._inv_span = 1.0 / (c.v2_pu - c.v1_pu)
        self.last: Command | None = None
        self._last_caps: list[float] | None = None
        self._last_time = -math.inf
        self._quiet_until = -math.inf  # no decision before this (min_interval_s)

    def caps(self, vm: np.ndarray) -> np.ndarray:
        """Volt-watt cap of every controlled plant for bus voltages ``vm`` (pu)."""
        c = self.conf
        return volt_watt(vm[self._bus], v1=c.v1_pu, v2=c.v2_pu, p2=c.p2)

    def update(self, vm: np.ndarray, seq: int, now: float) -> Command | None:
        """The command to send for the estimate ``vm`` of snapshot ``seq``, or None."""
        if self._last_time <= now < self._quiet_until:
            return None  # the hot path: one comparison (a clock that steps back re-arms)
        # volt_watt() per plant in plain Python: a few plants cost ~1 µs this way, numpy's
        # per-call overhead ~10 µs, and this runs for every state once min_interval_s is over
        c = self.conf
        v1, inv, drop, p2, band = c.v1_pu, self._inv_span, 1.0 - c.p2, c.p2, c.deadband
        item = vm.item
        v = [item(b) for b in self._bus_list]
        caps: list[float] = []
        first = self._last_caps is None
        last = self._last_caps or []
        moved = first
        for k, vb in enumerate(v):
            x = (vb - v1) * inv
            if not -math.inf < x < math.inf:
                return None  # no decision from an incomplete estimate (NaN, inf)
            cap = 1.0 if x <= 0.0 else p2 if x >= 1.0 else 1.0 - drop * x
            caps.append(cap)
            if not moved and abs(cap - last[k]) > band:
                moved = True
        if first:
            reason = "first"
        elif moved:
            reason = "change"
        elif now - self._last_time >= c.refresh_s or now < self._last_time:
            reason = "refresh"
        else:
            return None
        vals = self._values
        vals[self._pos] = np.asarray(caps)[self._src] * self._factor
        # the int32 word carries the snapshot's uint32 sequence number bit for bit
        for j in self._seq_at:
            vals[j] = ((seq + 2**31) % 2**32) - 2**31
        cmd = Command(seq, now, reason, self.plants, tuple(caps), tuple(v),
                      self.codec.build(vals))
        self.last = cmd
        self._last_caps = caps
        self._last_time = now
        self._quiet_until = now + c.min_interval_s
        return cmd

    def unsent(self) -> None:
        """The last command did not go out: the next decision sends whatever the caps
        are (still no sooner than ``min_interval_s``)."""
        self._last_caps = None


class CommandSender:
    """A non-blocking UDP socket connected to ``[commands] url``; failures are counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.errors = 0
        self.last_error = ""
        self.sock: socket.socket | None = None

    def open(self) -> None:
        _, host, port = url_parts(self.url)
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise TransportError(f"commands.url {self.url}: {exc}") from exc
        try:
            sock.setblocking(False)
            sock.connect(addr)  # a default destination only: UDP sends no packet here
        except OSError as exc:
            sock.close()
            raise TransportError(f"commands.url {self.url}: {exc}") from exc
        self.sock = sock

    def send(self, data: bytes) -> bool:
        """One datagram; False (and counted) when it could not be sent or is closed."""
        if self.sock is None:
            return False
        try:
            self.sock.send(data)
        except OSError as exc:  # refused (ICMP), buffer full, no route
            self.errors += 1
            self.last_error = str(exc)
            return False
        self.sent += 1
        return True

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self.sock is None:
            return None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class CommandLink:
    """Controller and sender together: what the gateway calls per state.

    ``on_sent(command)`` runs for every command that went out (the gateway records it as
    an event), ``on_error(command, reason)`` for every one that did not.
    """

    def __init__(self, cfg: TwinConfig, *, url: str | None = None,
                 on_sent: Callable[[Command], None] | None = None,
                 on_error: Callable[[Command, str], None] | None = None) -> None:
        self.controller = CommandController(cfg)
        self.sender = CommandSender(url or cfg.commands.url)
        self.on_sent = on_sent
        self.on_error = on_error

    def open(self) -> CommandLink:
        self.sender.open()
        return self

    def on_estimate(self, st: Any, received: float) -> None:
        """The runner's hook: a converged estimate may lead to a decision (one comparison
        until a decision is due)."""
        if st.converged:
            self.on_state(st.vm, st.seq, received)

    def on_state(self, vm: np.ndarray, seq: int, now: float) -> Command | None:
        """Decide, and send when due; returns the command when one went out."""
        cmd = self.controller.update(vm, seq, now)
        if cmd is None:
            return None
        if not self.sender.send(cmd.payload):
            self.controller.unsent()
            if self.on_error is not None and self.sender.sock is not None:
                self.on_error(cmd, self.sender.last_error)
            return None
        if self.on_sent is not None:
            self.on_sent(cmd)
        return cmd

    @property
    def sent(self) -> int:
        return self.sender.sent

    @property
    def errors(self) -> int:
        return self.sender.errors

    def close(self) -> None:
        self.sender.close()


__all__ = ["Command", "CommandController", "CommandLink", "CommandSender", "point_plant",
           "volt_watt"]
