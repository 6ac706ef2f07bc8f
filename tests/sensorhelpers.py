"""Shared helpers of the MQTT sensor tests: a twin config with sensors, a private broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

SENSOR_METERS = """
[[meters]]
id = "ls26"
kind = "scada"
branches = ["6-26"]
quantities = ["p", "q"]
accuracy = { p = "1%", q = "1%" }
floor = { p = 0.002, q = 0.002 }

[[meters]]
id = "tx18"
kind = "scada"
bus = 18
quantities = ["pinj", "qinj"]
accuracy = { pinj = "1%", qinj = "1%" }
floor = { pinj = 0.001, qinj = 0.001 }
"""

SENSORS = """
[mqtt]
url = "mqtt://127.0.0.1:{port}/#"
topics = ["spBv1.0/feeder/#", "senml/#"]
qos = 1
max_payload = 4096

[[sensors]]
id = "ls26"
kind = "line_current"
device = "feeder/lat/ls26"
channels = {{ P = "ls26.p", Q = "ls26.q" }}
period_s = 10
stale_s = 30
max_age_s = 60

[[sensors]]
id = "tx18"
kind = "transformer_meter"
device = "senml/tx18"
channels = {{ pinj = "tx18.pinj", qinj = "tx18.qinj" }}
period_s = 10
stale_s = 30
max_age_s = 60
model = "PT-2"
"""


def ieee33_text() -> str:
    return (resources.files("gateway") / "configs" / "ieee33.toml").read_text()


def sensor_config_text(port: int = 1883) -> str:
    return ieee33_text() + SENSOR_METERS + SENSORS.format(port=port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_bin() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                        if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        raise RuntimeError("mosquitto is not installed (.ci/run installs it)")
    return exe


@contextlib.contextmanager
def broker(users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None
           ) -> Iterator[int]:
    """A private Mosquitto on a free loopback port (anonymous, or these users only;
    ``tls``: (certificate, key) makes it a TLS listener)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gridtwin-mqtt-") as d:
        conf = Path(d) / "mosquitto.conf"
        # started as root, mosquitto would switch to its own user, who cannot read a
        # password file in this private directory: stay the user who started it
        lines = [f"listener {port} 127.0.0.1", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")
        if tls is not None:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if users:
            pw = Path(d) / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            pw.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True,
                           capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10.0
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=0.5):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"mosquitto did not start on {port}: {err}")
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def self_signed(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (openssl)."""
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key
