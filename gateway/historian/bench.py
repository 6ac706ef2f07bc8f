"""``historian.sqlite`` / ``historian.mysql``: sustained write throughput in values per second.

Workload: the complete row set of one IEEE33 snapshot through the real path
(:class:`HistorianWriter` ``put_*`` → queue → batched transactions): the raw snapshot
(``m`` values + flags), the corrected snapshot, the state (33 buses: one ``states`` row
with the JSON vectors), one forecast row (4 PV plants) and ~1 % flagged values. The figure
counts the snapshot's ``m`` measurement values only (raw values per second, like the
stream), over the whole run *including* the final flush, sustained for 10 s (2 s with
``--quick``). The producer waits for queue room (``put_timeout_s``) instead of spooling, so
the figure is the database's rate, not the spool's.

Peer: the IEEE33 real-time rate, ``m`` channels × 50 Hz (``m`` from the bundled
``ieee33`` config; 200 channels, i.e. 10 000 values/s, when the config cannot be loaded).
``historian.mysql`` needs ``GRIDTWIN_MYSQL_URL`` (it writes into a scratch database
``<db>_bench`` created and dropped on the same server) and is skipped without it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np

from gateway.bench import BenchResult
from gateway.errors import GatewayError, HistorianError

RATE_HZ = 50.0
FALLBACK_CHANNELS = 200
N_BUS = 33
N_PLANTS = 4


def ieee33_channels() -> int:
    """Channel count of the bundled ieee33 config (fallback 200 when unavailable)."""
    try:
        from gateway.config import load_config

        return len(load_config("ieee33").channels)
    except (GatewayError, OSError, ImportError, ValueError):
        return FALLBACK_CHANNELS


def sustained_rate(url: str, spool_dir: str, *, channels: int, seconds: float) -> float:
    """Raw measurement values per second committed to ``url`` over ``seconds`` (+ flush)."""
    from gateway.historian.writer import ChannelInfo, HistorianWriter, RunInfo

    rng = np.random.default_rng(7)
    pool = 64
    vals = rng.normal(1.0, 0.01, (pool, channels))
    flags = np.zeros((pool, channels), np.uint32)
    flags[rng.random((pool, channels)) < 0.01] = 1  # ~1 % bad data
    vm = rng.normal(1.0, 0.01, (pool, N_BUS))
    va = rng.normal(0.0, 0.01, (pool, N_BUS))
    plants_p = {f"pv{p}": 0.5 + 0.1 * p for p in range(N_PLANTS)}
    plants_s = {f"pv{p}": 0.05 for p in range(N_PLANTS)}
    w = HistorianWriter(url, spool_dir=spool_dir, put_timeout_s=5.0, max_queue=8192,
                        batch_rows=2000)
    w.start()
    try:
        w.start_run(RunInfo(name="bench", channels=[ChannelInfo(i, f"c{i}")
                                                    for i in range(channels)],
                            bus_ids=list(range(1, N_BUS + 1))))
        if not w.flush(60):
            raise HistorianError(f"bench: {url} did not take the run rows: "
                                 f"{w.stats().last_error}")
        t0 = time.perf_counter()
        stop = t0 + seconds
        seq = 0
        while True:
            for _ in range(50):
                k = seq % pool
                t = 1.7e9 + seq / RATE_HZ
                w.put_measurements(seq, t, t + 0.002, vals[k], flags[k])
                w.put_corrected(seq, t, vals[k], flags[k] * 4)
                w.put_state(seq, t, vm[k], va[k], chi2=12.5, iterations=1,
                            timings={"se": 0.0004})
                w.put_forecasts(seq, t, plants_p, plants_s)
                seq += 1
            if time.perf_counter() >= stop:
                break
        if not w.flush(120):
            raise HistorianError(f"bench: {url} did not keep up: {w.stats().last_error}")
        elapsed = time.perf_counter() - t0
        st = w.stats()
        if st.spooled or st.db_errors:
            print(f"bench: {url}: {st.spooled} rows spooled, {st.db_errors} errors",
                  file=sys.stderr)
    finally:
        w.close()
    return seq * channels / elapsed


def _mysql_scratch_url(base: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    db = parts.path.lstrip("/") or "test"
    scratch = f"{db}_bench"
    return parts._replace(path="/" + scratch).geturl(), scratch


def _drop_mysql(url: str, db: str) -> None:
    import pymysql

    from gateway.historian.mysql import parse_mysql_url

    a = parse_mysql_url(url)
    conn = pymysql.connect(host=a["host"], port=a["port"], user=a["user"],
                           password=a["password"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db.replace('`', '``')}`")
    finally:
        conn.close()


def benchmarks(quick: bool) -> list[BenchResult]:
    seconds = 2.0 if quick else 10.0
    channels = ieee33_channels()
    peer_value = channels * RATE_HZ
    peer = f"IEEE33 real-time rate ({channels} channels x 50 Hz)"
    out: list[BenchResult] = []
    tmp = tempfile.mkdtemp(prefix="gridtwin-bench-")
    try:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        rate = sustained_rate(url, os.path.join(tmp, "spool-sqlite"), channels=channels,
                              seconds=seconds)
        out.append(BenchResult("historian.sqlite", rate, "values/s", peer, peer_value))
        base = os.environ.get("GRIDTWIN_MYSQL_URL")
        if base:
            murl, db = _mysql_scratch_url(base)
            _drop_mysql(murl, db)
            try:
                rate = sustained_rate(murl, os.path.join(tmp, "spool-mysql"),
                                      channels=channels, seconds=seconds)
            finally:
                _drop_mysql(murl, db)
            out.append(BenchResult("historian.mysql", rate, "values/s", peer, peer_value))
        else:
            print("bench: historian.mysql skipped: set GRIDTWIN_MYSQL_URL="
                  "mysql://user:pw@host:port/db", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
