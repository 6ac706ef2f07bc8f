"""``gridtwin emulate``: the software RTDS (registered by :mod:`hil.cli`).

Example::

    gridtwin scenario make --config ieee33 --hours 1 -o hour.npz
    gridtwin emulate --config ieee33 --scenario hour.npz --seconds 60 \\
        --loss 1 --duplicate 0.5 --reorder 0.5 --malformed 0.2 --foreign 0.1 \\
        --burst 500:50 --seed 7 --fault-log faults.jsonl --json

    # an impolite lab: VILLASnode-style stamps, a restart, a clock step, or a whole day
    gridtwin emulate --config ieee33 --scenario hour.npz --seconds 30 --timestamps wall \\
        --phase 0.5 --jitter 0.1 --disturb restart@5 --disturb clock_step@12:-1.5
    gridtwin emulate --config ieee33 --scenario hour.npz --seconds 30 --lab-day --seed 3
"""

from __future__ import annotations

import argparse
import json
import signal
import sys


def _register_emulate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "emulate", help="software RTDS: replay a scenario trace on the wire",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Send a scenario trace as the RTDS does: each enabled stream of the "
                    "config as GTNET-SKT (UDP, or TCP with the emulator as server) or as a "
                    "C37.118 PMU server, paced on an absolute schedule, with seeded fault "
                    "injection logged as ground truth and (with [commands] enabled) a "
                    "closed loop applying PV curtailment commands from the twin.")
    p.add_argument("--config", default="ieee33", help="twin config: bundled name or .toml")
    p.add_argument("--scenario", required=True, metavar="TRACE", default=argparse.SUPPRESS,
                   help="trace .npz from `gridtwin scenario make` with the same config")
    p.add_argument("--rate", type=float, default=None, metavar="HZ",
                   help="frames per second of the fastest stream (default: the config's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="wall-clock speed factor of the pacing")
    g.add_argument("--fast", action="store_true", help="no pacing: as fast as possible")
    p.add_argument("--seconds", type=float, default=None,
                   help="run this long (at the nominal rate); default: to the trace's end")
    p.add_argument("--steps", type=int, default=None, help="run this many steps")
    p.add_argument("--start-step", type=int, default=0, help="first trace row")
    p.add_argument("--loop", action="store_true",
                   help="wrap around at the trace's end (needs --steps or --seconds)")
    p.add_argument("--timestamps", choices=("trace", "wall"), default="trace",
                   help="frame time: the trace row's time or the wall-clock send slot")
    f = p.add_argument_group("faults (seeded, logged with ground truth)")
    f.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="frames lost")
    f.add_argument("--duplicate", type=float, default=0.0, metavar="PCT",
                   help="frames sent twice")
    f.add_argument("--reorder", type=float, default=0.0, metavar="PCT",
                   help="frames held back behind the next one")
    f.add_argument("--jitter-ms", type=float, default=0.0, metavar="MS",
                   help="every frame delayed by U(0, MS)")
    f.add_argument("--burst", action="append", default=[], metavar="START:LEN[:STREAM]",
                   help="outage of LEN steps from step START (all streams or one); repeatable")
    f.add_argument("--malformed", type=float, default=0.0, metavar="PCT",
                   help="frames truncated, of wrong length or with a bad CRC")
    f.add_argument("--foreign", type=float, default=0.0, metavar="PCT",
                   help="extra datagrams from a source not allowed (127.0.0.2; UDP streams)")
    f.add_argument("--seed", type=int, default=0, help="fault seed")
    lab = p.add_argument_group("lab behaviours (GTNET-SKT streams, seeded)")
    lab.add_argument("--phase", type=float, default=0.0, metavar="FRAC",
                     help="timestamps at this fraction of the period (VILLASnode stamps "
                          "before its tick); header-less frames are sent that late")
    lab.add_argument("--jitter", type=float, default=0.0, metavar="FRAC",
                     help="uniform +-FRAC of a period on every timestamp (or send time)")
    lab.add_argument("--disturb", action="append", default=[], metavar="KIND@S[:ARG]",
                     help="stop_start, restart, recompile, card_reboot, no_gtsync (ARG: "
                          "seconds), clock_step (ARG: step in s), future_ts; repeatable")
    lab.add_argument("--lab-day", action="store_true",
                     help="every lab behaviour once, seeded (--seed), over the run "
                          "(needs --seconds)")
    f.add_argument("--fault-log", default=None, metavar="FILE",
                   help="write the injected faults as JSON lines")
    p.add_argument("--commands", choices=("auto", "on", "off"), default="auto",
                   help="closed loop: listen for commands (auto: the config's "
                        "[commands] enabled)")
    p.add_argument("--wait-clients", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a client on every TCP stream first")
    p.add_argument("--realtime", action="store_true",
                   help="run the pacing thread SCHED_FIFO if the OS allows it")
    p.add_argument("--mqtt", default=None, metavar="URL",
                   help="also publish the IEEE33 micro sensors (line sensors, pole-top "
                        "transformer meters, weather stations) to this broker, e.g. "
                        "mqtt://127.0.0.1:1883 (Sparkplug B and SenML)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.errors import GatewayError
    from hil.emulator import Emulator, EmulatorRunner
    from hil.errors import HilError
    from hil.faults import Burst, Disturbance, FaultPlan, lab_day, write_log
    from hil.mqttsensors import start_fleet
    from hil.trace import load_trace

    try:
        cfg = load_config(args.config)
        trace = load_trace(args.scenario)
        plan = FaultPlan(seed=args.seed, loss_pct=args.loss, dup_pct=args.duplicate,
                         reorder_pct=args.reorder, jitter_ms=args.jitter_ms,
                         bursts=tuple(Burst.parse(b) for b in args.burst),
                         malformed_pct=args.malformed, foreign_pct=args.foreign)
        closed = None if args.commands == "auto" else args.commands == "on"
        dist = tuple(Disturbance.parse(d) for d in args.disturb)
        if args.lab_day:
            if args.seconds is None:
                print("gridtwin emulate: --lab-day needs --seconds", file=sys.stderr)
                return 2
            dist += lab_day(args.seed, args.seconds)
        em = Emulator(cfg, trace, rate_hz=args.rate, faults=plan, start_step=args.start_step,
                      loop=args.loop, timestamps=args.timestamps, closed_loop=closed,
                      disturbances=dist, phase=args.phase, jitter=args.jitter)
        runner = EmulatorRunner(
            em, speed=args.speed, fast=args.fast, steps=args.steps, seconds=args.seconds,
            wait_clients_s=args.wait_clients, realtime=args.realtime,
            progress=(lambda s: print(s, file=sys.stderr, flush=True))
            if args.progress else None)
        addrs = runner.open()
        if args.progress:
            for name, (host, port) in addrs.items():
                print(f"emulate: {name} on {host}:{port}", file=sys.stderr)
        fleet = start_fleet(args.mqtt, cfg, trace, rate_hz=em.rate_hz, seed=args.seed,
                            start_row=args.start_step) if args.mqtt else None
        # Ctrl-C ends the run at the next step and still prints the summary
        previous = signal.signal(signal.SIGINT, lambda *_: runner.stop())
        try:
            summary = runner.run()
        finally:
            signal.signal(signal.SIGINT, previous)
            mqtt_sensors = fleet.close() if fleet is not None else None
    except (HilError, GatewayError) as exc:
        print(f"gridtwin emulate: {exc}", file=sys.stderr)
        return 2
    if args.fault_log:
        write_log(summary.fault_log, args.fault_log)
    d = summary.as_dict()
    d["mqtt_sensors"] = mqtt_sensors
    if args.json:
        print(json.dumps(d, indent=1, default=str))
    else:
        pace = d["pacing_us"]
        print(f"emulate: {d['steps']} steps in {d['duration_s']:.2f} s, "
              f"{d['frames_sent']} frames")
        for name, st in d["streams"].items():
            print(f"  {name:12} frames {st['frames']:8d}  bytes {st['bytes']:10d}  "
                  f"skipped {st['skipped']}  foreign {st['foreign']}  control {st['control']}")
        print(f"  faults: {d['faults'] or 'none'}")
        for r in d["disturbances"]:
            print(f"  disturbance: {r['kind']} at step {r['step']} (arg {r['arg']:g})")
        if pace:
            print(f"  pacing error: p50 {pace['p50']:.1f} us, p99 {pace['p99']:.1f} us, "
                  f"max {pace['max']:.1f} us")
        if d["commands"]:
            print(f"  commands: {len(d['commands'])}, round trip {d['command_rtt_ms']}")
    return 0
