"""Connecting to NATS JetStream, and the fleet's stream, consumers and config bucket.

One JetStream stream ``GRIDTWIN`` holds every twin's messages (subjects
``gridtwin.<twin>.snapshot|state|event|health``, limits retention bounded by age and
size, a de-duplication window so a message re-published with the same ``Nats-Msg-Id``
after a reconnect is stored once). Two durable pull consumers read it:

* ``workers`` (filter ``gridtwin.*.snapshot``, deliver new): the estimator workers' shared
  work queue; JetStream hands each snapshot to one worker and redelivers it to another
  when it is not acknowledged within ``ack_wait`` (a worker killed mid-solve);
* ``sink`` (every subject, deliver all): the historian sink; its acknowledgements are the
  sink's progress, so a database outage only grows the consumer's backlog.

Feeder configs live in the key-value bucket ``gridtwin_feeders`` (key = twin name, value =
the config's TOML text; the bucket keeps the last revisions).

Credentials and TLS come from :class:`BusOptions`: ``user``/``password`` (or in the URL),
``token``, a ``creds`` file (JWT + nkey) or an nkey ``seed`` file, and a CA / client
certificate for TLS (``tls://`` URLs or any ``tls_*`` option).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.errors import GatewayError

__all__ = ["BUCKET", "CLOSE_TIMEOUT_S", "SINK", "STREAM", "WORKERS", "BusError",
           "BusOptions", "close_connection", "close_step", "connect", "ensure_fleet",
           "stop_tasks"]

log = logging.getLogger("gridtwin.bus")

STREAM = "GRIDTWIN"
WORKERS = "workers"
SINK = "sink"
BUCKET = "gridtwin_feeders"
SUBJECTS = ["gridtwin.*.snapshot", "gridtwin.*.state", "gridtwin.*.event",
            "gridtwin.*.health"]

#: the longest a close waits for any one part (a task, a subscription, the connection)
#: and a publish waits for a forced flush: a hung server, or a socket whose peer stopped
#: reading, must not hold a process's shutdown (or its loop) forever
CLOSE_TIMEOUT_S = 5.0


class BusError(GatewayError):
    """The bus cannot be reached or set up (URL, credentials, stream settings)."""


@dataclass(frozen=True)
class BusOptions:
    """Where the bus is and how to log in. ``url`` may carry ``user:password@``."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None  # a .creds file (user JWT and nkey seed)
    seed: str | None = None  # an nkey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "gridtwin"
    replicas: int = 1  # stream replicas (3 on a three-node cluster)
    max_age_s: float = 3600.0  # how long the stream keeps a message
    max_bytes: int = 1 << 30  # and how much it keeps in all
    ack_wait_s: float = 2.0  # a worker's unacknowledged snapshot goes to another after this
    servers: tuple[str, ...] = field(default=())  # more cluster URLs to try

    def redacted(self) -> str:
        """The URL without its password (for logs, events and HTTP answers)."""
        u = urlsplit(self.url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        user = f"{u.username}:***@" if u.password else (f"{u.username}@" if u.username else "")
        return f"{u.scheme}://{user}{host}{port}"


def _tls(o: BusOptions) -> ssl.SSLContext | None:
    if not (o.url.startswith("tls://") or o.tls_ca or o.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=o.tls_ca)
    if o.tls_cert:
        ctx.load_cert_chain(o.tls_cert, o.tls_key)
    return ctx


def _check_url(url: str) -> None:
    u = urlsplit(url)
    if u.scheme not in ("nats", "tls"):
        raise BusError(f"bus url {url!r}: scheme must be nats:// or tls://")
    try:
        u.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise BusError(f"bus url {url!r}: {exc}") from exc
    if not u.hostname:
        raise BusError(f"bus url {url!r}: no host")


async def _reachable(urls: list[str], timeout: float) -> None:
    """BusError unless one of ``urls`` accepts a TCP connection (the client library would
    otherwise retry an unreachable first server forever)."""
    errors = []
    for url in urls:
        u = urlsplit(url)
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(u.hostname, u.port or 4222),
                                          timeout)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{u.hostname}:{u.port or 4222}: {exc or type(exc).__name__}")
            continue
        w.close()
        return
    raise BusError("cannot reach the bus (" + "; ".join(errors) + "): is nats-server "
                   "running with -js?")


async def _log_error(exc: Exception) -> None:
    log.warning("bus: %s: %s", type(exc).__name__, exc)


