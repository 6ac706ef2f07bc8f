"""The wire between the gateway and the estimator process (both ends use this module).

One AF_UNIX ``SOCK_SEQPACKET`` socket pair: reliable, ordered, message boundaries kept,
bounded by the socket buffer. No pickling: fixed little-endian layouts.

gateway → estimator, ``SNAP``: ``send_time``, then the PV pseudo-measurements
(``pv_mw``, ``pv_sigma_mw``, one per plant in config order), then the topology to
estimate on (one byte per switchable branch of :class:`estimator.topology.SwitchSet`, 1
closed; none: the config's network), then :meth:`Snapshot.to_bytes`.

estimator → gateway: ``READY`` (n_bus, pid) once the model is built; ``STATE`` (the
estimate: times, χ², iterations, vm pu and va rad per bus in network order, solve time,
then the label of the topology it was estimated on, UTF-8, to the end of the message);
``FAIL`` (seq and a reason: not observable, did not converge, bad snapshot).

This module is the one definition of the layouts: the supervisor
(:mod:`gateway.supervisor`) and the worker (:mod:`gateway.estimator_worker`) both encode
and decode through it, so the two ends cannot drift apart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from gateway.errors import GatewayError
from gateway.snapshot import Snapshot

SNAP, READY, STATE, FAIL, STOP = b"S", b"R", b"T", b"F", b"Q"
_SNAP_HEAD = struct.Struct("<cIdI")  # kind, n_pv, send_time, n_topology
_READY = struct.Struct("<cIId")  # kind, n_bus, pid, ready_time
_STATE_HEAD = struct.Struct("<cqddddddddddIIB")
# kind, seq, source_time, arrival_time, published_time, send_time, recv_time, done_time,
# chi2, chi2_threshold, t_build_s, t_solve_s, iterations, n_bus, converged
_FAIL_HEAD = struct.Struct("<cqdd")  # kind, seq, send_time, recv_time (+ utf-8 reason)
MAX_MESSAGE = 4 * 1024 * 1024


class HandoffError(GatewayError):
    """A malformed message between the gateway and the estimator process."""


def encode_snapshot(snap: Snapshot, pv_mw: np.ndarray, pv_sigma: np.ndarray,
                    send_time: float) -> bytes:
    n = int(pv_mw.size)
    topo = b"" if snap.topology is None else bytes(bytearray(snap.topology))
    return b"".join((_SNAP_HEAD.pack(SNAP, n, send_time, len(topo)),
                     np.ascontiguousarray(pv_mw, "<f8").tobytes(),
                     np.ascontiguousarray(pv_sigma, "<f8").tobytes(), topo,
                     snap.to_bytes()))


def stamp_send_time(msg: bytearray, send_time: float) -> None:
    """Write ``send_time`` into an encoded snapshot message (just before sending it)."""
    struct.pack_into("<d", msg, 5, send_time)  # after kind (1 byte) and n_pv (4 bytes)


def decode_snapshot(msg: bytes) -> tuple[Snapshot, np.ndarray, np.ndarray, float]:
    if len(msg) < _SNAP_HEAD.size or msg[:1] != SNAP:
        raise HandoffError(f"not a snapshot message ({len(msg)} bytes)")
    _, n, send_time, n_topo = _SNAP_HEAD.unpack_from(msg)
    off = _SNAP_HEAD.size
    if len(msg) < off + 16 * n + n_topo:
        raise HandoffError(f"snapshot message of {len(msg)} bytes for {n} plants and "
                           f"{n_topo} switches")
    pv = np.frombuffer(msg, "<f8", n, off).copy()
    sig = np.frombuffer(msg, "<f8", n, off + 8 * n).copy()
    off += 16 * n
    snap = Snapshot.from_bytes(memoryview(msg)[off + n_topo:])
    if n_topo:
        snap.topology = tuple(b != 0 for b in msg[off:off + n_topo])
    return snap, pv, sig, send_time


def encode_ready(n_bus: int, pid: int, t: float) -> bytes:
    return _READY.pack(READY, n_bus, pid, t)


@dataclass
class StateMsg:
    seq: int
    source_time: float
    arrival_time: float
    published_time: float
    send_time: float
    recv_time: float
    done_time: float
    chi2: float
    chi2_threshold: float
    t_build_s: float
    t_solve_s: float
    iterations: int
    converged: bool
    vm: np.ndarray
    va: np.ndarray
    #: label of the switch states the estimate used (gateway.topology; "normal": the
    #: config's network)
    topology: str = "normal"

    def encode(self) -> bytes:
        return encode_state(self.seq, (self.source_time, self.arrival_time,
                                       self.published_time, self.send_time, self.recv_time,
                                       self.done_time),
                            self.chi2, self.chi2_threshold, self.t_build_s, self.t_solve_s,
                            self.iterations, self.converged, self.vm, self.va,
                            self.topology)


def encode_state(seq: int, times: tuple[float, float, float, float, float, float],
                 chi2: float, chi2_threshold: float, t_build_s: float, t_solve_s: float,
                 iterations: int, converged: bool, vm: np.ndarray, va: np.ndarray,
                 topology: str = "normal") -> bytes:
    """A ``STATE`` message without building a :class:`StateMsg` (the worker's hot path).

    ``times``: source, arrival, published, send, recv and done time, in that order.
    """
    n = int(vm.size)
    return b"".join((
        _STATE_HEAD.pack(STATE, seq, *times, chi2, chi2_threshold, t_build_s, t_solve_s,
                         iterations, n, int(converged)),
        np.ascontiguousarray(vm, "<f8").tobytes(),
        np.ascontiguousarray(va, "<f8").tobytes(), topology.encode("utf-8")))


@dataclass
class FailMsg:
    seq: int
    send_time: float
    recv_time: float
    reason: str

    def encode(self) -> bytes:
        return _FAIL_HEAD.pack(FAIL, self.seq, self.send_time, self.recv_time) + \
            self.reason.encode("utf-8", "replace")[:4000]


@dataclass
class ReadyMsg:
    n_bus: int
    pid: int
    time: float


def decode_reply(msg: bytes) -> StateMsg | FailMsg | ReadyMsg:
    kind = msg[:1]
    if kind == STATE:
        if len(msg) < _STATE_HEAD.size:
            raise HandoffError("short state message")
        (_, seq, src, arr, pub, snd, rcv, done, chi2, thr, tb, ts, it, n,
         conv) = _STATE_HEAD.unpack_from(msg)
        off = _STATE_HEAD.size
        if len(msg) < off + 16 * n:
            raise HandoffError(f"state message of {len(msg)} bytes for {n} buses")
        vm = np.frombuffer(msg, "<f8", n, off).copy()
        va = np.frombuffer(msg, "<f8", n, off + 8 * n).copy()
        label = msg[off + 16 * n:].decode("utf-8", "replace") or "normal"
        return StateMsg(seq, src, arr, pub, snd, rcv, done, chi2, thr, tb, ts, it,
                        bool(conv), vm, va, label)
    if kind == FAIL:
        seq, snd, rcv = _FAIL_HEAD.unpack_from(msg)[1:]
        return FailMsg(seq, snd, rcv, msg[_FAIL_HEAD.size:].decode("utf-8", "replace"))
    if kind == READY:
        _, n, pid, t = _READY.unpack_from(msg)
        return ReadyMsg(n, pid, t)
    raise HandoffError(f"unknown message kind {kind!r}")
