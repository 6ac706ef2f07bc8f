"""The shipped fleet deployment files: three NATS cluster configs that nats-server accepts
(with a throw-away certificate standing in for the real one), and systemd units for the
worker and the sink that start the commands they name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser
from hil.natsserver import nats_server_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFS = sorted((DEPLOY / "nats").glob("nats-*.conf"))


def test_three_cluster_nodes_route_to_each_other() -> None:
    assert [p.name for p in CONFS] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
    for p in CONFS:
        text = p.read_text()
        others = {f"nats-{j}.example.internal" for j in (1, 2, 3)} - {
            f"nats-{p.stem[-1]}.example.internal"}
        assert all(o in text for o in others) and f"server_name: gridtwin-{p.stem[-1]}" in text
        assert "password" in text and "tls {" in text  # credentials and TLS, as shipped


@pytest.mark.skipif(nats_server_binary() is None or shutil.which("openssl") is None,
                    reason="nats-server and openssl are Debian packages (.ci/run installs "
                    "nats-server)")
@pytest.mark.parametrize("conf", CONFS, ids=lambda p: p.name)
def test_nats_server_accepts_the_config(conf: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=nats-1.example.internal", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    text = conf.read_text().replace("/etc/nats/tls/server-key.pem", str(key)).replace(
        "/etc/nats/tls/server.pem", str(cert)).replace("/etc/nats/tls/ca.pem", str(cert))
    text = text.replace("/var/lib/nats/jetstream", str(tmp_path / "js"))
    local = tmp_path / conf.name
    local.write_text(text)
    env = {**os.environ, **{f"{r}_PASSWORD": "s3cret" for r in
                            ("EDGE", "WORKER", "SINK", "ADMIN", "SYS")}}
    r = subprocess.run([str(nats_server_binary()), "-t", "-c", str(local)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("unit,command", [("gridtwin-worker@.service", "worker"),
                                          ("gridtwin-sink.service", "sink")])
def test_fleet_units_run_real_commands(unit: str, command: str) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    exec_line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = exec_line.split("=", 1)[1].split()
    assert argv[0] == "/opt/gridtwin/bin/gridtwin" and argv[1] == command
    # the options the unit passes parse with the real command line (placeholders filled)
    args = [a.replace("${GRIDTWIN_BUS_URL}", "nats://127.0.0.1:4222").replace(
        "${GRIDTWIN_SINK_HISTORIAN}", "sqlite:///x.db").replace("%i", "01") for a in argv[1:]]
    ns = build_parser().parse_args(args)
    assert ns.bus == "nats://127.0.0.1:4222" and ns.metrics_bind.startswith("127.0.0.1:")
