"""``gridtwin config check`` passing means ``gridtwin run`` starts (issue 16, items 1-6, 9).

Every config here is a file under ``tests/data/config``. A broken one must give exit
status 2, one line per root problem naming its key, at most a count of follow-ons, and
never a traceback; ``run`` must refuse the same files at start-up with one line and 2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.config import load_config, parse_config
from gateway.config.json_schema import SCHEMA_FILE, schema_text
from gateway.config.problems import Implausible, UnknownReference
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "config"
GRIDTWIN = [sys.executable, "-m", "gateway.cli"]


def gridtwin(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*GRIDTWIN, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout, check=False)


def check(name: str) -> subprocess.CompletedProcess[str]:
    return gridtwin("config", "check", str(DATA / name))


def problem_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("  - ")]


def assert_refused(res: subprocess.CompletedProcess[str], key: str, *words: str,
                   roots: int = 1) -> str:
    """Exit 2, ``roots`` problem lines (the first naming ``key`` and ``words``), no
    traceback."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = problem_lines(res.stderr)
    assert len(lines) == roots, res.stderr
    assert lines[0].startswith(f"  - {key}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# -- item 1: MATPOWER's case33bw -------------------------------------------------------
def test_case33bw_with_conversion_code_checks_like_the_bundled_case() -> None:
    res = check("case33bw.toml")
    assert res.returncode == 0, res.stderr
    assert "load 3.715 MW / 2.300 MVAr" in res.stdout and "12.66 kV" in res.stdout


def test_case_in_ohms_and_kw_is_refused_as_implausible() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "case33bw_ohms.toml")
    roots = info.value.roots
    assert {type(p) for p in roots} == {Implausible}
    text = " ".join(p.message for p in roots)
    assert "kW" in text and "ohms" in text
    assert_refused(check("case33bw_ohms.toml"), "network.case", "kW", roots=2)


def test_case_with_code_the_loader_does_not_evaluate_names_the_line() -> None:
    line = assert_refused(check("case3_code.toml"), "network.case", "line 31", "savecase")
    assert "scale_impedance" in line


# -- item 2: a port out of range ---------------------------------------------------------
def test_port_out_of_range_names_the_key() -> None:
    assert_refused(check("bad_port.toml"), "streams[0] (scada).url", "99999", "port")
    res = gridtwin("run", str(DATA / "bad_port.toml"), "--no-estimator", "--seconds", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "streams[0] (scada).url" in res.stderr
    res = gridtwin("run", str(DATA / "minimal.toml"), "--no-estimator", "--seconds", "1",
                   "--stream-url", "scada=udp://127.0.0.1:99999")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = _run_lines(res)
    assert len(lines) == 1 and "--stream-url scada" in lines[0] and "out of range" in lines[0]


# -- item 3: the GTNET-SKT word count ----------------------------------------------------
def test_word_count_includes_the_header_words() -> None:
    assert_refused(check("skt_words.toml"), "streams[0] (scada).points", "302 words")


@pytest.mark.parametrize("n_points", [296, 297, 298, 299, 300])
@pytest.mark.parametrize("header", [True, False])
def test_config_accepts_exactly_what_the_codec_builds(n_points: int, header: bool) -> None:
    text = (DATA / "minimal.toml").read_text()
    pts = ", ".join(f'"s{i}:int32"' for i in range(n_points))
    text = text.replace('points = ["pmu1*", "flow*"]', f"points = [{pts}]")
    text = text.replace("header = true", f"header = {str(header).lower()}")
    try:
        GtnetSktCodec(["int32"] * n_points, header=header)
        codec_ok = True
    except ValueError:
        codec_ok = False
    try:
        parse_config(text)
        config_ok = True
    except ConfigError:
        config_ok = False
    assert config_ok == codec_ok


# -- item 4: start-up failures of run: exit 2, one line ---------------------------------
def _run_lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("gridtwin run:")]


def test_run_with_the_metrics_port_in_use_names_the_option() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = gridtwin("run", str(DATA / "minimal.toml"), "--no-estimator", "--seconds", "5",
                       "--metrics-bind", f"127.0.0.1:{port}")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = _run_lines(res)
    assert len(lines) == 1 and "--metrics-bind" in lines[0] and str(port) in lines[0]


