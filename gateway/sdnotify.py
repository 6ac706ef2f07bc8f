"""systemd's readiness and watchdog protocol (``sd_notify``), without libsystemd.

Under a ``Type=notify`` unit systemd passes the path of an AF_UNIX datagram socket in
``NOTIFY_SOCKET`` and waits for one datagram ``READY=1`` before it counts the service as
started (so ``After=gridtwin.service`` means "the twin is listening", not "the process
exists"). With ``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and
kills and restarts a service that has not sent ``WATCHDOG=1`` within that interval: the
gateway sends it from its event loop, so a loop that stops turning (a hung transport, a
blocking call on the pipeline thread) ends in a restart rather than a silent twin.

The protocol is the one documented in sd_notify(3): newline-separated ``KEY=VALUE``
assignments in one datagram; a path starting with ``@`` names a socket in the abstract
namespace. Outside systemd (no ``NOTIFY_SOCKET``) :meth:`SdNotifier.from_environ` returns
None and nothing is sent. A failed send raises :class:`SdNotifyError`; the helpers the
gateway calls (:func:`start`, :func:`watchdog_loop`, :func:`stop`) log it (once) and go
on: a twin must not stop because systemd's socket went away, and systemd itself acts if it
misses a notification it needs (a start timeout, a watchdog restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from gateway.errors import GatewayError

log = logging.getLogger("gridtwin.sdnotify")


def socket_address(value: str) -> str:
    """The ``NOTIFY_SOCKET`` value as a Python AF_UNIX address (``@name`` is abstract)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """How often systemd expects ``WATCHDOG=1`` from process ``pid``, or None.

    None when no watchdog is configured, when the value is not a positive integer, or when
    ``WATCHDOG_PID`` names another process (the variable was inherited, not meant for us).
    The caller pings at half the interval, as sd_watchdog_enabled(3) recommends.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class SdNotifyError(GatewayError):
    """A notification could not be delivered to ``NOTIFY_SOCKET`` (named in the message)."""


class SdNotifier:
    """Sends notifications to one ``NOTIFY_SOCKET``; one datagram per call."""

    def __init__(self, address: str) -> None:
        self.address = socket_address(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.warned = False  # a failure was logged: the helpers log only the first

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SdNotifier | None:
        """A notifier when started by systemd with ``NOTIFY_SOCKET``, else None."""
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        return cls(path) if path else None

    def notify(self, **fields: str | int) -> None:
        """Send ``KEY=VALUE`` lines (``notify(READY=1, STATUS="...")``) as one datagram."""
        text = "\n".join(f"{k}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            shown = self.address.replace("\0", "@", 1)
            raise SdNotifyError(f"sd_notify to {shown!r} failed: {exc}") from exc

    def ready(self, status: str = "") -> None:
        fields: dict[str, str | int] = {"READY": 1, "MAINPID": os.getpid()}
        if status:
            fields["STATUS"] = status
        self.notify(**fields)

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def close(self) -> None:
        self._sock.close()


def _logged(notifier: SdNotifier, send: Callable[[], None]) -> None:
    """Run one send; log its failure once per notifier, never raise."""
    try:
        send()
    except SdNotifyError as exc:
        if not notifier.warned:
            log.warning("%s (further failures are not logged)", exc)
            notifier.warned = True


async def watchdog_loop(notifier: SdNotifier, interval_s: float) -> None:
    """Ping every ``interval_s / 2`` for as long as the event loop runs (cancel to stop)."""
    while True:
        _logged(notifier, notifier.watchdog)
        await asyncio.sleep(interval_s / 2)


def start(status: str) -> tuple[SdNotifier | None, asyncio.Task[None] | None]:
    """After start-up: READY=1 and, when systemd asked for one, the watchdog task.

    Call from inside the running event loop; returns what :func:`stop` takes.
    """
    notifier = SdNotifier.from_environ()
    if notifier is None:
        return None, None
    _logged(notifier, lambda: notifier.ready(status))
    interval = watchdog_interval_s(os.environ, os.getpid())
    if interval is None:
        return notifier, None
    return notifier, asyncio.get_running_loop().create_task(watchdog_loop(notifier, interval))


def stop(notifier: SdNotifier | None, task: asyncio.Task[None] | None) -> None:
    """STOPPING=1 (systemd then expects the exit) and no more watchdog pings."""
    if task is not None:
        task.cancel()
    if notifier is not None:
        _logged(notifier, notifier.stopping)
        notifier.close()
