"""``gridtwin bench`` figures of the emulator.

``emulator.jitter_1khz``: send-time error p99 (µs) of the emulator's absolute schedule at
1 kHz — the bundled ieee33 config's three GTNET-SKT UDP streams, every stream every step,
sent to a loopback sink — over 10 s (``quick``: 2 s). The error of a step is the time its
first frame is handed to ``sendto`` minus its slot ``t0 + k / 1000``. Target: <= 200 µs.

The value is measured with the pacing thread under SCHED_FIFO (``gridtwin emulate
--realtime``) when the OS allows it; the peer is the same run with the default policy,
which depends on how busy the machine is (the thread sleeps until a spin margin before
the slot, then spins, and a busy scheduler wakes it late). The margin adapts to the
measured wake-up overshoot of ``time.sleep`` (``hil.emulator.SpinMargin``: its 0.99
quantile + 20 µs, between 30 and 500 µs), so the figure is that of the light pacer the
demo runs. Without the privilege the value is the default-policy figure and there is no
peer.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np

from gateway.bench import BenchResult
from gateway.config import TwinConfig, load_config
from hil.trace import Trace


def synthetic_trace(cfg: TwinConfig, steps: int, *, seed: int = 0) -> Trace:
    """A trace of the right shape with random values (pacing does not look at values)."""
    rng = np.random.default_rng(seed)
    m = len(cfg.channels)
    net = cfg.network
    n_pl = len(cfg.plants)
    truth = rng.normal(1.0, 0.1, (steps, m))
    zv = np.ones((steps, net.n_bus), complex)
    zb = np.zeros((steps, net.n_branch), complex)
    return Trace(time=1.0e9 + np.arange(steps, dtype=float), measured=truth.copy(),
                 truth=truth, bad=np.zeros((steps, m), bool),
                 missing=np.zeros((steps, m), bool), v=zv, i_branch_from=zb,
                 s_branch_from=zb, s_branch_to=zb, s_inj=np.zeros_like(zv),
                 pv_mw=np.zeros((steps, n_pl)), weather=np.zeros((steps, n_pl, 6)),
                 channel_names=[ch.name for ch in cfg.channels],
                 plant_names=[p.name for p in cfg.plants], meta={})


def jitter_p99_us(seconds: float, rate_hz: float = 1000.0, *, realtime: bool = False
                  ) -> tuple[float, bool]:
    """(send-time error p99 in µs, whether SCHED_FIFO was in force)."""
    from hil.emulator import Emulator, EmulatorRunner

    cfg = load_config("ieee33")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    try:
        streams = [dataclasses.replace(s, url=f"udp://127.0.0.1:{port}", rate_hz=rate_hz)
                   if s.enabled else s for s in cfg.streams]
        cfg = dataclasses.replace(cfg, streams=streams)
        em = Emulator(cfg, synthetic_trace(cfg, 1000), rate_hz=rate_hz, loop=True)
        summary = EmulatorRunner(em, seconds=seconds, realtime=realtime).run()
        return float(summary.pacing_us["p99"]), summary.realtime
    finally:
        sink.close()


def benchmarks(quick: bool) -> list[BenchResult]:
    seconds = 2.0 if quick else 10.0
    rt, active = jitter_p99_us(seconds, realtime=True)
    if not active:  # SCHED_FIFO not allowed here: the default policy is the figure
        return [BenchResult("emulator.jitter_1khz", rt, "us")]
    other, _ = jitter_p99_us(seconds, realtime=False)
    return [BenchResult("emulator.jitter_1khz", rt, "us",
                        peer="same run, default scheduling (SCHED_OTHER)", peer_value=other)]
