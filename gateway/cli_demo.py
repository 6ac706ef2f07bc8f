"""``gridtwin demo``: the whole twin on loopback, then its report card.

Generates (or reuses, from the cache directory) a scenario trace for the bundled ieee33
config, starts ``gridtwin run`` and ``gridtwin emulate`` as two real processes on
loopback (UDP GTNET-SKT streams on free ports, SQLite historian in a work directory, the
committed ONNX models), lets the emulator play for ``--seconds`` at ``--rate``, then
collects the figures: frame counts from both sides, the gateway's ``/summary`` (deadline
misses, end-to-end latency percentiles), and accuracy computed from the historian
database against the trace's ground truth:

* ``se_vm_mape_pct``: mean |vm_est - vm_true| / vm_true over every estimate and bus, %;
* ``se_va_rmse_rad``: RMS of va_est - va_true (slack angle 0 in both), rad;
  ``se_va_rmse_pv_nodes_rad`` / ``se_va_rmse_other_buses_rad``: the same at the PV
  plants' own nodes and at the other buses apart (a plant node's angle rests on its
  plant's output, which the bundled meters leave to the PV forecast);
* ``bad_data_missed_pct``: gross errors injected in electrical channels that the quality
  stage did not flag BAD, % of the injected ones; ``bad_data_false_pct``: good electrical
  values flagged BAD, % of the good ones;
* ``pv_mape_pct``: PV pseudo-measurement (forecast) vs true plant output, over samples
  with true output above 5 % of the rating (MAPE is undefined at night), %;
* ``historian_rows``: rows of this run in every table;
* ``deadline_misses_by_stage``: the stored snapshots that missed their deadline, by the
  stage of their latency that took longest (``align``: waiting for the snapshot's last
  frame, ``clean``: the quality stage, ``handoff``, ``solve``, ``return``: the state back
  into the gateway's loop; ``superseded``: no state, a newer snapshot's answered it;
  ``not_estimated``: no state, the estimator's FAIL came after the deadline; a FAIL in
  time is no miss) and ``first_second``: how many of them arrived in the run's first
  second (the start-up);
* ``states_held``: stored states that are the kalman filter's prediction, not an estimate
  of their snapshot (the 1 kHz worker's answer to a snapshot with gross errors, flagged
  ``converged`` false with 0 iterations: ``gateway.estimator_worker``); they count in
  the accuracy figures above like every other state.

The scenario's step is the frame period (one trace row per frame at ``--rate``), so the
grid moves as it would at that rate. The frames' timestamps are the trace's own
(``--timestamps trace``) so every snapshot maps to its trace row exactly; latency is
measured on arrival times, which are wall-clock. For the same reason the per-stream
one-way delay (arrival minus frame timestamp) is meaningless in a demo (the scenario's
clock is 1990's): the summary leaves it out and says why.

The PV figure depends on the run's length: the committed forecaster reads a window of
:data:`PV_WINDOW` weather samples :data:`PV_STRIDE_S` apart, padded with the first
sample until it fills, and a forecast is issued once per stride. A 20 s run scores a few
dozen forecasts, half of them from a padded window; the summary prints how many it scored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_START = "1990-06-01T10:00"  # late morning: the PV plants produce
MAX_TRACE_ROWS = 60_000  # a longer demo loops the trace
# the committed PV forecaster's card: window (samples) and stride_s (s between samples)
PV_WINDOW = 10
PV_STRIDE_S = 2.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo", help="run emulator + twin on loopback and report accuracy and latency",
        description="Start the emulator and the twin as separate processes on loopback "
        "with the bundled ieee33 config, SQLite and the committed models; after S seconds "
        "print a summary (or JSON with --json).")
    p.add_argument("--seconds", type=float, default=30.0, help="emulation time (s)")
    p.add_argument("--rate", type=float, default=50.0, metavar="HZ", help="frame rate")
    p.add_argument("--bad-data", type=float, default=10.0, metavar="PCT",
                   help="percent of electrical values corrupted in the scenario")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--workdir", default=None,
                   help="keep the run's config, database and logs here (default: a "
                   "temporary directory, removed afterwards)")
    p.add_argument("--cache", default=None,
                   help="scenario cache directory (default: $XDG_CACHE_HOME/gridtwin)")
    p.add_argument("--seed", type=int, default=1, help="scenario seed")
    p.add_argument("--kill-estimator-at", type=float, default=None, metavar="S",
                   help="SIGKILL the estimator process S seconds into the run "
                   "(shows the supervisor restarting it)")
    p.add_argument("--no-realtime", action="store_true",
                   help="do not ask for real-time scheduling (by default the twin and the "
                   "emulator run SCHED_FIFO when the OS allows it)")
    p.add_argument("--sensors", choices=("none", "mqtt"), default="none",
                   help="mqtt: the emulator also publishes IEEE33 micro sensors (Sparkplug "
                   "B, SenML) through a private Mosquitto; the twin subscribes, and the "
                   "report adds its devices (online, stale, unassigned)")
    p.add_argument("--reconfigure", action="store_true",
                   help="the feeder switches half-way (tie 8-21 closes, 7-8 opens); the "
                   "report adds the topology changes and the accuracy before and after")
    p.add_argument("--status", choices=("sent", "withheld", "falsified"), default="sent",
                   help="with --reconfigure: the switch statuses on the wire are the truth, "
                   "never sent, or keep the old state")
    p.add_argument("--estimator-method", default=None, metavar="METHOD",
                   help="SE method for this run (default: the config's [estimator] method)")
    p.add_argument("--no-quality", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import tempfile

    from gateway.errors import GatewayError

    workdir: contextlib.AbstractContextManager[str] = (
        contextlib.nullcontext(args.workdir) if args.workdir
        else tempfile.TemporaryDirectory(prefix="gridtwin-demo-"))
    try:
        with workdir as wd:
            res = run_demo(Path(wd), seconds=args.seconds, rate=args.rate,
                           bad_pct=args.bad_data, seed=args.seed, cache=args.cache,
                           kill_at=args.kill_estimator_at, method=args.estimator_method,
                           quality=not args.no_quality, progress=not args.json,
                           realtime=not args.no_realtime, sensors=args.sensors,
                           reconfigure=args.status if args.reconfigure else None)
        if not args.workdir:
            res["workdir"] = None  # removed with the temporary directory
    except (GatewayError, OSError, RuntimeError, ValueError) as exc:
        print(f"gridtwin demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, default=_json_default))
    else:
        print(human(res))
    return 0


# --------------------------------------------------------------------------- scenario

def cache_dir(cache: str | None) -> Path:
    if cache:
        return Path(cache)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gridtwin"


def scenario_path(cache: Path, *, rows: int, step_s: float, bad_pct: float, seed: int
                  ) -> Path:
    return cache / f"demo-ieee33-{rows}x{round(step_s * 1e6)}us-bad{bad_pct:g}-s{seed}.npz"


def ensure_scenario(cache: Path, *, seconds: float, rate: float, bad_pct: float, seed: int,
                    log: Any) -> tuple[Path, bool]:
    """A real-time trace: one row per frame at the frame period, so the grid moves as it
    would at that rate (at most MAX_TRACE_ROWS rows; the emulator loops a longer run)."""
    step_s = 1.0 / rate
    rows = math.ceil(min(seconds * rate, MAX_TRACE_ROWS) + 50)
    rows = max(rows, 200)
    path = scenario_path(cache, rows=rows, step_s=step_s, bad_pct=bad_pct, seed=seed)
    if path.is_file():
        return path, rows < seconds * rate
    cache.mkdir(parents=True, exist_ok=True)
    from hil.scenario import ScenarioSpec, make_scenario

    log(f"demo: generating scenario {path.name} ({rows} rows of {step_s * 1000:g} ms, "
        f"{bad_pct:g} % bad)")
    spec = ScenarioSpec(config="ieee33", start=DEMO_START, hours=rows * step_s / 3600,
                        step_s=step_s, bad_pct=bad_pct, seed=seed)
    tmp = path.with_suffix(".tmp.npz")
    out = make_scenario(spec, tmp, progress=False)
    Path(out).replace(path)
    return path, rows < seconds * rate


# --------------------------------------------------------------------------- processes

def write_config(path: Path, *, rate: float, db: Path, ports: dict[str, int] | None,
                 metrics_port: int, patch: Callable[[str], str] | None = None) -> Path:
    """The bundled ieee33 config with loopback ports, this run's database and rate
    (``patch``: a last edit of the text, e.g. the switch statuses of --reconfigure)."""
    import re
    from importlib import resources

    text = (resources.files("gateway") / "configs" / "ieee33.toml").read_text("utf-8")
    for name in ("pmu", "scada", "weather"):
        port = 0 if ports is None else ports[name]
        text = re.sub(
            rf'(name = "{name}"\nurl = ")udp://127\.0\.0\.1:\d+(")',
            rf"\g<1>udp://127.0.0.1:{port}\g<2>", text)
    text = re.sub(r"rate_hz = \d+(\.\d+)?", f"rate_hz = {rate:g}", text)
    text = text.replace('url = "sqlite:///twin.db"', f'url = "sqlite:///{db}"')
    text = text.replace('bind = "127.0.0.1:9108"', f'bind = "127.0.0.1:{metrics_port}"')
    path.write_text(patch(text) if patch is not None else text, "utf-8")
    return path


def _wait_ready(proc: Any, logfile: Path, timeout: float) -> dict[str, Any]:
    import time

    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"gridtwin run exited with {proc.returncode}; log:\n"
                               + logfile.read_text(errors="replace")[-3000:])
        for line in logfile.read_text(errors="replace").splitlines():
            if line.startswith('{"ready"'):
                return json.loads(line)  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise RuntimeError(f"gridtwin run not ready after {timeout:.0f} s; log:\n"
                       + logfile.read_text(errors="replace")[-3000:])


def http_json(port: int, path: str, timeout: float = 5.0) -> Any:
    return json.loads(http_text(port, path, timeout))


def http_text(port: int, path: str, timeout: float = 5.0) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return str(r.read().decode())


@dataclass
class _Played:
    """What the demo observed while the emulator played: both sides' reports and, for the
    report card, the metrics text, the last state and the killed estimator (if any)."""

    emu_sum: dict[str, Any]
    live: dict[str, Any]
    devices: dict[str, Any] | None
    metrics_text: str
    state: Any
    killed: dict[str, Any] | None = None
    #: CPU seconds (user + system, every thread) the gateway and its active estimator
    #: process spent while the emulator played (None: not measurable, e.g. a restart)
    cpu_s: dict[str, float | None] | None = None


def run_demo(wd: Path, *, seconds: float, rate: float, bad_pct: float, seed: int = 1,
             cache: str | None = None, kill_at: float | None = None,
             method: str | None = None, quality: bool = True, progress: bool = True,
             extra_run_args: list[str] | None = None, realtime: bool = True,
             keep_metrics: bool = False, sensors: str = "none",
             reconfigure: str | None = None) -> dict[str, Any]:
    """Run the twin and the emulator as two real processes and grade the twin.

    Real processes on loopback rather than threads, so the figures are those of the
    deployed shape (separate schedulers, real sockets, the estimator's worker process).
    The twin is always stopped (and a private broker closed) however the run ends.
    ``reconfigure``: the switch statuses' mode of a run whose feeder switches half-way
    (:mod:`gateway.cli_demo_topology`).
    """
    import subprocess

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    wd.mkdir(parents=True, exist_ok=True)
    trace_path, loop = ensure_scenario(cache_dir(cache), seconds=seconds, rate=rate,
                                       bad_pct=bad_pct, seed=seed, log=log)
    patch, switching = None, None
    if reconfigure is not None:
        from gateway import cli_demo_topology as demo_topology

        if loop:
            raise ValueError(f"--reconfigure: a {seconds:g} s run at {rate:g} Hz is longer "
                             "than one scenario; run shorter")
        switching = demo_topology.prepare(trace_path, wd / "reconfigured.npz",
                                          seconds=seconds, rate=rate, status=reconfigure,
                                          seed=seed)
        trace_path, patch = wd / "reconfigured.npz", demo_topology.config_text
        log(f"demo: the feeder switches at {switching['step'] / rate:g} s "
            f"({switching['switches']}), statuses {reconfigure}")
    db = wd / "twin.db"
    if db.exists():
        db.unlink()
    gw_cfg = write_config(wd / "twin.toml", rate=rate, db=db, ports=None, metrics_port=0,
                          patch=patch)
    broker, mqtt_url = _start_broker(wd, gw_cfg) if sensors == "mqtt" else (None, "")
    gw_log = wd / "gateway.log"
    cmd = _twin_command(gw_cfg, wd, method=method, quality=quality, realtime=realtime,
                        extra=extra_run_args)
    log("demo: starting the twin: " + " ".join(cmd[2:]))
    with open(gw_log, "w") as gl:
        gw = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=gl, cwd=wd, text=True)
    try:
        ready = _wait_ready(gw, gw_log, 120.0)
        played = _play(ready, gw.pid, wd, db, trace_path, rate=rate, seconds=seconds,
                       loop=loop, mqtt_url=mqtt_url, realtime=realtime, kill_at=kill_at,
                       devices=broker is not None, log=log, patch=patch)
    finally:
        gw_out = _stop_twin(gw)
        if broker is not None:
            broker.close()
    final = json.loads(gw_out.strip().splitlines()[-1]) if gw_out.strip() else played.live
    res = collect(final, played.emu_sum, db, trace_path, rate=rate, seconds=seconds)
    _add_run_report(res, final, played, kill_at=kill_at)
    if switching is not None:
        from gateway import cli_demo_topology as demo_topology

        res.update(demo_topology.report(db, trace_path, switching, rate))
        res["topology_tracker"] = final.get("topology")
    res["workdir"] = str(wd)
    if keep_metrics:
        res["_metrics_text"] = played.metrics_text
        res["_state"] = played.state
    return res


def _start_broker(wd: Path, gw_cfg: Path) -> tuple[Any, str]:
    """A private Mosquitto for ``--sensors mqtt`` (so a demo never touches a shared
    broker), with the fleet's meters and sensors appended to the twin's config."""
    from hil.mqttsensors import Broker, fleet_config

    broker = Broker(wd)
    mqtt_url = broker.start()
    with open(gw_cfg, "a", encoding="utf-8") as f:
        f.write(fleet_config("ieee33", mqtt_url))
    return broker, mqtt_url


def _twin_command(gw_cfg: Path, wd: Path, *, method: str | None, quality: bool,
                  realtime: bool, extra: list[str] | None) -> list[str]:
    """``gridtwin run`` as a child process: the summary on stdout is what the report
    reads after SIGTERM."""
    cmd = [sys.executable, "-m", "gateway.cli", "run", str(gw_cfg), "--summary",
           "--spool-dir", str(wd / "spool")]
    if method:
        cmd += ["--estimator-method", method]
    if not quality:
        cmd += ["--no-quality"]
    if realtime:
        cmd += ["--realtime"]
    return cmd + (extra or [])


def _emulate_command(emu_cfg: Path, trace_path: Path, *, rate: float, seconds: float,
                     loop: bool, mqtt_url: str, realtime: bool) -> list[str]:
    """``gridtwin emulate`` stamping frames with the trace's own time, so every snapshot
    maps to exactly one trace row when the accuracy is graded."""
    ecmd = [sys.executable, "-m", "gateway.cli", "emulate", "--config", str(emu_cfg),
            "--scenario", str(trace_path), "--rate", f"{rate:g}", "--seconds",
            f"{seconds:g}", "--timestamps", "trace", "--json"]
    if loop:
        ecmd.append("--loop")
    if mqtt_url:
        ecmd += ["--mqtt", mqtt_url]
    if realtime:
        ecmd.append("--realtime")
    return ecmd


def _play(ready: dict[str, Any], gw_pid: int, wd: Path, db: Path, trace_path: Path, *,
          rate: float, seconds: float, loop: bool, mqtt_url: str, realtime: bool,
          kill_at: float | None, devices: bool, log: Any,
          patch: Callable[[str], str] | None = None) -> _Played:
    """Point the emulator at the ports the twin reported ready, let it play, then read the
    twin's live figures; the emulator is killed if anything fails on the way."""
    import subprocess
    import time

    mport = int(ready["metrics"][1])
    ports = {k: int(v[1]) for k, v in ready["streams"].items()}
    emu_cfg = write_config(wd / "emulator.toml", rate=rate, db=db, ports=ports,
                           metrics_port=mport, patch=patch)
    ecmd = _emulate_command(emu_cfg, trace_path, rate=rate, seconds=seconds, loop=loop,
                            mqtt_url=mqtt_url, realtime=realtime)
    log(f"demo: twin ready (metrics http://127.0.0.1:{mport}/metrics); emulating "
        f"{seconds:g} s at {rate:g} Hz")
    emu_log = open(wd / "emulator.log", "w")  # noqa: SIM115
    pids = _cpu_pids(gw_pid)
    cpu0 = {role: proc_cpu_s(pid) for role, pid in pids.items()}
    emu = subprocess.Popen(ecmd, stdout=subprocess.PIPE, stderr=emu_log, text=True)
    try:
        killed = _kill_estimator(gw_pid, kill_at, log) if kill_at is not None else None
        out, _ = emu.communicate(timeout=seconds * 3 + 120)
        emu_log.close()
        if emu.returncode != 0:
            raise RuntimeError(f"gridtwin emulate exited with {emu.returncode}: "
                               + (wd / "emulator.log").read_text(errors="replace")[-2000:])
        emu_sum = json.loads(out)
        # let the last snapshots through (lag window + estimate), then read the summary
        time.sleep(max(0.3, 20.0 / rate))
        cpu = {role: _minus(proc_cpu_s(pid), cpu0[role]) for role, pid in pids.items()}
        live = http_json(mport, "/summary")
        devs = http_json(mport, "/devices") if devices else None
        metrics_text = http_text(mport, "/metrics")
        try:
            state = http_json(mport, "/state")
        except OSError:  # 503 before the first estimate
            state = None
    finally:
        if emu.poll() is None:
            emu.kill()
    return _Played(emu_sum=emu_sum, live=live, devices=devs, metrics_text=metrics_text,
                   state=state, killed=killed, cpu_s=cpu)


def _cpu_pids(gw_pid: int) -> dict[str, int]:
    """The processes whose CPU time the run reports: the gateway and its active
    estimator (its oldest estimator child; the spare idles)."""
    from gateway.workers import child_pids

    est = child_pids(gw_pid, "gateway.estimator_worker")
    return {"gateway": gw_pid, **({"estimator": est[0]} if est else {})}


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process ``pid`` has used, from Linux
    ``/proc`` (None when it is gone or there is no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[11] utime, fields[12] stime (stat fields 14 and 15), in clock ticks
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _kill_estimator(gw_pid: int, kill_at: float, log: Any) -> dict[str, Any]:
    """``--kill-estimator-at``: SIGKILL the active estimator ``kill_at`` s into the run, to
    show the supervisor restarting it."""
    import signal
    import time

    time.sleep(kill_at)
    from gateway.workers import child_pids

    # the active estimator: the gateway's oldest worker child (/summary has no pids)
    pid = child_pids(gw_pid, "gateway.estimator_worker")[0]
    t_kill = time.time()
    os.kill(int(pid), signal.SIGKILL)
    log(f"demo: killed the estimator process {pid}")
    return {"pid": pid, "at_s": kill_at, "time": t_kill}


def _stop_twin(gw: Any) -> str:
    """SIGTERM the twin and read its final summary line (killed after 60 s)."""
    import signal
    import subprocess

    if gw.poll() is None:
        gw.send_signal(signal.SIGTERM)
    try:
        gw_out, _ = gw.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        gw.kill()
        gw_out, _ = gw.communicate()
    return str(gw_out)


def _add_run_report(res: dict[str, Any], final: dict[str, Any], played: _Played, *,
                    kill_at: float | None) -> None:
    """Figures from the twin's metrics and final summary beside ``collect``'s: the
    chi-square failure share, the restart report (when the estimator was killed) and the
    MQTT devices (with ``--sensors mqtt``); the restart events ``collect`` read are shown
    only with a kill."""
    # chi-square failures at 99 % over ALL the run's estimates (bad data the detector
    # missed included): the counters behind the GridtwinChiSquareFailing alert
    n_fail = _metric_value(played.metrics_text, "gridtwin_chi2_test_failures_total")
    n_est = _metric_value(played.metrics_text, "gridtwin_states_total")
    res["chi2_fail_all_pct"] = (100.0 * n_fail / n_est if n_fail is not None and n_est
                                else None)
    if res.get("chi2_healthy_states") is None:  # no historian figure: the counters'
        res["chi2_fail_pct"] = res["chi2_fail_all_pct"]
    snaps = res.get("snapshots") or 0
    res["cpu_per_snapshot_us"] = {
        role: None if s is None or not snaps or (role == "estimator" and kill_at is not None)
        else 1e6 * s / snaps for role, s in (played.cpu_s or {}).items()}
    res["restart"] = None
    if played.killed is not None:
        res["restart"] = {"killed_pid": played.killed["pid"], "at_s": kill_at,
                          "restarts": final.get("estimator_restarts"),
                          "restart_s": final.get("restart_s"),
                          "metric": _metric_value(played.metrics_text,
                                                  "gridtwin_estimator_restarts_total"),
                          "events": res.pop("_restart_events", None)}
    else:
        res.pop("_restart_events", None)
    if played.devices is not None:
        res["devices"] = {**played.devices["counts"], "mqtt": played.devices.get("ingest"),
                          "emulator": played.emu_sum.get("mqtt_sensors")}


def _metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


# --------------------------------------------------------------------------- accuracy

def collect(gw: dict[str, Any], emu: dict[str, Any], db: Path, trace_path: Path, *,
            rate: float, seconds: float) -> dict[str, Any]:
    """The report card: the twin's and the emulator's own counts, and accuracy graded from
    the historian against the trace's ground truth (what the twin stored, not what it
    said it computed); the chi-square failure share over the healthy estimates
    (``chi2_fail_pct``, see :func:`_chi2_healthy`)."""
    from gateway.historian.reader import HistorianReader
    from hil.trace import load_trace

    trace = load_trace(trace_path)
    rows_of = _row_mapper(trace)
    with HistorianReader(f"sqlite:///{db}") as rd:
        run_id = rd.latest_run()
        vm_mape, va_rmse, va_parts = _state_accuracy(rd, run_id, trace, rows_of)
        held = _held_states(rd, run_id)
        causes = _miss_causes(rd, run_id)
        missed, false = _bad_data_accuracy(rd, run_id, trace, rows_of)
        pv_mape, pv_scored = _pv_accuracy(rd, run_id, trace, rows_of)
        hist_rows = _historian_rows(rd, run_id)
        chi2_pct, chi2_n = _chi2_healthy(rd, run_id, trace, rows_of)
        ev = [e for e in rd.events(run_id=run_id)
              if e["kind"] in ("estimator_crashed", "estimator_restarted")]
    sent = int(emu.get("frames_sent", 0))
    received = int(gw.get("frames_received", 0))
    return {
        "seconds": seconds, "rate_hz": rate,
        "frames_sent": sent,
        "frames_received": received,
        "frames_lost": max(0, sent - received - int(gw.get("decode_errors", 0))),
        "snapshots": gw.get("snapshots"),
        "states": gw.get("states"),
        "deadline_misses": gw.get("deadline_misses"),
        "skipped_snapshots": gw.get("skipped"),
        "deadline_misses_by_stage": causes,
        "se_vm_mape_pct": vm_mape,
        "se_va_rmse_rad": va_rmse,
        **va_parts,
        "states_held": held,
        "chi2_fail_pct": chi2_pct,
        "chi2_healthy_states": chi2_n,
        "bad_data_missed_pct": missed,
        "bad_data_false_pct": false,
        "pv_mape_pct": pv_mape,
        "pv_forecasts_scored": pv_scored,
        "e2e_latency_ms": gw.get("e2e_latency_ms"),
        "handoff_latency_us": gw.get("handoff_latency_us"),
        "stage_latency_ms": gw.get("stage_latency_ms"),
        "historian_rows": sum(hist_rows.values()),
        "streams": [{k: st.get(k) for k in ("stream", "received", "lost", "late", "rate_hz")}
                    for st in gw.get("streams") or []],
        "historian_rows_by_table": hist_rows,
        "estimator_restarts": gw.get("estimator_restarts"),
        "quality": gw.get("quality"),
        "predictor_late": gw.get("predictor_late"),
        "emulator_pacing_us": emu.get("pacing_us"),
        "_restart_events": [{"kind": e["kind"], "time": e["time"], "detail": e["detail"]}
                            for e in ev],
    }


def _row_mapper(trace: Any) -> Callable[[Any], Any]:
    """Source timestamps -> trace rows. The frames carry the trace's own time, so the row
    is exact; modulo the trace's length because a long demo loops the trace."""
    import numpy as np

    T = trace.time.shape[0]
    step = float(trace.step_s)
    t0 = float(trace.time[0])

    def rows_of(t: Any) -> np.ndarray:
        return np.mod(np.rint((np.asarray(t, float) - t0) / step).astype(np.int64), T)

    return rows_of


def _state_accuracy(rd: Any, run_id: Any, trace: Any, rows_of: Callable[[Any], Any]
                    ) -> tuple[float | None, float | None, dict[str, float | None]]:
    """|V| MAPE (%) and angle RMSE (rad) of the stored estimates, and the angle RMSE at
    the plant nodes and at the other buses apart; None without estimates (or when the
    bus count differs, which would make the comparison meaningless)."""
    import numpy as np

    from gateway.config import load_config
    from gateway.se_model import angle_parts, measurement_model

    parts: dict[str, float | None] = {"se_va_rmse_pv_nodes_rad": None,
                                      "se_va_rmse_other_buses_rad": None}
    st = rd.states(run_id=run_id)
    if not len(st):
        return None, None, parts
    v = trace.v[rows_of(st.source_time)]
    if v.shape != st.vm.shape:
        return None, None, parts
    vm_mape = float(np.mean(np.abs(st.vm - np.abs(v)) / np.abs(v)) * 100)
    dva = st.va - np.angle(v)
    # the demo's feeder and plants: the bundled config's
    pv_nodes = measurement_model(load_config("ieee33")).pv_nodes
    parts.update({f"se_{k}": x for k, x in angle_parts(dva, pv_nodes).items()})
    return vm_mape, float(np.sqrt(np.mean(dva**2))), parts


def _held_states(rd: Any, run_id: Any) -> int:
    """Stored states flagged as the filter's prediction (not converged, 0 iterations)."""
    import numpy as np

    st = rd.states(run_id=run_id)
    return int(np.count_nonzero(~st.converged & (st.iterations == 0))) if len(st) else 0


#: the stages of a state's e2e latency the historian stores (``states.timings``)
STAGES = ("align", "clean", "handoff", "solve", "return")
#: what a missed snapshot is counted under (``_miss_causes``): no state, or its slowest stage
MISS_KINDS = ("superseded", "not_estimated", *STAGES)


def _miss_causes(rd: Any, run_id: Any) -> dict[str, int]:
    """The stored snapshots that missed their deadline, each under the stage of its
    latency that took longest (``superseded``: no state at all, a newer snapshot's
    answered it; ``not_estimated``: no state, the estimator's FAIL came after the
    deadline), and how many of them arrived in the run's first second
    (``first_second``: the start-up, when the estimator sets its weights and the quality
    stage's detector has no history yet). A snapshot answered with a FAIL in time (gross
    errors before the detector has a history, see the estimator worker) missed nothing:
    it is not counted, as the gateway does not count it."""
    st = rd.db.query("SELECT seq, deadline_met, timings FROM states WHERE run_id = ?",
                     (run_id,))
    arr = dict(rd.db.query("SELECT seq, arrival_time FROM measurements "
                           "WHERE run_id = ? AND seq >= 0", (run_id,)))
    out = dict.fromkeys((*MISS_KINDS, "first_second"), 0)
    if not arr:
        return out
    t0 = min(arr.values())
    failed, missed = _event_seqs(rd, run_id, "estimate_failed"), \
        _event_seqs(rd, run_id, "deadline_missed")
    late = list(arr.keys() - {r[0] for r in st} - (failed - missed))
    for seq in late:
        out["not_estimated" if seq in failed else "superseded"] += 1
    for seq, met, timings in st:
        if met:
            continue
        t = json.loads(timings) if isinstance(timings, str) else (timings or {})
        parts = {k: float(t.get(f"{k}_s") or 0.0) for k in STAGES}
        out[max(parts, key=parts.__getitem__)] += 1
        late.append(seq)
    out["first_second"] = sum(1 for seq in late if arr.get(seq, math.inf) - t0 < 1.0)
    return out


def _event_seqs(rd: Any, run_id: Any, kind: str) -> set[int]:
    """The snapshots (``seq``) the run's events of ``kind`` name."""
    return {e["detail"]["seq"] for e in rd.events(kind=kind, run_id=run_id)
            if isinstance(e["detail"], dict) and isinstance(e["detail"].get("seq"), int)}


def _chi2_healthy(rd: Any, run_id: Any, trace: Any, rows_of: Callable[[Any], Any]
                  ) -> tuple[float | None, int | None]:
    """Chi-square failures at 99 % (%) over the HEALTHY estimates, and how many: those
    of snapshots where no injected bad value reached the estimator unflagged (a missed
    gross error should fail the test; a healthy estimate fails it 1 % of the time when
    the sigmas are right). Each stored state keeps J(x) and, beside its timings, the
    quantile it was tested against."""
    import json

    import numpy as np

    cor = rd.measurements(run_id=run_id, corrected=True)
    rows = rd.db.query("SELECT source_time, chi2, timings FROM states WHERE run_id = ?",
                       (run_id,))
    if not len(cor) or not rows:
        return None, None
    at = {float(t): k for k, t in enumerate(cor.source_time)}
    elec = np.array([not n.startswith("wx") for n in trace.channel_names])
    nb = trace.bad.shape[1]
    fails = n = 0
    for t, chi2, timings in rows:
        k = at.get(float(t))
        thr = json.loads(timings).get("chi2_threshold") if timings else None
        if k is None or chi2 is None or thr is None:
            continue
        r = int(rows_of(t))
        if np.any(trace.bad[r] & ~trace.missing[r] & elec & ((cor.flags[k][:nb] & 1) == 0)):
            continue  # a gross error got through: not a healthy estimate
        n += 1
        fails += int(chi2 > thr)
    return (100.0 * fails / n if n else None), n


def _bad_data_accuracy(rd: Any, run_id: Any, trace: Any,
                       rows_of: Callable[[Any], Any]) -> tuple[float | None, float | None]:
    """Missed bad data and false alarms (%), over the electrical channels only: the ones
    the detector tests (weather channels are not judged)."""
    cor = rd.measurements(run_id=run_id, corrected=True)
    if not len(cor):
        return None, None
    import numpy as np

    missed = false = None
    r = rows_of(cor.source_time)
    cflags = cor.flags[:, :trace.bad.shape[1]]  # edge sensor channels come last
    elec = np.array([not n.startswith("wx") for n in trace.channel_names])
    bad = trace.bad[r] & ~trace.missing[r] & elec
    flagged = (cflags & 1) != 0
    good = elec & ~trace.bad[r] & ~trace.missing[r] & ((cflags & 8) == 0)
    if bad.sum():
        missed = 100.0 * float((bad & ~flagged).sum()) / float(bad.sum())
    if good.sum():
        false = 100.0 * float((good & flagged).sum()) / float(good.sum())
    return missed, false


def _pv_accuracy(rd: Any, run_id: Any, trace: Any,
                 rows_of: Callable[[Any], Any]) -> tuple[float | None, int]:
    """PV forecast MAPE (%) and how many forecasts it scored, over true output above
    5 % of 1 MW: MAPE is undefined at night and meaningless near zero."""
    import numpy as np

    plant_idx = {p: i for i, p in enumerate(trace.plant_names)}
    ape = []
    for f in rd.forecasts(run_id=run_id):
        if f["plant"] not in plant_idx or f["p_mw"] is None:
            continue
        true = float(trace.pv_mw[int(rows_of(f["target_time"])), plant_idx[f["plant"]]])
        if true > 0.05:
            ape.append(abs(float(f["p_mw"]) - true) / true)
    return (float(np.mean(ape) * 100) if ape else None), len(ape)


def _historian_rows(rd: Any, run_id: Any) -> dict[str, int]:
    """Rows of this run in every historian table (shows the historian kept up)."""
    from gateway.historian.schema import TABLES

    return {t.name: int(rd.db.query(f"SELECT COUNT(*) FROM {t.name} WHERE run_id = ?",
                                    (run_id,))[0][0])
            for t in TABLES}


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _f(x: Any, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _skipped(skipped: Any) -> str:
    """``{'superseded': 3, 'stale': 0, ...}`` as words, zero counts left out."""
    words = {"superseded": "superseded (newest wins)", "stale": "stale",
             "no_estimator": "without an estimator"}
    parts = [f"{n} {words.get(k, k.replace('_', ' '))}"
             for k, n in (skipped or {}).items() if n]
    return "skipped " + ", ".join(parts) if parts else "none skipped"


def _causes(c: dict[str, int] | None) -> str:
    """`` (superseded 26, solve 10, …; 29 in the first second)`` or nothing."""
    if not c:
        return ""
    parts = [f"{k.replace('_', ' ')} {c[k]}" for k in MISS_KINDS if c.get(k)]
    if not parts:
        return ""
    return f" ({', '.join(parts)}; {c.get('first_second', 0)} in the first second)"


def _quality(name: Any) -> str:
    """The stage's state in words: only a stage that is off deserves a remark."""
    if name and "PassThrough" in str(name):
        return "  (quality stage off: values passed through unchecked)"
    return ""


def _streams(streams: Any) -> str:
    parts = [f"{s['stream']} {s['received']}" for s in streams or []]
    late = sum(int(s.get("late") or 0) for s in streams or [])
    return f"  streams    {', '.join(parts)} frames received; {late} late"


def human(r: dict[str, Any]) -> str:
    """The demo's summary for a person: figures in words, then what they depend on."""
    lat = r.get("e2e_latency_ms") or {}
    n_pv = r.get("pv_forecasts_scored")
    lines = [
        f"gridtwin demo: ieee33, {r['seconds']:g} s at {r['rate_hz']:g} Hz",
        f"  frames     sent {r['frames_sent']}, received {r['frames_received']}, "
        f"lost {r['frames_lost']}",
        *([_streams(r["streams"])] if r.get("streams") else []),
        f"  snapshots  {r['snapshots']}, states {r['states']}, deadline misses "
        f"{r['deadline_misses']}{_causes(r.get('deadline_misses_by_stage'))}, "
        f"{_skipped(r.get('skipped_snapshots'))}",
        f"  state      |V| MAPE {_f(r['se_vm_mape_pct'], '.4f')} %, angle RMSE "
        f"{_f(r['se_va_rmse_rad'], '.2e')} rad"
        + (f", {r['states_held']} held (the filter's prediction)" if r.get("states_held")
           else ""),
        f"  bad data   missed {_f(r['bad_data_missed_pct'], '.2f')} %, false alarms "
        f"{_f(r['bad_data_false_pct'], '.3f')} %{_quality(r.get('quality'))}",
        f"  PV         forecast MAPE {_f(r['pv_mape_pct'], '.2f')} % over {n_pv} forecasts "
        "(plant output above 5 % of rating)",
        f"  latency    end-to-end p50 {_f(lat.get('p50'), '.3f')} ms, p99 "
        f"{_f(lat.get('p99'), '.3f')} ms, max {_f(lat.get('max'), '.3f')} ms",
        f"  historian  {r['historian_rows']} rows",
    ]
    if "topology_changes" in r:
        lines += _topology_lines(r)
    if r.get("restart"):
        rs = r["restart"]
        lines.append(f"  restart    killed pid {rs['killed_pid']} at {rs['at_s']} s: "
                     f"restarts {rs['restarts']}, back after {rs['restart_s']} s")
    span = (PV_WINDOW - 1) * PV_STRIDE_S
    lines += [
        "Notes:",
        f"  PV: a forecast reads {PV_WINDOW} weather samples {PV_STRIDE_S:g} s apart, one "
        f"every {PV_STRIDE_S:g} s; for the first",
        f"  {span:g} s of a run the window is padded with its first sample, so a short run "
        "scores",
        "  few forecasts and its PV figure swings with the run's length.",
        "  One-way delay is not shown: the emulator stamps frames with the scenario's "
        "time (1990),",
        "  not with a synchronised clock.",
    ]
    return "\n".join(lines)


def _topology_lines(r: dict[str, Any]) -> list[str]:
    """--reconfigure: the switching, what the twin did, the accuracy around it."""
    sw = r["switching"]
    acc = r["accuracy"]
    idf = r["topology_identified"]
    out = [f"  switching  at {sw['step'] / r['rate_hz']:g} s: "
           + ", ".join(f"{n} {s}" for n, s in sw["switches"].items())
           + f" (statuses {sw['status']})"]
    for c in r["topology_changes"]:
        out.append(f"  topology   {c['from']} -> {c['to']} ({c['source']})")
    if idf["identified"]:
        out.append(f"  identified {idf['topology']} after {idf['snapshots']} snapshots")
    for when in ("before", "after", "after_on_new_topology"):
        a = acc[when]
        out.append(f"  {when.replace('_', ' ')}: |V| MAPE {_f(a['vm_mape_pct'], '.4f')} %, "
                   f"angle RMSE {_f(a['va_rmse_rad'], '.2e')} rad over {a['states']} states")
    return out
