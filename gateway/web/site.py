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
import contextlib
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
                 max_rate_hz: float = 10.0,
                 historian: Callable[[], tuple[str, int | None]] | None = None) -> None:
        #: (URL, run id) of the twin's database, for ranges longer than memory holds
        self.historian = historian
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
        }
        for path in ("/", "/assets/app.js", "/assets/style.css"):
            body, ctype = asset(path) or (b"", "text/plain")
            out[path] = _static(body, ctype)
        return out

    async def serve_live(self, writer: asyncio.StreamWriter, query: str = "") -> None:
        """The ``/live`` event stream of one browser (until it goes away)."""
        st = self.state()
        first = self._payload(st) if st is not None else None
        await serve_events(self.feed, writer, first)

    async def serve_history(self, writer: asyncio.StreamWriter, query: str) -> None:
        """``/history?bus=ID[&minutes=N]``: from memory (the last 10 minutes), or from the
        historian for a longer range (read in a thread, thinned to ~2000 points, so the
        pipeline never waits for the database)."""
        status, body = await self._history(query)
        writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                     "Content-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _history(self, query: str) -> tuple[int, bytes]:
        q = parse_qs(query)
        try:
            bus = int(q.get("bus", [""])[0])
            minutes = float(q.get("minutes", ["0"])[0])
        except ValueError:
            return 400, b'{"error": "bus=ID[&minutes=N] expected"}\n'
        h = self.view.bus_history(bus)
        if h is None:
            return 404, b'{"error": "no such bus"}\n'
        span = (h["t"][-1] - h["t"][0]) if len(h["t"]) > 1 else 0.0
        if minutes * 60.0 > span + 1.0 and self.historian is not None:
            loop = asyncio.get_running_loop()
            try:
                h = await loop.run_in_executor(None, self._stored, bus, min(minutes, 24 * 60))
            except Exception as exc:  # the database is away: say so, keep the memory
                h["note"] = f"historian: {exc}"
        return 200, json.dumps(h).encode()

    def _stored(self, bus: int, minutes: float) -> dict[str, Any]:
        """|V| and angle of ``bus`` over the last ``minutes`` of this run, from the
        historian (every k-th estimate so at most ~2000 come back)."""
        from gateway.historian.reader import HistorianReader
        from gateway.historian.schema import vector_from_json

        assert self.historian is not None
        url, run_id = self.historian()
        i = self.view.bus_ids.index(bus)
        reader = HistorianReader(url)
        try:
            (t1,) = reader.db.query("SELECT MAX(source_time) FROM states WHERE run_id = ?",
                                    (run_id,))[0]
            if t1 is None:
                return {"bus": bus, "source": "historian", "t": [], "vm": [], "va": [],
                        "meter_vm": None}
            t0 = float(t1) - minutes * 60.0
            (n,) = reader.db.query("SELECT COUNT(*) FROM states WHERE run_id = ? AND "
                                   "source_time >= ?", (run_id, t0))[0]
            k = max(1, int(n) // 2000)
            rows = reader.db.query(
                "SELECT source_time, vm, va FROM states WHERE run_id = ? AND source_time >= ?"
                " AND seq % ? = 0 ORDER BY source_time", (run_id, t0, k))
        finally:
            reader.close()
        vm = [float(vector_from_json(r[1])[i]) for r in rows]
        va = [float(vector_from_json(r[2])[i]) for r in rows]
        return {"bus": bus, "source": "historian", "t": [float(r[0]) for r in rows],
                "vm": vm, "va": va, "meter_vm": None}

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
