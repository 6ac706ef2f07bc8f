"""The twin config: the bundled ieee33 config and broken configs named by key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from gateway.config import load_config, parse_config, resolve
from gateway.errors import ConfigError

BUNDLED, _ = resolve("ieee33")


def test_bundled_ieee33_describes_the_paper_case() -> None:
    cfg = load_config("ieee33")
    net = cfg.network
    assert net.n_bus == 37  # 33 feeder buses + 4 plant nodes
    assert [p.bus for p in cfg.plants] == [8, 16, 22, 33]
    assert [p.node for p in cfg.plants] == [34, 35, 36, 37]
    assert all(p.latitude == 36.1 and p.longitude == -79.95 for p in cfg.plants)
    pmu_buses = sorted({c.bus for c in cfg.channels if c.kind == "pmu" and c.bus})
    assert pmu_buses == [1, 3, 6, 11, 15, 21, 29]
    flows = [c for c in cfg.channels if c.quantity in ("p", "q")]
    assert len(flows) == 2 * 32  # every feeder branch, not the plant transformers
    inj_buses = sorted({c.bus for c in cfg.channels if c.quantity == "pinj"})
    assert inj_buses == [4, 7, 10, 20, 21, 25, 27, 31]
    vm = cfg.channels[cfg.channel_index["pmu3.vm"]]
    assert vm.unit == "kV" and vm.rel == pytest.approx(0.0005) and vm.figure == "max"
    assert vm.sigma_at(12.66) == pytest.approx(0.0005 * 12.66 / 3)
    assert [c.index for c in cfg.channels] == list(range(len(cfg.channels)))
    # every channel travels in exactly one enabled stream
    carried = [i for s in cfg.enabled_streams for i in s.channels]
    assert sorted(carried) == list(range(len(cfg.channels)))
    assert all(len(s.points) <= 300 for s in cfg.streams)
    assert cfg.estimator.deadline_s == pytest.approx(0.02)
    assert cfg.metrics_bind.startswith("127.0.0.1:")
    assert not cfg.commands.enabled


def test_pmu_current_channels_are_the_feeder_branches_at_the_bus() -> None:
    cfg = load_config("ieee33")
    names = {c.name for c in cfg.channels if c.meter.startswith("pmu3.")}
    assert names == {f"pmu3.{b}.{q}" for b in ("2-3", "3-4", "3-23") for q in ("im", "ia")}
    end = {c.end for c in cfg.channels if c.meter.startswith("pmu3.")}
    assert end == {3}


def test_c37_stream_groups_phasors_per_pmu() -> None:
    s = load_config("ieee33").stream("pmu-c37")
    assert not s.enabled and [p.station for p in s.pmus][:2] == ["PMU1", "PMU3"]
    assert sum(len(p.phasors) for p in s.pmus) == 22


def test_digest_changes_with_content() -> None:
    a = parse_config(BUNDLED)
    b = parse_config(BUNDLED.replace('lag_ms = 10', 'lag_ms = 5'))
    assert a.digest != b.digest and b.align.lag_s == pytest.approx(0.005)


def test_config_file_relative_matpower_case(tmp_path: Path) -> None:
    from estimator.network import CASES_DIR

    other = sorted(p for p in CASES_DIR.glob("*.m") if p.stem != "ieee33")
    assert other, "a second bundled MATPOWER case is expected"
    (tmp_path / "grid.m").write_text(other[0].read_text())
    (tmp_path / "twin.toml").write_text('[network]\ncase = "grid.m"\n')
    cfg = load_config(tmp_path / "twin.toml")
    assert cfg.network.n_bus > 0 and cfg.channels == []


BROKEN = [
    # (what to replace, replacement, key that must be named)
    ('case = "ieee33"', 'case = "nosuchcase"', "network.case"),
    ("bus = 8\nnode = 34", "bus = 99\nnode = 34", "plants[0].bus"),
    ("node = 35", "node = 12", "plants[1].node"),
    ('id = "pmu1"\nkind = "pmu"', 'id = "pmu1"\nkind = "ammeter"', "meters[0] (pmu1).kind"),
    ('id = "pmu3"\nkind = "pmu"\nbus = 3', 'id = "pmu3"\nkind = "pmu"\nbus = 300',
     "meters[1] (pmu3).bus"),
    ('quantities = ["p", "q"]', 'quantities = ["p", "volts"]', "meters[7] (flow).quantities"),
    ('accuracy = { p = "1%", q = "1%" }', 'accuracy = { p = "1%" }',
     "meters[7] (flow).accuracy.q"),
    ('accuracy = { pinj = "0.5%", qinj = "0.5%" }', 'accuracy = { pinj = "half", qinj = "0.5%" }',
     "meters[8] (inj).accuracy.pinj"),
    ('url = "udp://127.0.0.1:7101"', 'url = "mqtt://127.0.0.1:7101"', "streams[1] (scada).url"),
    ('format = "gtnet-skt"\nheader = true\nrate_hz = 50\nallow = ["127.0.0.1"]\n'
     'points = ["wx*"]', 'format = "gtnet"\nheader = true\nrate_hz = 50\n'
     'allow = ["127.0.0.1"]\npoints = ["wx*"]', "streams[2] (weather).format"),
    ('points = ["wx*"]', 'points = ["wx*", "wx8.ghi"]', "streams[2] (weather).points"),
    ('points = ["wx*"]', 'points = ["wx8.sunshine"]', "streams[2] (weather).points[0]"),
    ('points = ["pmu*", "pmu_status:int32"]', 'points = ["pmu*", "pmu_status:int16"]',
     "streams[0] (pmu).points[1]"),
    ("rate_hz = 50\nallow = [\"127.0.0.1\"]\npoints = [\"pmu*\", \"pmu_status:int32\"]",
     "rate_hz = 5000\nallow = [\"127.0.0.1\"]\npoints = [\"pmu*\", \"pmu_status:int32\"]",
     "streams[0] (pmu).rate_hz"),
    ('allow = ["127.0.0.1"]\npoints = ["wx*"]', 'allow = ["rtds-card"]\npoints = ["wx*"]',
     "streams[2] (weather).allow"),
    ('enabled = false\nurl = "tcp://127.0.0.1:4712"', 'enabled = true\nurl = "tcp://127.0.0.1:4712"',
     "streams[3] (pmu-c37).points"),
    ('url = "sqlite:///twin.db"', 'url = "postgres://x/y"', "historian.url"),
    ("latitude = 36.1", "latitude = 136.1", "plants[0].latitude"),
    ('bind = "127.0.0.1:9108"', 'bind = "everywhere"', "metrics.bind"),
    ("[commands]\nenabled = false", "[commands]\nenabled = true", "commands.url"),
    ('method = "linear"', 'method = "linear"\ndeadline_ms = -1', "estimator.deadline_ms"),
    ("[align]\nlag_ms = 10", "[align]\nlag_ms = 10\nwait = true", "align.wait"),
    ('name = "pv22"', 'name = "pv16"', "plants"),
    ("node = 34\nrating_mw = 1.0\ntransformer = { r_pu = 0.08, x_pu = 0.48 }",
     "node = 34\nrating_mw = 1.0\ntransformer = { r_pu = 0.0, x_pu = 0.0 }",
     "plants[0].transformer"),
]


@pytest.mark.parametrize(("old", "new", "key"), BROKEN)
def test_broken_config_names_the_key(old: str, new: str, key: str) -> None:
    assert old in BUNDLED, f"test fixture out of date: {old!r}"
    with pytest.raises(ConfigError) as info:
        parse_config(BUNDLED.replace(old, new, 1))
    keys = [p.key for p in info.value.problems]
    assert key in keys, f"expected a problem at {key!r}, got {info.value.problems}"
    assert all(p.message for p in info.value.problems)


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = BUNDLED.replace('url = "sqlite:///twin.db"', 'url = "oracle://x"').replace(
        'bind = "127.0.0.1:9108"', 'bind = "nowhere"')
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert {"historian.url", "metrics.bind"} <= {p.key for p in info.value.problems}


def test_toml_syntax_error_is_reported() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[network\ncase = 1")


def test_config_check_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "check", "ieee33"]) == 0
    out = capsys.readouterr().out
    assert "37 buses" in out and "2n-1 = 73" in out and "stream scada" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(BUNDLED.replace('url = "sqlite:///twin.db"', 'url = "oracle://x"'))
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "historian.url" in err and "fix:" in err
    assert main(["config", "check", str(tmp_path / "missing.toml")]) == 2


def test_sigma_floor_applies_near_zero() -> None:
    cfg = load_config("ieee33")
    p = cfg.channels[cfg.channel_index["flow.1-2.p"]]
    assert p.sigma_at(0.0) == pytest.approx(0.002 / 3)
    assert p.sigma_at(3.0) == pytest.approx(0.03 / 3)
    assert np.isfinite(p.sigma_at(-1e9))
