"""What ships in deploy/ works as shipped: lab configs, their RSCAD point tables, systemd
units, and the Prometheus config and rules (promtool)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
LAB_CONFIGS = sorted((DEPLOY / "configs").glob("*.toml"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PROM = DEPLOY / "prometheus"
HEADER_POINTS = ("SEQ", "TS_SEC", "TS_NSEC")


# --------------------------------------------------------------------------- lab configs


def test_the_three_lab_configs_ship() -> None:
    names = {p.name for p in LAB_CONFIGS}
    assert names == {"lab-skt-udp.toml", "lab-skt-tcp.toml", "lab-pmu-c37.toml"}


@pytest.mark.parametrize("path", LAB_CONFIGS, ids=lambda p: p.name)
def test_lab_config_passes_config_check(path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert main(["config", "check", str(path), "--points"]) == 0
    out = capsys.readouterr().out
    assert "commands off" in out  # a lab config never writes back to the RTDS by default


@pytest.mark.parametrize("path", LAB_CONFIGS, ids=lambda p: p.name)
def test_lab_config_is_a_real_lab_not_loopback(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.enabled_streams
    for s in cfg.enabled_streams:
        assert 0 < s.rate_hz <= 1000
        assert s.host != "0.0.0.0", f"{s.name}: bind the lab NIC, not every interface"
        assert all(not a.startswith("127.") for a in s.allow), f"{s.name}: allow the GTNET"
    # the systemd unit's StateDirectory holds the historian
    assert cfg.historian_url == "sqlite:////var/lib/gridtwin/twin.db"
    # every channel travels in exactly one enabled stream, as in the bundled config
    carried = sorted(i for s in cfg.enabled_streams for i in s.channels)
    assert carried == list(range(len(cfg.channels)))


def test_lab_configs_use_the_transport_they_are_named_after() -> None:
    udp = load_config(DEPLOY / "configs" / "lab-skt-udp.toml")
    assert {(s.format, s.scheme, s.header) for s in udp.enabled_streams} == {
        ("gtnet-skt", "udp", True)}
    tcp = load_config(DEPLOY / "configs" / "lab-skt-tcp.toml")
    assert {(s.format, s.scheme) for s in tcp.enabled_streams} == {("gtnet-skt", "tcp")}
    c37 = load_config(DEPLOY / "configs" / "lab-pmu-c37.toml")
    pmu_streams = [s for s in c37.enabled_streams if s.format == "c37.118"]
    assert len(pmu_streams) == 7
    assert all(len(s.pmus) == 1 for s in pmu_streams)


def _readme_tables() -> dict[str, list[tuple[int, str, str, str]]]:
    """Stream name -> rows (RSCAD point, twin point, type, unit) of deploy/configs/README."""
    text = (DEPLOY / "configs" / "README.md").read_text(encoding="utf-8")
    tables: dict[str, list[tuple[int, str, str, str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = re.match(r"### Stream `([^`]+)`", line)
        if m:
            current = m[1]
            tables[current] = []
            continue
        m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*(int|float)\s*\|\s*([^|]+?)\s*\|$",
                     line)
        if m and current is not None:
            tables[current].append((int(m[1]), m[2], m[3], m[4]))
    return tables


def test_readme_point_tables_match_the_udp_config() -> None:
    """The RSCAD point lists in deploy/configs/README.md are the config's, in order."""
    cfg = load_config(DEPLOY / "configs" / "lab-skt-udp.toml")
    tables = _readme_tables()
    assert set(tables) == {s.name for s in cfg.streams}
    for s in cfg.streams:
        rows = tables[s.name]
        assert [r[0] for r in rows] == list(range(len(rows))), s.name
        assert [(r[1], r[2]) for r in rows[:3]] == [(f"{h} (header)", "int")
                                                     for h in HEADER_POINTS]
        want = [(p.name, "int" if p.type == "int32" else "float",
                 cfg.channels[p.channel].unit if p.channel is not None else "-")
                for p in s.points]
        assert [(r[1], r[2], r[3]) for r in rows[3:]] == want, s.name
    # the TCP config carries the same lists, without the header rows
    tcp = load_config(DEPLOY / "configs" / "lab-skt-tcp.toml")
    for s in tcp.streams:
        assert [p.name for p in s.points] == [r[1] for r in tables[s.name][3:]]
    # and the C37 config's SKT streams are the UDP config's
    c37 = load_config(DEPLOY / "configs" / "lab-pmu-c37.toml")
    for s in c37.streams:
        if s.format == "gtnet-skt":
            assert [p.name for p in s.points] == [r[1] for r in tables[s.name][3:]]


