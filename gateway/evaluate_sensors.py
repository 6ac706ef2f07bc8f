"""What the edge sensors are worth: the IEEE33 estimate with and without micro sensors.

Three configurations of the bundled ieee33 twin, estimated over the same scenario trace
with the live estimator (:func:`gateway.estimator_worker.solver_for`, ``linear``):

* ``full_scada``: the bundled config (SCADA P/Q on every feeder branch);
* ``no_lateral_flows``: the lateral SCADA flows removed (P/Q kept on the main feeder
  1-2 ... 17-18 only), as on a feeder whose laterals are not metered; without anything
  else the laterals are not observable, so the lateral buses without an injection meter
  get what an operator has there: load pseudo-measurements, the case's nominal load at
  :data:`PSEUDO_ACCURACY` (the planning figure, not the trace's actual load);
* ``micro_sensors``: no lateral flows, plus the emulator's electrical micro sensors
  (:func:`hil.mqttsensors.ieee33_fleet`: line sensors at the head of the laterals and on
  two lateral sections, pole-top transformer meters) delivered as they are live: the
  fleet's reports (report-by-exception, dropouts, skew, duplicates, a device that dies
  and is reborn) decoded by the gateway's own ingest into the sensor board, whose
  :meth:`~gateway.sensors.SensorBoard.fill` gives each snapshot the latest value with its
  STALE/MISSING flags, exactly as the pipeline does.

Stream channels are the trace's noise-free channel values plus Gaussian noise at each
channel's stated accuracy (seeded); the PV pseudo-measurements are the true output plus
the forecaster's 4.1 %-of-rating noise. Reported per case: |V| MAPE (%) and angle RMSE
(rad) against the trace's true voltages, and how many snapshots were estimated (a
configuration the estimator cannot observe scores ``None``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from importlib import resources
from typing import Any

import numpy as np

from estimator.errors import EstimatorError
from gateway.config import TwinConfig, parse_config
from gateway.estimator_worker import solver_for
from gateway.sensor_ingest import SensorIngest
from gateway.sensors_config import sensors_of
from gateway.snapshot import Flag
from hil.mqttsensors import SensorFleet, config_text, ieee33_fleet
from hil.scenario import channel_truth

MAIN_FEEDER = tuple(f"{b}-{b + 1}" for b in range(1, 18))
PV_SIGMA_FRAC = 0.041
PSEUDO_ACCURACY = "50%"  # a nominal load as a stand-in for the actual one (max error)
PSEUDO_METER = "pseudo"


def _pseudo_meter(cfg: TwinConfig) -> str:
    """A ``[[meters]]`` entry with load pseudo-measurements at every lateral bus that has
    no injection meter and no flow meter on its own branch."""
    net = cfg.network
    metered = {c.bus for c in cfg.channels if c.quantity in ("pinj", "qinj")}
    main = {b for br in MAIN_FEEDER for b in map(int, br.split("-"))}
    feeder = {int(b) for b in net.bus_ids} - {p.node for p in cfg.plants}
    buses = sorted(feeder - main - {b for b in metered if b is not None})
    return ("\n[[meters]]\n"
            f'id = "{PSEUDO_METER}"\nkind = "scada"\nbuses = {buses}\n'
            'quantities = ["pinj", "qinj"]\n'
            f'accuracy = {{ pinj = "{PSEUDO_ACCURACY}", qinj = "{PSEUDO_ACCURACY}" }}\n'
            "floor = { pinj = 0.005, qinj = 0.005 }\n")


def case_texts() -> dict[str, str]:
    """The TOML text of each case (the sensor case with its [mqtt]/[[sensors]] lines)."""
    base = (resources.files("gateway") / "configs" / "ieee33.toml").read_text("utf-8")
    main = ", ".join(f'"{b}"' for b in MAIN_FEEDER)
    cut, n = re.subn(r'(id = "flow"\s*\nkind = "scada"\s*\n)branches = "all"',
                     rf"\g<1>branches = [{main}]", base)
    if n != 1:
        raise ValueError("the bundled ieee33 config no longer has the flow meter on all "
                         "branches")
    net = parse_config(base).network
    fleet = [s for s in ieee33_fleet(net) if s.kind != "weather_station"]
    sensors = cut + config_text(fleet, "mqtt://127.0.0.1:1883/#")
    pseudo = cut + _pseudo_meter(parse_config(cut))
    return {"full_scada": base, "no_lateral_flows": pseudo, "micro_sensors": sensors}


def _truth(cfg: TwinConfig, trace: Any) -> np.ndarray:
    """Noise-free channel values of ``cfg`` over the whole trace (T, m)."""
    _, yt = cfg.network.branch_admittance()
    v = np.asarray(trace.v)
    i_to = (yt @ v.T).T
    return channel_truth(cfg, v, np.asarray(trace.i_branch_from), np.asarray(i_to),
                         np.asarray(trace.s_inj), np.asarray(trace.pv_mw),
                         np.asarray(trace.weather), list(trace.plant_names))


def _nominal(cfg: TwinConfig) -> np.ndarray:
    """The case's nominal injection (MW/MVAr) for each pinj/qinj channel, NaN elsewhere."""
    net = cfg.network
    out = np.full(len(cfg.channels), np.nan)
    for c in cfg.channels:
        if c.quantity in ("pinj", "qinj") and c.bus is not None:
            inj = net.p_inj if c.quantity == "pinj" else net.q_inj
            out[c.index] = float(inj[net.index_of(c.bus)]) * net.base_mva
    return out


