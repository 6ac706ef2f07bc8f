"""Run the real gateway (in this process, its estimator a real child) against the real
emulator (a thread) on loopback UDP, with a SQLite historian; then read the database.

Used by the alignment-on-the-wire and lab-day tests. Waiting is on conditions, each with
its own deadline; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.components import GatewayOptions
from gateway.config import TwinConfig
from hil.emulator import Emulator, EmulatorRunner, retarget, run_in_thread


def only_streams(cfg: TwinConfig, names: tuple[str, ...], *, header: bool | None = None,
                 rate_hz: float | None = None) -> TwinConfig:
    """``cfg`` with only ``names`` enabled (header and rate optionally replaced)."""
    streams = []
    for s in cfg.streams:
        s2 = dataclasses.replace(s, enabled=s.name in names)
        if s.name in names:
            if header is not None:
                s2 = dataclasses.replace(s2, header=header)
            if rate_hz is not None:
                s2 = dataclasses.replace(s2, rate_hz=rate_hz)
        streams.append(s2)
    return dataclasses.replace(cfg, streams=streams)


async def wait_for(cond: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Yield to the gateway's loop until ``cond()`` holds; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.01)  # the loop runs the gateway meanwhile


def run_wire(cfg: TwinConfig, trace: Any, tmp: Path, *, steps: int,
             estimator: bool = False, emulator_kw: dict[str, Any] | None = None,
             done: Callable[[Gateway, Any], bool] | None = None,
             deadline_s: float = 120.0, options: dict[str, Any] | None = None
             ) -> tuple[dict[str, Any], Any, Gateway, Path]:
    """Start the gateway on free ports, emulate ``steps`` steps at it, wait until every
    frame sent was received (and ``done`` holds), close; (summary, emulator summary,
    gateway, database path). ``options``: more GatewayOptions (the estimator's
    ``config_ref``, ``forecast``; ``quality`` True turns the quality stage on)."""
    db = tmp / "twin.db"
    names = [s.name for s in cfg.enabled_streams]
    kw: dict[str, Any] = {"quality": False, **(options or {})}
    opts = GatewayOptions(historian_url=f"sqlite:///{db}", spool_dir=str(tmp / "spool"),
                          metrics_bind="", estimator=estimator, spare=False,
                          url_overrides={n: "udp://127.0.0.1:0" for n in names}, **kw)

    async def main() -> tuple[dict[str, Any], Any, Gateway]:
        gw = Gateway(cfg, opts)
        await gw.start()
        try:
            urls = {}
            for n in names:
                addr = gw.transports[n].local_address
                assert addr is not None
                urls[n] = f"udp://127.0.0.1:{addr[1]}"
            em = Emulator(retarget(cfg, urls), trace, loop=True, **(emulator_kw or {}))
            th, res = run_in_thread(EmulatorRunner(em, steps=steps))
            await wait_for(lambda: not th.is_alive(), deadline_s, "the emulator's run")
            if "error" in res:
                raise res["error"]
            esum = res["summary"]
            sent = sum(s.frames for s in esum.streams.values())

            def arrived() -> bool:
                got = sum(s.received + s.duplicates + s.decode_errors
                          for s in gw.stats.values())
                return got >= sent and (done is None or done(gw, esum))

            await wait_for(arrived, deadline_s, f"{sent} frames received by the gateway")
        finally:
            await gw.close()
        return gw.summary(), esum, gw

    summary, esum, gw = asyncio.run(main())
    return summary, esum, gw, db


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as con:
        return con.execute(sql, args).fetchall()
