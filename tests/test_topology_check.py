"""``gridtwin topology check``: the bundled IEEE33 config (its meters cannot tell three
end-of-loop reconfigurations from the normal topology; a meter at bus 18 can), the config
it writes with the recommended meter, and the exit status 2 on config and option errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[1]
END_OF_LOOP = {"sw_16_17=open,sw_18_33=closed", "sw_17_18=open,sw_18_33=closed",
               "sw_32_33=open,sw_18_33=closed"}


def test_bundled_config_recommends_a_meter_and_writes_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ieee33-tx18.toml"
    assert main(["topology", "check", "ieee33", "--json", "--write-config", str(out)]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["cases"] == 59 and not rep["observable"]
    assert {c["case"] for c in rep["indistinguishable"]} == END_OF_LOOP
    assert all(c["closest"] == "normal" and c["lambda"] < rep["min_lambda"]
               for c in rep["indistinguishable"])
    (rec,) = rep["recommended"]
    assert rec["meter"] == "tx18" and set(rec["separates"]) == END_OF_LOOP
    assert 'buses = [18]' in rec["toml"] and rep["meter_set"] == ["tx18"]
    assert rep["unresolved"] == []
    # the written config: valid, the meter's channels carried by the scada stream
    cfg = load_config(out)
    names = [c.name for c in cfg.channels]
    assert names[-2:] == ["tx18.pinj", "tx18.qinj"]
    assert {"tx18.pinj", "tx18.qinj"} <= {p.name for p in cfg.stream("scada").points}
    # and with it every reconfiguration is distinguishable: exit 0
    assert main(["topology", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "every reconfiguration is distinguishable" in text and "INDISTINGUISHABLE" not in text


def test_the_same_meter_named_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "check", "ieee33", "--add-meter", "tx18", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["added"] == ["tx18"] and rep["indistinguishable"] == []
    assert rep["recommended"] == [] and rep["meter_set"] == ["tx18"]


@pytest.mark.parametrize(("args", "message"), [
    (["--add-meter", "tx99"], "--add-meter: 'tx99': the network ieee33 has no bus 99"),
    (["--add-meter", "ct18"], "--add-meter: 'ct18' is not a meter name"),
    (["--add-meter", "flow18_34"], "the network ieee33 has no branch 18-34"),
    (["--min-lambda", "0"], "--min-lambda: must be > 0"),
])
def test_a_wrong_option_exits_2_naming_it(args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "check", "ieee33", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_config_error_exits_2_naming_the_key_without_a_traceback(tmp_path: Path) -> None:
    text = (ROOT / "gateway" / "configs" / "ieee33.toml").read_text("utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n[topology]\npseudo_rel = -0.5\n", "utf-8")
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "topology", "check", str(bad)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2, res.stderr
    assert "topology.pseudo_rel" in res.stderr and "Traceback" not in res.stderr
    assert res.stdout == ""
