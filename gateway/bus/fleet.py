"""Feeder configs on the bus: validated like a file, then stored as a new revision."""

from __future__ import annotations

import re

from gateway.bus.conn import (
    BUCKET,
    BusError,
    BusOptions,
    close_connection,
    connect,
    ensure_fleet,
)

__all__ = ["register_config"]

_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


async def register_config(opts: BusOptions, config: str, *, name: str | None = None
                          ) -> tuple[str, int]:
    """Validate ``config`` (bundled name or path) and put its text in the config bucket
    under ``name`` (default: the config's own name); (name, revision)."""
    from gateway.config import load_config

    cfg = load_config(config)  # a GatewayError names the key, as config check does
    key = name or cfg.name
    if not _KEY.match(key):
        raise BusError(f"feeder name {key!r}: use letters, digits, '-' and '_' (it is a "
                       "subject token and a bucket key)")
    nc = await connect(opts)
    try:
        js = nc.jetstream()
        await ensure_fleet(js, opts)
        kv = await js.key_value(BUCKET)
        rev = await kv.put(key, cfg.text.encode())
    finally:  # bounded: a hung server must not hold the caller forever
        await close_connection(nc, "register_config: connection", drain=True)
    return key, int(rev)
