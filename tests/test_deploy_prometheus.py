"""A real Prometheus server, started with the shipped prometheus.yml and alerts.yml,
scrapes a running gateway fed by the emulator; what it stores agrees with the gateway's
own counters (frames, states and their latency observations), it loads the alert rules,
and runs every dashboard query. No rate, latency or duration is asserted (those are
``gridtwin bench``'s): each test waits for a condition, with its own deadline.

Everything on loopback, on free ports; only the scrape target and listen ports of the
shipped files are rewritten, in a temporary copy. Skipped (with the reason) when the
``prometheus`` binary is absent: ``.ci/run`` installs Debian's package.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.config import resolve

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "gridtwin.json"
SHIPPED_TARGET = "127.0.0.1:9108"
SHIPPED_SELF = "127.0.0.1:9090"
WAIT_S = 45.0  # each test's own deadline for what it waits on (not a timing claim)

T = TypeVar("T")

pytestmark = pytest.mark.timeout(150)


def _prometheus() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus server not installed (Debian package 'prometheus'; "
                    ".ci/run installs it)")
    return exe


def _deadline() -> float:
    return time.monotonic() + WAIT_S


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(what: str, fn: Callable[[], T | None], deadline: float, log: Callable[[], str]
          ) -> T:
    """fn() until it returns something not None, or fail naming ``what`` at the deadline."""
    last_exc: Exception | None = None
    while True:  # at least one try, even past the deadline
        try:
            got = fn()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            got, last_exc = None, exc
        if got is not None:
            return got
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # polling interval, not synchronisation
    pytest.fail(f"timed out waiting for {what} (last error: {last_exc!r})\n{log()}")


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return bytes(r.read())


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = _get(url)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, JSON body says why
            body = exc.read()
        doc = json.loads(body)
        return doc

    def query(self, q: str) -> list[dict[str, Any]]:
        doc = self.api("query", query=q)
        if doc.get("status") != "success":
            raise AssertionError(f"query failed: {q}\n{doc}")
        return list(doc["data"]["result"])

    def scalar(self, q: str) -> float | None:
        """The single sample of an instant query, None when empty or NaN."""
        res = self.query(q)
        if len(res) != 1:
            return None
        v = float(res[0]["value"][1])
        return None if math.isnan(v) else v


def _unit_environment() -> dict[str, str]:
    """The ``Environment=`` settings of the shipped gridtwin.service: the processes here run
    as the unit runs them (e.g. without the compiled kernels its W^X rule forbids)."""
    unit = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "gridtwin.service"
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                key, _, value = pair.partition("=")
                out[key] = value
    return out


class Proc:
    """A child process with its output in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], cwd: Path) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, **_unit_environment())
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                  env=env)

    def tail(self, n: int = 40) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        state = "running" if self.p.poll() is None else f"exited {self.p.returncode}"
        return f"--- {self.name} ({state}) ---\n" + "\n".join(lines)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self._log.close()