def test_rscad_header_comments_state_the_frame_sizes() -> None:
    """'Points to send' in the UDP/TCP config comments agrees with the point lists."""
    for name, extra in (("lab-skt-udp.toml", 3), ("lab-skt-tcp.toml", 0)):
        path = DEPLOY / "configs" / name
        text = path.read_text(encoding="utf-8")
        m = re.search(r"Points to send \.+ (\d+) \(pmu\), (\d+) \(scada\), (\d+) \(weather\)",
                      text)
        assert m, name
        cfg = load_config(path)
        sizes = {s.name: len(s.points) + extra for s in cfg.streams}
        assert (sizes["pmu"], sizes["scada"], sizes["weather"]) == tuple(
            int(x) for x in m.groups()), name


def test_gtnet_pmu_table_matches_the_c37_config() -> None:
    """The GTNET-PMU table in lab-pmu-c37.toml's comment: station, IDCODE, port, phasors."""
    path = DEPLOY / "configs" / "lab-pmu-c37.toml"
    rows = re.findall(r"^#\s+(\d)\s+(PMU\d+)\s+(\d+)\s+(\d{4})\s+(V.*)$",
                      path.read_text(encoding="utf-8"), re.M)
    cfg = load_config(path)
    pmu_streams = [s for s in cfg.enabled_streams if s.format == "c37.118"]
    assert len(rows) == len(pmu_streams)
    for (_, station, idcode, port, phasors), s in zip(rows, pmu_streams, strict=True):
        (pmu,) = s.pmus
        assert pmu.station == station
        assert pmu.idcode == int(idcode) == s.idcode
        assert s.port == int(port)
        assert [p.strip() for p in phasors.split(",")] == [ph.name for ph in pmu.phasors]
        assert pmu.phasors[0].kind == "v"


# --------------------------------------------------------------------------- systemd

HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "MemoryDenyWriteExecute": "yes",
    "Restart": "on-failure",  # the twin; the emulator: always (below)
}


def _unit(path: Path) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None,
                                      empty_lines_in_values=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text(encoding="utf-8"))
    return cp


def test_the_units_ship() -> None:
    assert {p.name for p in UNITS} == {"gridtwin.service", "gridtwin-realtime.service",
                                       "gridtwin-emulator.service", "gridtwin-worker@.service",
                                       "gridtwin-sink.service"}


@pytest.mark.parametrize("name", ["gridtwin.service", "gridtwin-realtime.service"])
def test_twin_units_notify_readiness_and_feed_a_watchdog(name: str) -> None:
    """Type=notify: started means listening (gateway.sdnotify sends READY=1), and a twin
    whose event loop stops is restarted (WATCHDOG=1 from the loop)."""
    svc = _unit(DEPLOY / "systemd" / name)["Service"]
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"].endswith("s") and float(svc["WatchdogSec"][:-1]) >= 5
    assert svc["RestartPreventExitStatus"] == "2"  # a config error is not restarted


