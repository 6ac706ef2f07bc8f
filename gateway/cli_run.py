"""``gridtwin run CONFIG``: the running twin (gateway + supervised estimator process)."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config import TwinConfig

from gateway.realtime import PRIORITIES, go_realtime


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
    p.add_argument("--bus", default=None, metavar="URL",
                   help="publish on NATS JetStream (overrides [bus] url; '' = off)")
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
                   "if the OS allows it, the gateway on the first CPU and the estimator on "
                   "the second")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def start_problem(cfg: TwinConfig, args: argparse.Namespace, overrides: dict[str, str]
                  ) -> str | None:
    """What stops the start before anything opens: a bad override, no enabled stream."""
    from gateway.config.problems import Problems
    from gateway.config.rules.sections import check_historian_url
    from gateway.config.rules.streams import check_bind, check_url, runnable

    pr = Problems()
    unknown = set(overrides) - {s.name for s in cfg.streams}
    if unknown:
        return f"--stream-url: no stream named {', '.join(sorted(unknown))}"
    for name, url in overrides.items():
        check_url(pr, url, f"--stream-url {name}")
    if args.historian is not None:
        check_historian_url(pr, args.historian, "--historian")
    if args.metrics_bind:
        check_bind(pr, args.metrics_bind, "--metrics-bind")
    for p in list(pr.items) + list(runnable(cfg.streams)):
        return str(p)
    return None


def culprit(exc: BaseException, cfg: TwinConfig, args: argparse.Namespace,
            overrides: dict[str, str]) -> str:
    """The option to change for an address that could not be bound, found by its port
    (``host:PORT`` or asyncio's ``('host', PORT)`` in the message)."""
    from gateway.config import url_parts

    text = str(exc)

    def named(port: str | int) -> bool:
        return str(port) not in ("", "0") and re.search(rf"(?::|, ){port}\b", text) is not None

    for i, s in enumerate(cfg.streams):
        url = overrides.get(s.name, s.url)
        try:
            port = url_parts(url)[2]
        except ValueError:
            continue
        if s.enabled and named(port):
            return (f" (change streams[{i}] ({s.name}).url = {url!r} or pass --stream-url "
                    f"{s.name}=URL)")
    bind = cfg.metrics_bind if args.metrics_bind is None else args.metrics_bind
    if bind and named(bind.rpartition(":")[2]):
        return f" (change metrics.bind = {bind!r} or pass --metrics-bind HOST:PORT)"
    return ""


class StartFailed(Exception):
    """The gateway did not start; ``cause`` is why (exit 2: do not restart)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def serve(make_gateway: Callable[[], Any], seconds: float | None) -> dict[str, object]:
    """Start the gateway (a failure raises :class:`StartFailed` after unwinding what did
    start), announce readiness on stderr, run until a signal or ``seconds``, stop."""
    import asyncio
    import contextlib
    import json
    import logging
    import os
    import signal
    import sys

    from gateway import sdnotify
    from gateway.errors import GatewayError

    try:
        gw = make_gateway()
    except GatewayError as exc:
        raise StartFailed(exc) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
    except BaseException as exc:
        # unwind what did start; a failure there must not hide why start failed
        try:
            await gw.close()
        except Exception:
            logging.getLogger("gridtwin.gateway").debug("closing after a failed start",
                                                        exc_info=True)
        if isinstance(exc, (GatewayError, OSError)):
            raise StartFailed(exc) from exc
        raise
    try:
        ready = {"ready": True, "pid": os.getpid(),
                 "metrics": list(gw.server.address) if gw.server and gw.server.address
                 else None,
                 "streams": {n: list(t.local_address) if t.local_address else None
                             for n, t in gw.transports.items()}}
        print(json.dumps(ready), file=sys.stderr, flush=True)
        # systemd Type=notify: READY=1 now, WATCHDOG=1 from this loop if asked for
        notified = sdnotify.start(f"running {gw.cfg.name}")
        try:
            if seconds is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds)
            else:
                await stop.wait()
        finally:
            sdnotify.stop(*notified)
    finally:
        await gw.close()
    return gw.summary()


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import logging
    import sys

    from prometheus_client import disable_created_metrics

    from gateway.app import Gateway, GatewayOptions
    from gateway.config import load_config
    from gateway.errors import ConfigError, GatewayError

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
    except ConfigError as exc:
        more = len(exc.problems) - 1
        print(f"gridtwin run: config {args.config}: {exc.roots[0] if exc.roots else exc}"
              + (f" (and {more} more: gridtwin config check {args.config})" if more else ""),
              file=sys.stderr)
        return 2
    problem = start_problem(cfg, args, overrides)
    if problem is not None:
        print(f"gridtwin run: cannot start: {problem}", file=sys.stderr)
        return 2
    if args.realtime:
        logging.getLogger("gridtwin.gateway").info("scheduling: %s",
                                                   go_realtime("gateway"))
        # hand the GIL over within 0.2 ms (default 5 ms): the historian's thread must not
        # hold the pipeline thread up for a whole switch interval
        sys.setswitchinterval(2e-4)
    opts = GatewayOptions(
        config_ref=args.config, historian_url=args.historian, spool_dir=args.spool_dir,
        metrics_bind=args.metrics_bind, quality=False if args.no_quality else None,
        models_dir=args.models, estimator=not args.no_estimator,
        estimator_method=args.estimator_method, spare=not args.no_spare,
        realtime=args.realtime,
        url_overrides=overrides, bus_url=args.bus)
    try:
        summary = asyncio.run(serve(lambda: Gateway(cfg, opts), args.seconds))
    except StartFailed as exc:
        # start-up failures exit 2: the systemd unit does not restart on a config problem
        msg = " ".join(str(exc.cause).split())
        print(f"gridtwin run: cannot start: {msg}{culprit(exc.cause, cfg, args, overrides)}",
              file=sys.stderr)
        return 2
    except (GatewayError, OSError) as exc:
        print(f"gridtwin run: {exc}", file=sys.stderr)
        return 1
    if args.summary:
        print(json.dumps(summary, default=str))
    return 0
