"""``gridtwin worker``, ``gridtwin sink`` and ``gridtwin fleet …``: the twin across machines.

* ``gridtwin fleet register CONFIG --bus URL``: validate a twin config like ``config check``
  does and store it in the bus's config bucket (a new revision; workers reload it);
* ``gridtwin worker --bus URL``: an estimator worker serving every registered feeder;
* ``gridtwin sink --bus URL --historian URL``: every feeder's data into one twin database;
* ``gridtwin fleet demo``: nats-server, emulated feeders, edges, workers and a sink on this
  machine, with per-feeder and total figures.

Bus credentials: ``--bus nats://user:password@host:port`` or ``--bus-user``/``--bus-password``
(or ``GRIDTWIN_BUS_PASSWORD`` so the password stays out of the process list), ``--bus-token``,
``--bus-creds FILE``, ``--bus-nkey FILE``, ``--bus-ca FILE`` / ``--bus-cert`` / ``--bus-key``
for TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

DEFAULT_BUS = "nats://127.0.0.1:4222"


def add_bus_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bus (NATS JetStream)")
    g.add_argument("--bus", default=DEFAULT_BUS, metavar="URL",
                   help=f"nats:// or tls:// URL of the bus (default {DEFAULT_BUS})")
    g.add_argument("--bus-user", default=None)
    g.add_argument("--bus-password", default=None,
                   help="password (better: the GRIDTWIN_BUS_PASSWORD environment variable)")
    g.add_argument("--bus-token", default=None)
    g.add_argument("--bus-creds", default=None, metavar="FILE", help="NATS .creds file")
    g.add_argument("--bus-nkey", default=None, metavar="FILE", help="nkey seed file")
    g.add_argument("--bus-ca", default=None, metavar="FILE", help="CA bundle for TLS")
    g.add_argument("--bus-cert", default=None, metavar="FILE", help="client certificate")
    g.add_argument("--bus-key", default=None, metavar="FILE", help="client key")
    g.add_argument("--replicas", type=int, default=1,
                   help="stream replicas when this command creates the stream (3 on a "
                   "three-node cluster)")
    g.add_argument("--ack-wait", type=float, default=2.0, metavar="S",
                   help="seconds before an unacknowledged snapshot goes to another worker "
                   "(set when this command creates the consumers)")


def bus_options(args: argparse.Namespace, name: str) -> Any:
    from gateway.bus.conn import BusOptions

    return BusOptions(url=args.bus, user=args.bus_user,
                      password=args.bus_password or os.environ.get("GRIDTWIN_BUS_PASSWORD"),
                      token=args.bus_token, creds=args.bus_creds, seed=args.bus_nkey,
                      tls_ca=args.bus_ca, tls_cert=args.bus_cert, tls_key=args.bus_key,
                      name=name, replicas=args.replicas, ack_wait_s=args.ack_wait)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    w = sub.add_parser("worker", help="estimator worker for every feeder on the bus",
                       description="Pull snapshots of any registered feeder from the bus's "
                       "work queue, estimate, publish the states back.")
    add_bus_options(w)
    w.add_argument("--batch", type=int, default=64, help="snapshots fetched per pull")
    w.add_argument("--metrics-bind", default="", metavar="HOST:PORT",
                   help="serve Prometheus /metrics here ('' = off)")
    w.set_defaults(func=run_worker)

    s = sub.add_parser("sink", help="write every feeder's data from the bus to a historian",
                       description="A durable consumer writing snapshots, states and events "
                       "of every feeder to the twin database, idempotently.")
    add_bus_options(s)
    s.add_argument("--historian", required=True, metavar="URL",
                   help="sqlite:///fleet.db or mysql://user@host:port/db")
    s.add_argument("--metrics-bind", default="", metavar="HOST:PORT")
    s.set_defaults(func=run_sink)

    f = sub.add_parser("fleet", help="many feeders over NATS JetStream",
                       description="Register feeder configs on the bus, or run the fleet demo.")
    fsub = f.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    r = fsub.add_parser("register", help="validate CONFIG and store it in the config bucket")
    r.add_argument("config", help="bundled config name or .toml path")
    r.add_argument("--name", default=None, help="feeder name on the bus (default: the "
                   "config's name)")
    add_bus_options(r)
    r.set_defaults(func=run_register)
    from gateway.cli_fleet_demo import register_demo

    register_demo(fsub)


def _fail(msg: str) -> int:
    print(f"gridtwin: {msg}", file=sys.stderr)
    return 2


def run_register(args: argparse.Namespace) -> int:
    from gateway.bus.conn import BusError
    from gateway.bus.fleet import register_config
    from gateway.errors import GatewayError

    try:
        name, rev = asyncio.run(register_config(bus_options(args, "gridtwin-register"),
                                                args.config, name=args.name))
    except (BusError, GatewayError) as exc:
        return _fail(str(exc))
    print(f"registered feeder {name}: revision {rev}")
    return 0


def _serve(make: Any, stats: Any) -> int:
    """Run a bus component until SIGINT/SIGTERM; print its final counters."""
    from gateway.bus.conn import BusError
    from gateway.errors import GatewayError

    async def main() -> Any:
        comp = make()
        await comp.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await comp.close()
        return comp

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        comp = asyncio.run(main())
    except (BusError, GatewayError) as exc:
        return _fail(str(exc))
    print(json.dumps(stats(comp), default=str))
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from gateway.bus.worker import Worker

    opts = bus_options(args, f"gridtwin-worker-{os.getpid()}")
    return _serve(lambda: Worker(opts, batch=args.batch, metrics_bind=args.metrics_bind),
                  lambda w: asdict(w.stats))


def run_sink(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from gateway.bus.sink import Sink

    opts = bus_options(args, f"gridtwin-sink-{os.getpid()}")
    return _serve(lambda: Sink(opts, args.historian, metrics_bind=args.metrics_bind),
                  lambda s: asdict(s.stats))