def _lab_config(tmp: Path, ports: dict[str, int], metrics_port: int) -> Path:
    """The bundled ieee33 config with every enabled stream and the metrics on free ports."""
    text, _ = resolve("ieee33")
    for name, port in ports.items():
        text, n = re.subn(rf'(name = "{re.escape(name)}"\nurl = "udp://127\.0\.0\.1:)\d+"',
                          rf'\g<1>{port}"', text)
        assert n == 1, f"stream {name} not found in the bundled config"
    text, n = re.subn(r'bind = "127\.0\.0\.1:\d+"', f'bind = "127.0.0.1:{metrics_port}"', text)
    assert n == 1
    text = text.replace('url = "sqlite:///twin.db"', f'url = "sqlite:///{tmp / "twin.db"}"')
    path = tmp / "twin.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _prometheus_config(tmp: Path, target: str, self_addr: str) -> Path:
    """A copy of the shipped prometheus.yml (and its rule file) scraping ``target``."""
    text = (PROM_DIR / "prometheus.yml").read_text(encoding="utf-8")
    assert f'"{SHIPPED_TARGET}"' in text and f'"{SHIPPED_SELF}"' in text
    text = text.replace(f'"{SHIPPED_TARGET}"', f'"{target}"')
    text = text.replace(f'"{SHIPPED_SELF}"', f'"{self_addr}"')
    shutil.copy(PROM_DIR / "alerts.yml", tmp / "alerts.yml")
    path = tmp / "prometheus.yml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Emulator -> gateway -> Prometheus, all running; yields the handles and addresses."""
    prometheus = _prometheus()
    tmp = tmp_path_factory.mktemp("prom")
    gridtwin = [sys.executable, "-m", "gateway.cli"]
    procs: list[Proc] = []

    target = ""

    def logs() -> str:
        """Process output plus the gateway's own counters, for a failure message."""
        out = [p.tail() for p in procs]
        if target:
            with contextlib.suppress(OSError, urllib.error.URLError):
                text = _get(f"http://{target}/metrics").decode()
                keep = re.compile(r"^gridtwin_(states|snapshots|estimator_failures|"
                                  r"deadline_misses|frames|events)_total\b.* [1-9]", re.M)
                out.append("--- gateway counters ---\n" + "\n".join(
                    ln for ln in text.splitlines() if keep.match(ln)))
        return "\n".join(out)

    try:
        scenario = tmp / "scenario.npz"
        subprocess.run([*gridtwin, "scenario", "make", "--config", "ieee33", "--hours", "0.01",
                        "--step", "20ms", "--bad-data", "1", "--quiet", "-o", str(scenario)],
                       check=True, cwd=tmp, capture_output=True, timeout=120)
        ports = {s: _free_port(socket.SOCK_DGRAM) for s in ("pmu", "scada", "weather")}
        metrics_port = _free_port(socket.SOCK_STREAM)
        prom_port = _free_port(socket.SOCK_STREAM)
        cfg = _lab_config(tmp, ports, metrics_port)
        target = f"127.0.0.1:{metrics_port}"  # logs() reads it too

        procs.append(Proc("gateway", [*gridtwin, "run", str(cfg)], tmp))

        def gateway_up() -> bool | None:
            if not procs[0].alive():
                pytest.fail(f"gateway exited\n{logs()}")
            return True if b"gridtwin_" in _get(f"http://{target}/metrics") else None

        _poll("the gateway's /metrics", gateway_up, _deadline(), logs)
        procs.append(Proc("emulator", [*gridtwin, "emulate", "--config", str(cfg),
                                       "--scenario", str(scenario), "--loop",
                                       "--seconds", "300", "--timestamps", "wall"], tmp))
        prom_cfg = _prometheus_config(tmp, target, f"127.0.0.1:{prom_port}")
        procs.append(Proc("prometheus", [
            prometheus, f"--config.file={prom_cfg}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            f"--storage.tsdb.path={tmp / 'tsdb'}", "--log.level=warn"], tmp))
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        yield {"prom": prom, "target": target, "logs": logs, "procs": procs}
    finally:
        for p in reversed(procs):
            p.stop()


def _sample(prom: Prom, q: str) -> float | None:
    v = prom.scalar(q)
    return v if v is not None and math.isfinite(v) else None


def _direct(target: str) -> dict[str, float]:
    """The gateway's own samples (``name{labels}`` -> value) from its /metrics."""
    text = _get(f"http://{target}/metrics").decode()
    out = {}
    for m in re.finditer(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", text, re.M):
        out[m[1]] = float(m[2])
    return out


def _scraped_after(prom: Prom, series: str, t: float) -> float | None:
    """The value Prometheus stored for ``series`` from a scrape at or after wall time
    ``t`` (None while its newest sample is older). One query: value and sample time of
    the same sample."""
    return _sample(prom, f"{series} and on() (timestamp({series}) >= {t:.3f})")


def test_prometheus_scrapes_the_gateway(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]
    up = _poll("Prometheus to scrape the gateway (up == 1)",
               lambda: _sample(prom, 'up{job="gridtwin"}') or None,
               _deadline(), stack["logs"])
    assert up == 1.0
    # the target label set by the shipped file survives the rewrite
    (series,) = prom.query('up{job="gridtwin"}')
    assert series["metric"]["instance"] == stack["target"]
    assert series["metric"]["twin"] == "ieee33"


def test_end_to_end_latency_histogram_matches_the_states(stack: dict[str, Any]) -> None:
    """Prometheus computes quantiles from the gateway's histogram (finite, ordered), and
    the histogram holds exactly one observation per state estimate, in every scrape."""
    prom: Prom = stack["prom"]
    q = ("histogram_quantile(0.99, sum by (le) "
         "(rate(gridtwin_e2e_latency_seconds_bucket[30s])))")
    p99 = _poll("a p99 of the end-to-end latency", lambda: _sample(prom, q),
                _deadline(), stack["logs"])
    p50 = _sample(prom, q.replace("0.99", "0.5"))
    assert p50 is not None
    assert 0 < p50 <= p99, (p50, p99)  # quantiles of real observations, in order
    count = _sample(prom, "sum(gridtwin_e2e_latency_seconds_count)")
    assert count is not None and count > 0
    # one latency observation per state, in the same scrape (flushed together)
    diff = _sample(prom, "sum(gridtwin_e2e_latency_seconds_count) "
                         "- sum(gridtwin_states_total)")
    assert diff == 0, diff
    direct = _direct(stack["target"])
    assert direct["gridtwin_e2e_latency_seconds_count"] == direct["gridtwin_states_total"]
    assert direct["gridtwin_states_total"] >= count  # the gateway only counts up


def test_frame_counter_counts_up(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]
    q = 'sum(gridtwin_frames_total{job="gridtwin"})'
    first = _poll("a frame count above 0", lambda: (v if (v := _sample(prom, q)) else None),
                  _deadline(), stack["logs"])
    second = _poll("the frame count to grow",
                   lambda: (v if (v := _sample(prom, q)) and v > first else None),
                   _deadline(), stack["logs"])
    assert second > first > 0
    # every stream of the config is counted, none of them decoding into errors
    streams = {r["metric"]["stream"]: float(r["value"][1])
               for r in prom.query('gridtwin_frames_total{job="gridtwin"}')}
    assert set(streams) == {"pmu", "scada", "weather"}
    assert all(v > 0 for v in streams.values()), streams
    # what Prometheus stored is what the gateway counted: a sample scraped after a
    # direct read of the gateway's own counter is not below it, and not above a direct
    # read made after it
    series = 'gridtwin_frames_total{job="gridtwin",stream="pmu"}'
    before = _direct(stack["target"])['gridtwin_frames_total{stream="pmu"}']
    t0 = time.time()  # a scrape starting from now on reads the counter after ``before``
    scraped = _poll("a scrape of the pmu frame counter after a direct read",
                    lambda: _scraped_after(prom, series, t0), _deadline(), stack["logs"])
    after = _direct(stack["target"])['gridtwin_frames_total{stream="pmu"}']
    assert before <= scraped <= after, (before, scraped, after)


def test_shipped_alert_rules_load_and_evaluate(stack: dict[str, Any]) -> None:
    prom: Prom = stack["prom"]

    def done(r: dict[str, Any]) -> bool:
        return not str(r.get("lastEvaluation", "0001")).startswith("0001")

    def evaluated() -> list[tuple[float, dict[str, Any]]] | None:
        groups = prom.api("rules")["data"]["groups"]
        rules = [(float(g["interval"]), r) for g in groups for r in g["rules"]]
        # groups evaluated every few seconds must have run; the daily baseline (1 min)
        # may not have yet
        return rules if rules and all(done(r) for i, r in rules if i <= 10) else None

    rules = _poll("the shipped rules to be evaluated", evaluated, _deadline(), stack["logs"])
    text = (PROM_DIR / "alerts.yml").read_text(encoding="utf-8")
    assert len(rules) == len(re.findall(r"^\s+- (?:alert|record): ", text, re.M))
    assert sum(done(r) for _, r in rules) >= len(rules) - 1
    bad = []
    for _, r in rules:
        healthy = ("ok",) if done(r) else ("ok", "unknown")  # "unknown": not run yet
        if r.get("lastError") or r["health"] not in healthy:
            bad.append((r["name"], r["health"], r.get("lastError")))
    assert not bad, bad
    # a healthy twin fed by the emulator: the wire alerts are quiet
    firing = {r["name"] for _, r in rules if r.get("state") == "firing"}
    assert not firing & {"GridtwinDown", "GridtwinStreamSilent", "GridtwinDecodeErrors"}


def _dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"{p['title']} {t['refId']}", t["expr"]))
    return out


def test_every_dashboard_query_runs_and_answers(stack: dict[str, Any]) -> None:
    """Each dashboard expr, with Grafana's variables filled in, is valid PromQL that the
    real server answers with data from the running twin."""
    prom: Prom = stack["prom"]
    _poll("the e2e histogram", lambda: _sample(
        prom, "sum(rate(gridtwin_e2e_latency_seconds_count[30s]))") or None,
        _deadline(), stack["logs"])

    def fill(expr: str) -> str:
        return (expr.replace("$__rate_interval", "30s").replace("$instance", ".*")
                .replace("$stream", ".*"))

    errors, empty = [], []
    for where, expr in _dashboard_queries():
        doc = prom.api("query", query=fill(expr))
        if doc.get("status") != "success":
            errors.append(f"{where}: {doc.get('error')}")
        elif not doc["data"]["result"]:
            empty.append(where)
    assert not errors, "\n".join(errors)
    # a panel may legitimately be empty on a healthy twin only when it plots trouble
    # filtered with "> 0"
    trouble = {w for w, e in _dashboard_queries() if e.rstrip().endswith("> 0")}
    # the fleet row reads the workers' and the sink's metrics: this stack runs one twin,
    # no fleet, so those queries are only checked to be valid PromQL (above)
    fleet = {w for w, e in _dashboard_queries()
             if re.search(r"gridtwin_(worker|sink|fleet)_", e)}
    assert fleet, "the dashboard's fleet row is gone"
    missing = set(empty) - trouble - fleet
    assert not missing, f"panels without data: {sorted(missing)}"


def _process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return out


def test_running_twin_maps_no_writable_executable_memory(stack: dict[str, Any]) -> None:
    """gridtwin.service sets MemoryDenyWriteExecute=yes: the gateway and its estimator
    processes, running, hold no writable+executable mapping (no JIT) that W^X would kill.

    It cannot see a W-then-X remap; the service's own start is the last word on that."""
    gateway: Proc = stack["procs"][0]
    if not Path(f"/proc/{gateway.p.pid}/maps").exists():
        pytest.skip("no /proc/PID/maps on this OS")
    prom: Prom = stack["prom"]
    _poll("an estimate (the estimator loaded its libraries)", lambda: _sample(
        prom, "sum(gridtwin_states_total)") or None, _deadline(), stack["logs"])
    pids = _process_tree(gateway.p.pid)
    assert len(pids) >= 2, "no estimator process under the gateway"
    rwx = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            maps = Path(f"/proc/{pid}/maps").read_text()
            hits = [ln for ln in maps.splitlines() if ln.split()[1].startswith("rwx")]
            if hits:
                rwx[pid] = hits[:3]
    assert not rwx, rwx


def test_live_exposition_passes_promtool_check_metrics(stack: dict[str, Any]) -> None:
    """What the running gateway serves (all series populated) passes promtool's linter."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed")
    prom: Prom = stack["prom"]
    _poll("an estimate", lambda: _sample(prom, "sum(gridtwin_states_total)") or None,
          _deadline(), stack["logs"])
    text = _get(f"http://{stack['target']}/metrics")
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