async def connect(o: BusOptions, **callbacks: Any) -> Any:
    """A connected ``nats.aio.client.Client`` (reconnecting forever once connected), or
    BusError."""
    import nats
    from nats.errors import Error as NatsError

    urls = [o.url, *o.servers]
    for url in urls:
        _check_url(url)
    await _reachable(urls, 3.0)
    callbacks.setdefault("error_cb", _log_error)
    u = urlsplit(o.url)
    kw: dict[str, Any] = {
        "servers": [o.url, *o.servers], "name": o.name, "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5, "connect_timeout": 3, "allow_reconnect": True,
        "user": o.user or (unquote(u.username) if u.username else None),
        "password": o.password or (unquote(u.password) if u.password else None),
        "token": o.token, "tls": _tls(o),
        # a publish past the client's pending limit waits for the socket; without a bound
        # it waits forever on a hung server (and swallows its task's cancellation)
        "flush_timeout": CLOSE_TIMEOUT_S, **callbacks}
    if o.creds:
        kw["user_credentials"] = o.creds
    if o.seed:
        kw["nkeys_seed"] = o.seed
    try:
        return await nats.connect(**{k: v for k, v in kw.items() if v is not None})
    except (OSError, NatsError, TimeoutError, ssl.SSLError) as exc:
        raise BusError(f"cannot connect to the bus at {o.redacted()}: "
                       f"{type(exc).__name__}: {exc}") from exc


async def ensure_fleet(js: Any, o: BusOptions) -> None:
    """Create (or update) the stream, both consumers and the config bucket."""
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        DeliverPolicy,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )
    from nats.js.errors import BadRequestError

    cfg = StreamConfig(name=STREAM, subjects=SUBJECTS, retention=RetentionPolicy.LIMITS,
                       storage=StorageType.FILE, max_age=o.max_age_s, max_bytes=o.max_bytes,
                       duplicate_window=120.0, num_replicas=o.replicas)
    try:
        await js.add_stream(cfg)
    except BadRequestError:
        await js.update_stream(cfg)
    await js.add_consumer(STREAM, ConsumerConfig(
        durable_name=WORKERS, filter_subject="gridtwin.*.snapshot",
        deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=o.ack_wait_s, max_ack_pending=20_000))
    await js.add_consumer(STREAM, ConsumerConfig(
        durable_name=SINK, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0, max_ack_pending=50_000))
    try:
        await js.key_value(BUCKET)
    except Exception:  # nats-py raises BucketNotFoundError or NotFoundError
        from nats.js.api import KeyValueConfig

        await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=10,
                                                 replicas=o.replicas))


# --------------------------------------------------------------------------- closing
#
# Why bounded: ``task.cancel(); await task`` waits forever for a task that does not end
# on its cancellation, and some do. On Python 3.11 ``asyncio.wait_for`` returns its
# future's result when the future completed in the same loop turn as the cancellation
# (the cancellation is lost: a polling loop around ``js.consumer_info`` goes on polling);
# nats-py's forced flush catches ``CancelledError``; and ``Client.close`` drains a socket
# whose peer stopped reading (a hung server) without a bound. A close that hangs leaves
# the event loop idle and the process (or a test) waiting for nothing.

#: close steps given up on: referenced so they are not collected while pending
_abandoned: set[asyncio.Future[Any]] = set()


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None], what: str,
                     timeout: float = CLOSE_TIMEOUT_S) -> list[str]:
    """Cancel ``tasks`` and wait for them, at most ``timeout``: a task still running
    after a short grace (its cancellation was lost) is cancelled again; the names of those
    that still run at the end are logged and returned (they are not waited for)."""
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    pending: set[asyncio.Task[Any]] = set(live)
    first = min(0.5, timeout / 2)  # a task ends on its cancellation at once, or lost it
    for wait in (first, timeout - first):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=wait)
        for t in pending:
            if wait == first:
                log.warning("%s: task %s lost its cancellation: cancelled again", what,
                            t.get_name())
            t.cancel()
    for t in live:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("%s: task %s ended with %r", what, t.get_name(), t.exception())
    stuck = sorted(t.get_name() for t in pending)
    if stuck:
        log.error("%s: %d task(s) did not end %.1f s after their cancellation: %s",
                  what, len(stuck), timeout, ", ".join(stuck))
    return stuck


async def close_step(step: Awaitable[Any], what: str, timeout: float = CLOSE_TIMEOUT_S
                     ) -> bool:
    """Run one step of a close (an unsubscribe, a drain, ``nc.close()``), at most
    ``timeout``. False when it did not finish in time: it is cancelled, logged and left
    (not waited for again). An error of the step is logged and counts as finished (a
    close goes on)."""
    fut = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({fut}, timeout=timeout)
    if not done:
        fut.cancel()
        _abandoned.add(fut)
        fut.add_done_callback(_abandoned.discard)
        log.error("%s did not finish in %.1f s: given up", what, timeout)
        return False
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("%s: %r", what, fut.exception())
    return True


async def close_connection(nc: Any, what: str, timeout: float = CLOSE_TIMEOUT_S, *,
                           drain: bool = False) -> bool:
    """``nc.drain()`` or ``nc.close()``, bounded; on a timeout the socket is aborted
    (its unsent bytes dropped) so it does not outlive the close. False on a timeout."""
    if nc is None:
        return True
    ok = await close_step(nc.drain() if drain else nc.close(), what, timeout)
    if not ok:
        writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()
    return ok
