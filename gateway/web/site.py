"""The live view on the twin's HTTP server: routes, the throttle's timer, the payload.

:class:`LiveSite` is what the runner holds: it registers the page's routes on the metrics
server (``/`` the page, ``/assets/…``, ``/layout.json``, ``/history?bus=ID``, ``/live`` the
Server-Sent Events stream), is told of each snapshot's flags (only while a browser is
connected: one attribute test otherwise) and of each state, and sends an update when the
throttle (:class:`gateway.web.live.LiveFeed`) says one is due, arming one timer for a
state that had to wait. Everything it serves is read-only.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from gateway.config import TwinConfig
from gateway.web.live import LiveFeed, serve_events
from gateway.web.page import LiveView, asset

__all__ = ["LiveSite"]

Reply = tuple[int, str, bytes]


def _static(body: bytes, ctype: str) -> Callable[[str], Reply]:
    def serve(query: str) -> Reply:
        return 200, ctype, body
    return serve


class LiveSite:
    def __init__(self, cfg: TwinConfig, *, state: Callable[[], dict[str, Any] | None],
                 extras: Callable[[], dict[str, Any]], clock: Callable[[], float],
                 max_rate_hz: float = 10.0) -> None:
        self.view = LiveView(cfg, max_rate_hz=max_rate_hz)
        self.feed = LiveFeed(max_rate_hz=max_rate_hz)
        self.state = state
        self.extras = extras
        self.clock = clock
        self.events: deque[dict[str, Any]] = deque(maxlen=20)
        self._values: np.ndarray | None = None
        self._pv: np.ndarray | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._layout = json.dumps(self.view.layout_json).encode()

    # ------------------------------------------------------------------ routes
    def routes(self) -> dict[str, Callable[[str], Reply]]:
        """Plain GET routes for :class:`gateway.metrics.MetricsServer` (path → handler
        of the query string)."""
        out: dict[str, Callable[[str], Reply]] = {
            "/layout.json": lambda q: (200, "application/json", self._layout),
            "/history": self._history,
        }
        for path in ("/", "/assets/app.js", "/assets/style.css"):
            body, ctype = asset(path) or (b"", "text/plain")
            out[path] = _static(body, ctype)
        return out

    async def serve_live(self, writer: asyncio.StreamWriter) -> None:
        """The ``/live`` event stream of one browser (until it goes away)."""
        st = self.state()
        first = self._payload(st) if st is not None else None
        await serve_events(self.feed, writer, first)

    def _history(self, query: str) -> Reply:
        try:
            bus = int(parse_qs(query).get("bus", [""])[0])
        except ValueError:
            return 400, "application/json", b'{"error": "bus=ID expected"}\n'
        h = self.view.bus_history(bus)
        if h is None:
            return 404, "application/json", b'{"error": "no such bus"}\n'
        return 200, "application/json", json.dumps(h).encode()

    # ------------------------------------------------------------------ runner hooks
    @property
    def listening(self) -> bool:
        return bool(self.feed.clients)

    def note_snapshot(self, values: np.ndarray, flags: np.ndarray, pv_mw: np.ndarray) -> None:
        """A snapshot was handed on (call only while :attr:`listening`)."""
        self.view.note_flags(flags)
        self._values, self._pv = values, pv_mw

    def note_handoff(self, snap: Any, pv_mw: np.ndarray, pv_sigma_mw: np.ndarray) -> None:
        """The runner's hook for every snapshot handed on: noted only while a browser
        listens (one attribute test otherwise)."""
        if self.feed.clients:
            self.note_snapshot(snap.values, snap.flags, pv_mw)

    def note_event(self, time: float, kind: str, source: str,
                   detail: dict[str, Any] | None = None) -> None:
        self.events.append({"time": time, "kind": kind, "source": source})

    def on_estimate(self, st: Any, received: float) -> None:
        """The runner's hook for every state."""
        self.on_state()

    def on_state(self) -> None:
        """A new state exists: send it now, or when the throttle allows."""
        if not self.feed.clients:
            return
        now = self.clock()
        if self.feed.offer(now):
            self._send(now)
        elif self._timer is None:
            due = self.feed.next_deadline()
            if due is not None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        if self.feed.due(now):
            self._send(now)

    def _send(self, now: float) -> None:
        st = self.state()
        if st is not None:
            self.feed.broadcast(self._payload(st), now)

    def _payload(self, st: dict[str, Any]) -> dict[str, Any]:
        extras = {**self.extras(), "events": list(self.events)}
        return self.view.payload(st, values=self._values, pv_mw=self._pv, extras=extras)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
