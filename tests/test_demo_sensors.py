"""``gridtwin demo --sensors mqtt``: the emulator's micro sensors through a private
Mosquitto into the running twin; the report's ``devices`` and the accuracy bounds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli_demo import run_demo
from gateway.config import load_config
from gateway.historian import HistorianReader
from hil.mqttsensors import ieee33_fleet

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.slow
def test_demo_with_mqtt_sensors(tmp_path: Path) -> None:
    wd = tmp_path / "run"
    # 30 s: the fleet's line sensor ls26 dies at 15 s and is reborn at 25 s
    res = run_demo(wd, seconds=30.0, rate=50.0, bad_pct=10.0, cache=str(tmp_path / "cache"),
                   progress=False, keep_metrics=True, sensors="mqtt")
    n = len(ieee33_fleet(load_config("ieee33").network))
    dev = res["devices"]
    assert dev["unassigned"] == 0 and dev["online"] == n and dev["offline"] == 0
    emu = dev["emulator"]
    mq = dev["mqtt"]
    # 7 Sparkplug nodes born, one reborn after its death, plus the rebirths the twin
    # asked for after a lost report (a sequence gap)
    assert emu["deaths"] == 1 and emu["births"] >= 8
    assert emu["births"] <= 8 + emu["rebirth_requests"]
    assert emu["rebirth_requests"] <= mq["rebirths_requested"]
    assert (mq["rebirths_requested"] > 0) == (mq["gaps"] > 0)
    assert mq["malformed"] == 0 and mq["not_allowed"] == 0 and mq["unmapped"] == 0
    assert mq["duplicates"] == emu["duplicated"]
    assert res["frames_lost"] == 0
    if all((MODELS / f).is_file() for f in ("predictor.onnx", "pv_forecaster.onnx")):
        assert res["se_vm_mape_pct"] is not None and res["se_vm_mape_pct"] <= 0.1
    with HistorianReader(f"sqlite:///{wd / 'twin.db'}") as rd:
        run_id = rd.latest_run()
        ls26 = [e["kind"] for e in rd.events(run_id=run_id)
                if e["source"] == "devices" and e["detail"].get("device") == "feeder/ls26"]
    assert ls26 == ["device_online", "device_offline", "device_online"]
    assert res["historian_rows_by_table"]["devices"] >= n + 3
    text = res["_metrics_text"]
    assert f'gridtwin_devices{{quality="online"}} {n}.0' in text
    if shutil.which("promtool"):
        chk = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=60)
        assert chk.returncode == 0, chk.stdout.decode() + chk.stderr.decode()