def test_run_refuses_a_mysql_url_with_an_unknown_parameter() -> None:
    assert_refused(check("mysql_param.toml"), "historian.url", "sslmode")
    res = gridtwin("run", str(DATA / "mysql_param.toml"), "--no-estimator", "--seconds", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "sslmode" in res.stderr
    res = gridtwin("run", str(DATA / "minimal.toml"), "--no-estimator", "--seconds", "1",
                   "--historian", "mysql://root@127.0.0.1:3306/test?sslmode=require")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = _run_lines(res)
    assert len(lines) == 1 and "--historian" in lines[0] and "sslmode" in lines[0]


def test_run_with_the_stream_port_in_use_names_the_stream() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        res = gridtwin("run", str(DATA / "minimal.toml"), "--no-estimator", "--seconds", "5",
                       "--stream-url", f"scada=udp://127.0.0.1:{port}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = _run_lines(res)
    assert len(lines) == 1 and "streams[0] (scada).url" in lines[0] and "--stream-url" in lines[0]
    assert "metrics" not in lines[0]


def test_all_streams_disabled_is_refused_by_check_and_run() -> None:
    assert_refused(check("streams_disabled.toml"), "streams", "disabled")
    res = gridtwin("run", str(DATA / "streams_disabled.toml"), "--no-estimator",
                   "--seconds", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(_run_lines(res)) == 1


def test_a_config_that_checks_runs() -> None:
    assert check("minimal.toml").returncode == 0
    res = gridtwin("run", str(DATA / "minimal.toml"), "--no-estimator", "--seconds", "0.5")
    assert res.returncode == 0, res.stderr
    ready = next(json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{"))
    assert ready["ready"] is True and ready["metrics"][1] > 0


# -- item 5: accepted but broken ----------------------------------------------------------
def test_weather_naming_a_missing_meter_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "weather_missing.toml")
    (p,) = info.value.roots
    assert isinstance(p, UnknownReference) and p.key == "plants[0].weather" and p.value == "wx9"
    assert_refused(check("weather_missing.toml"), "plants[0].weather", "wx9", "wx8")


def test_unobservable_meter_set_is_refused_by_check() -> None:
    load_config(DATA / "unobservable.toml")  # a valid file ...
    assert_refused(check("unobservable.toml"), "meters", "not observable")  # ... not a twin


def test_unknown_estimator_method_is_refused_by_check() -> None:
    assert_refused(check("unknown_method.toml"), "estimator.method", "particle", "linear")


# -- item 6: cascades ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "key", "min_follow_ons"), [
    ("cascade_rating.toml", "plants[0].rating_mw", 3),
    ("missing_case.toml", "network.case", 3),
    ("stream_twice.toml", "streams[1] (scada2).points", 0),
])
def test_one_root_and_a_count_of_the_follow_ons(name: str, key: str, min_follow_ons: int
                                                 ) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / name)
    assert [p.key for p in info.value.roots] == [key]
    assert len(info.value.follow_ons) >= min_follow_ons
    assert all(p.cause is info.value.roots[0] for p in info.value.follow_ons)
    res = check(name)
    assert_refused(res, key)
    if min_follow_ons:
        assert f"({len(info.value.follow_ons)} follow-on problem(s)" in res.stderr


# -- item 9: the small ones ---------------------------------------------------------------
def test_base_voltages_are_listed_as_kv_not_a_python_list() -> None:
    res = gridtwin("config", "check", "ieee33")
    assert res.returncode == 0 and "12.66 kV" in res.stdout and "[12.66]" not in res.stdout


def test_points_listing_into_a_closed_pipe_exits_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*GRIDTWIN, "config", "check", "ieee33", "--points"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written (like `| head`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


# -- the JSON Schema -----------------------------------------------------------------------
def test_shipped_schema_is_the_generated_one() -> None:
    shipped = ROOT / "gateway" / "configs" / SCHEMA_FILE
    assert shipped.read_text() == schema_text(), "run gridtwin config schema -o " + str(
        shipped.relative_to(ROOT))
    res = gridtwin("config", "schema")
    assert res.returncode == 0 and res.stdout == schema_text()


def test_configs_validate_against_the_schema() -> None:
    import tomllib

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = [*(ROOT / "gateway" / "configs").glob("*.toml"), DATA / "minimal.toml",
            DATA / "case33bw.toml", DATA / "weather_missing.toml"]
    for path in good:
        errors = list(validator.iter_errors(tomllib.loads(path.read_text())))
        assert not errors, f"{path.name}: {errors[0].message}"
    # shape mistakes are caught by the schema too
    bad = tomllib.loads((DATA / "cascade_rating.toml").read_text())
    assert any(list(e.path) == ["plants", 0, "rating_mw"] for e in validator.iter_errors(bad))
    bad = tomllib.loads((DATA / "minimal.toml").read_text())
    bad["streams"][0]["format"] = "gtnet"
    assert not validator.is_valid(bad)


def test_schema_command_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "twin.schema.json"
    res = gridtwin("config", "schema", "-o", str(out))
    assert res.returncode == 0 and out.read_text() == schema_text()
    assert json.loads(out.read_text())["properties"]["meters"]["items"]["properties"][
        "kind"]["enum"] == ["pmu", "scada", "weather", "pv"]


def test_plausibility_warns_about_a_large_impedance_and_refuses_ohms() -> None:
    from estimator.network import load_case
    from gateway.config.problems import Problems
    from gateway.config.rules.network import WARN_BRANCH_Z_PU, plausible

    net = load_case("ieee33")
    pr = Problems()
    assert plausible(pr, net) and not pr.items and not pr.warnings
    # one long line of 3 pu: doubtful, not wrong
    big = net.with_bus(99, 12.66).with_branch(18, 99, 1.0, 3.0)
    pr = Problems()
    assert plausible(pr, big) and not pr.items
    (w,) = pr.warnings
    assert isinstance(w, Implausible) and isinstance(w.value, float)
    assert w.value > WARN_BRANCH_Z_PU and "18-99" in w.message
    # every impedance in ohms (x Zbase = 16 ohm): the voltage would collapse
    zb = 12.66**2 / net.base_mva
    br = net.branches
    ohms = replace(net, branches=replace(br, r=br.r * zb, x=br.x * zb))
    pr = Problems()
    assert not plausible(pr, ohms)
    assert [type(p) for p in pr.items] == [Implausible] and "ohms" in pr.items[0].message


def test_a_meter_table_over_many_branches_reports_its_problem_once() -> None:
    text = (ROOT / "gateway" / "configs" / "ieee33.toml").read_text()
    old = 'accuracy = { p = "1%", q = "1%" }'
    assert old in text
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace(old, 'accuracy = { p = "1%" }'))
    assert [p.key for p in info.value.problems] == ["meters[7] (flow).accuracy.q"]