def test_scheduling_of_the_two_twin_units_is_stated(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """The plain unit forbids real-time scheduling and says the published latency figures
    are SCHED_FIFO runs; the real-time variant allows exactly the twin's priorities."""
    plain_path = DEPLOY / "systemd" / "gridtwin.service"
    plain = _unit(plain_path)["Service"]
    assert plain["RestrictRealtime"] == "yes" and "--realtime" not in plain["ExecStart"]
    text = plain_path.read_text(encoding="utf-8")
    assert "SCHED_FIFO" in text and "gridtwin-realtime.service" in text
    rt_path = DEPLOY / "systemd" / "gridtwin-realtime.service"
    rt = _unit(rt_path)
    assert rt["Service"]["ExecStart"].split()[1:] == [*plain["ExecStart"].split()[1:],
                                                       "--realtime"]
    assert rt["Service"]["RestrictRealtime"] == "no"
    # RLIMIT_RTPRIO: SCHED_FIFO without a capability, up to the twin's highest priority
    # (the one `gridtwin run --help` names for --realtime)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    m = re.search(r"SCHED_FIFO\s+priority\s+(\d+)", capsys.readouterr().out)
    assert m, "run --help no longer names the --realtime priority"
    assert int(rt["Service"]["LimitRTPRIO"]) == int(m[1])
    # RLIMIT_NICE: the historian's process at its nice value (gateway.realtime.NICE_OF)
    from gateway.realtime import NICE_OF

    assert int(rt["Service"]["LimitNICE"]) == NICE_OF["historian"]
    assert rt["Service"]["CapabilityBoundingSet"] == ""
    assert rt["Unit"]["Conflicts"] == "gridtwin.service"
    # the rest of the hardening is the plain unit's
    same = {k: v for k, v in plain.items() if k not in {"ExecStart", "RestrictRealtime"}}
    assert {k: rt["Service"].get(k) for k in same} == same


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened(path: Path) -> None:
    unit = _unit(path)
    svc = unit["Service"]
    for key, want in HARDENING.items():
        assert key in svc, f"{path.name}: [Service] {key}= missing"
        if key == "Restart" and path.name == "gridtwin-emulator.service":
            want = "always"  # runs a day at a time, then starts the next day
        assert svc[key] == want, f"{path.name}: {key}={svc[key]!r}, want {want!r}"
    assert svc["SystemCallFilter"]  # @system-service (configparser keeps the last one)
    assert "@system-service" in path.read_text(encoding="utf-8")
    assert svc["StateDirectory"] and svc["LimitNOFILE"]
    assert svc["ExecStart"].startswith("/opt/gridtwin/bin/gridtwin ")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _units_for_this_machine(tmp_path: Path) -> list[Path]:
    """The shipped units with ExecStart pointing at this venv's gridtwin (verify needs it)."""
    exe = Path(sys.executable).parent / "gridtwin"
    if not exe.exists():
        pytest.skip(f"no gridtwin entry point next to {sys.executable}")
    out = []
    for u in UNITS:
        dst = tmp_path / u.name
        dst.write_text(u.read_text(encoding="utf-8").replace("/opt/gridtwin/bin/gridtwin",
                                                             str(exe)), encoding="utf-8")
        out.append(dst)
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    units = _units_for_this_machine(tmp_path)
    r = subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    # verify prints problems it does not count as errors (unknown keys, bad values)
    assert r.stderr.strip() == "", r.stderr


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    for unit in _units_for_this_machine(tmp_path):
        r = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                           capture_output=True, text=True, timeout=60)
        if "--offline" in r.stderr and r.returncode != 0:
            pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        assert m, r.stdout + r.stderr
        # 0 = fully locked down, 10 = unprotected; systemd calls < 2 "OK"
        assert float(m[1]) < 2.0, f"{unit.name}: exposure {m[1]}\n{r.stdout}"


# --------------------------------------------------------------------------- promtool


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; .ci/run installs it)")
    return tool


def test_promtool_check_config() -> None:
    r = subprocess.run([_promtool(), "check", "config", str(PROM / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    r = subprocess.run([_promtool(), "check", "rules", str(PROM / "alerts.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_rule_unit_tests_fire_every_alert() -> None:
    """alerts_test.yml makes each alert of alerts.yml fire on synthetic series."""
    r = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=PROM,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = set(re.findall(r"^\s+- alert: (\w+)$",
                            (PROM / "alerts.yml").read_text(encoding="utf-8"), re.M))
    tested = set(re.findall(r"alertname: (\w+)",
                            (PROM / "alerts_test.yml").read_text(encoding="utf-8")))
    assert alerts and alerts <= tested, f"alerts without a test: {alerts - tested}"