def _board_feed(cfg: TwinConfig, trace: Any, seed: int) -> tuple[SensorIngest, list[list[
        tuple[str, bytes]]]]:
    """The sensor case's ingest and the fleet's messages at each trace row."""
    ingest = SensorIngest.from_config(cfg, sensors_of(cfg))
    net = cfg.network
    fleet = SensorFleet([s for s in ieee33_fleet(net) if s.kind != "weather_station"],
                        trace, net.base_mva, seed=seed)
    msgs = [fleet.step(float(trace.time[r]), r) for r in range(len(trace.time))]
    return ingest, msgs


def run_case(name: str, text: str, trace: Any, *, stride: int, seed: int) -> dict[str, Any]:
    """One case's accuracy over every ``stride``-th row of ``trace``."""
    cfg = parse_config(text, source=name)
    truth = _truth(cfg, trace) if name != "micro_sensors" else None
    rng = np.random.default_rng(seed)
    _, solve = solver_for(cfg, "linear")
    sensor_idx: set[int] = set()
    ingest, msgs = None, None
    if name == "micro_sensors":
        ingest, msgs = _board_feed(cfg, trace, seed)
        sensor_idx = {ch.index for ch in ingest.board.channels.values()}
        stream_cfg = parse_config(case_texts()["no_lateral_flows"])
        truth = _truth(stream_cfg, trace)
    assert truth is not None
    m = len(cfg.channels)
    nominal = _nominal(cfg)
    rating = np.array([p.rating_mw for p in cfg.plants])
    ape: list[np.ndarray] = []
    sq: list[np.ndarray] = []
    failed = 0
    for r in range(len(trace.time)):
        now = float(trace.time[r])
        if ingest is not None and msgs is not None:
            for topic, payload in msgs[r]:
                ingest.feed(topic, payload, now)
        if r % stride:
            continue
        values = np.full(m, np.nan)
        flags = np.zeros(m, np.uint32)
        t = truth[r]
        for ch in cfg.channels[:truth.shape[1]]:
            if ch.meter.startswith(PSEUDO_METER):
                values[ch.index] = nominal[ch.index]
            elif ch.index not in sensor_idx:
                values[ch.index] = t[ch.index] + rng.normal() * ch.sigma_at(t[ch.index])
        if ingest is not None:
            flags[list(sensor_idx)] = np.uint32(Flag.MISSING)
            ingest.board.fill(values, flags, now)
        pv = np.asarray(trace.pv_mw[r]) + rng.normal(size=rating.size) * PV_SIGMA_FRAC * rating
        try:
            vm, va, *_rest, converged = solve(values, flags, pv, PV_SIGMA_FRAC * rating)
        except EstimatorError:  # not observable: counted, not scored
            failed += 1
            continue
        if not converged:
            failed += 1
            continue
        v = np.asarray(trace.v[r])
        ape.append(np.abs(vm - np.abs(v)) / np.abs(v))
        sq.append((va - np.angle(v)) ** 2)
    return {
        "vm_mape_pct": float(np.mean(ape) * 100) if ape else None,
        "va_rmse_rad": float(math.sqrt(np.mean(sq))) if sq else None,
        "snapshots": len(ape) + failed, "estimated": len(ape), "failed": failed,
        "channels": m,
        "sensor_ingest": ingest.stats.as_dict() if ingest is not None else None,
    }


def evaluate_sensors(trace: Any, *, stride: int = 10, seed: int = 0) -> dict[str, Any]:
    """Every case on ``trace`` (a :class:`hil.trace.Trace` of the ieee33 config)."""
    return {name: run_case(name, text, trace, stride=stride, seed=seed)
            for name, text in case_texts().items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.evaluate_sensors TRACE.npz [--stride N] [--seed S]``."""
    from hil.errors import HilError
    from hil.trace import load_trace

    p = argparse.ArgumentParser(prog="gridtwin evaluate sensors",
                                description="IEEE33 estimate with and without micro sensors")
    p.add_argument("scenario", help="trace .npz of the ieee33 config (gridtwin scenario make)")
    p.add_argument("--stride", type=int, default=10, help="estimate every N-th row")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        res = evaluate_sensors(load_trace(a.scenario), stride=a.stride, seed=a.seed)
    except (HilError, OSError) as exc:
        print(f"gridtwin evaluate sensors: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
