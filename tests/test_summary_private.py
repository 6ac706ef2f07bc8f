"""``/summary`` (Gateway.summary) carries no process ids: not the estimator's, not any."""

from __future__ import annotations

import os
from typing import Any

from gateway.config import load_config
from gateway.workers import child_pids


def _walk(x: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(x, dict):
        return [kv for k, v in x.items() for kv in _walk(v, f"{path}.{k}")]
    if isinstance(x, list | tuple):
        return [kv for i, v in enumerate(x) for kv in _walk(v, f"{path}[{i}]")]
    return [(path, x)]


async def test_summary_has_no_process_ids() -> None:
    from gateway.app import Gateway, GatewayOptions

    gw = Gateway(load_config("ieee33"), GatewayOptions(
        config_ref="ieee33", historian_url="none", metrics_bind="", quality=False,
        estimator_method="flat", spare=True))
    try:
        await gw.start()
        assert gw.supervisor is not None and gw.supervisor.spare is not None
        await gw.supervisor.spare.ready  # both workers up
        pids = set(child_pids(os.getpid(), "gateway.estimator_worker"))
        assert len(pids) == 2
        summary = gw.summary()
    finally:
        await gw.close()
    leaves = _walk(summary)
    assert leaves, "an empty summary proves nothing"
    assert not [p for p, _ in leaves if "pid" in p.lower()]
    assert not [p for p, v in leaves if isinstance(v, int) and v in pids]
