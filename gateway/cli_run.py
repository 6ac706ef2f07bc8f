"""``gridtwin run CONFIG``: the running twin (gateway + supervised estimator process)."""

from __future__ import annotations

import argparse

from gateway.realtime import PRIORITIES, set_realtime


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run", help="run the twin: ingest, clean, estimate, store, serve metrics",
        description="Start the gateway for a twin config: listen on its streams, align, "
        "clean, hand snapshots to the estimator process, store everything in the "
        "historian and serve /metrics and /state.")
    p.add_argument("config", help="bundled config name (ieee33) or a .toml path")
    p.add_argument("--historian", default=None, metavar="URL",
                   help="override historian.url (sqlite:///twin.db, mysql://..., none)")
    p.add_argument("--spool-dir", default=None, help="historian spool directory")
    p.add_argument("--metrics-bind", default=None, metavar="HOST:PORT",
                   help="override metrics.bind ('' disables the HTTP server)")
    p.add_argument("--stream-url", action="append", default=[], metavar="NAME=URL",
                   help="override a stream's URL (repeatable)")
    p.add_argument("--no-quality", action="store_true", help="skip the data-quality stage")
    p.add_argument("--models", default=None, help="directory of the ONNX models")
    p.add_argument("--no-estimator", action="store_true", help="ingest and store only")
    p.add_argument("--estimator-method", default=None,
                   help="override estimator.method ('flat' = no maths, for tests)")
    p.add_argument("--no-spare", action="store_true",
                   help="do not keep a warm spare estimator process")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--summary", action="store_true",
                   help="print the run summary as JSON on stdout at exit")
    p.add_argument("--realtime", action="store_true",
                   help="run the gateway and the estimator process with real-time "
                   f"scheduling (SCHED_FIFO priority {PRIORITIES['gateway']}, else nice -10) "
                   "if the OS allows it")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import json
    import logging
    import os
    import signal
    import sys

    from prometheus_client import disable_created_metrics

    from gateway import sdnotify
    from gateway.app import Gateway, GatewayOptions
    from gateway.config import load_config
    from gateway.errors import GatewayError
    from gateway.historian.base import Misconfigured

    # no <name>_created series: one start-time series per counter and histogram that no
    # dashboard or alert reads, doubling what Prometheus stores for them
    disable_created_metrics()
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    overrides = {}
    for item in args.stream_url:
        name, sep, url = item.partition("=")
        if not sep:
            print(f"--stream-url {item!r}: write NAME=URL", file=sys.stderr)
            return 2
        overrides[name] = url
    try:
        cfg = load_config(args.config)
    except GatewayError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    unknown = set(overrides) - {s.name for s in cfg.streams}
    if unknown:
        print(f"--stream-url: no stream named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.realtime:
        logging.getLogger("gridtwin.gateway").info("scheduling: %s",
                                                   set_realtime("gateway"))
        # hand the GIL over within 0.2 ms (default 5 ms): the historian's thread must not
        # hold the pipeline thread up for a whole switch interval
        sys.setswitchinterval(2e-4)
    opts = GatewayOptions(
        config_ref=args.config, historian_url=args.historian, spool_dir=args.spool_dir,
        metrics_bind=args.metrics_bind, quality=False if args.no_quality else None,
        models_dir=args.models, estimator=not args.no_estimator,
        estimator_method=args.estimator_method, spare=not args.no_spare,
        realtime=args.realtime,
        url_overrides=overrides)

    async def main() -> dict[str, object]:
        gw = Gateway(cfg, opts)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        notified: tuple[sdnotify.SdNotifier | None, asyncio.Task[None] | None] = (None, None)
        try:
            await gw.start()
            ready = {"ready": True, "pid": os.getpid(),
                     "metrics": list(gw.server.address) if gw.server and gw.server.address
                     else None,
                     "streams": {n: list(t.local_address) if t.local_address else None
                                 for n, t in gw.transports.items()}}
            print(json.dumps(ready), file=sys.stderr, flush=True)
            # systemd Type=notify: READY=1 now, WATCHDOG=1 from this loop if asked for
            notified = sdnotify.start(f"running {cfg.name}")
            if args.seconds is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.seconds)
            else:
                await stop.wait()
        finally:
            sdnotify.stop(*notified)
            await gw.close()
        return gw.summary()

    try:
        summary = asyncio.run(main())
    except Misconfigured as exc:  # the historian cannot work as configured: say why
        print(f"gridtwin run: historian: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gridtwin run: {exc}", file=sys.stderr)
        return 1
    if args.summary:
        print(json.dumps(summary, default=str))
    return 0
