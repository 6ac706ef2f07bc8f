"""Grid model: bundled cases, MATPOWER reader, admittances, validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from estimator import pgm
from estimator.errors import NetworkError
from estimator.network import bundled_cases, load_case, parse_matpower

TINY = """
function mpc = tiny
%% a 4-bus test case; rows end with ';' or a newline, commas allowed
mpc.version = '2';
mpc.baseMVA = 10;   % base
mpc.bus = [
  1 3 0   0   0 0 1 1 0 12.66 1 1.1 0.9;
  2 1 0.5 0.2 0 0 1 1 0 12.66 1 1.1 0.9
  3,1,0.3,0.1,0,0,1,1,0,12.66,1,1.1,0.9;   % comma separated
  4 1 0.2 0.1 0 0 1 1 0 12.66 1 1.1 0.9;
];
mpc.gen = [ 1 0 0 10 -10 1.0 10 1 10 0; ];
mpc.branch = [
  1 2 0.01 0.02 0 0 0 0 0 0 1 -360 360;
  2 3 0.01 0.02 0 0 0 0 0 0 1 -360 360;
  3 4 0.01 0.02 0 0 0 0 0 0 1 -360 360;
  %BRANCH%
];
mpc.gencost = [ 2 0 0 3 0.1 20 0; ];
mpc.bus_name = { 'a'; 'b'; 'c'; 'd'; };
"""


def write_case(tmp_path: Path, text: str, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.m"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def ieee33():
    return load_case("ieee33")


def test_bundled_cases_listed():
    names = bundled_cases()
    assert "ieee33" in names and "case14" in names


def test_ieee33_data(ieee33):
    net = ieee33
    assert net.n_bus == 33
    assert net.base_mva == 10.0
    assert np.allclose(net.base_kv, 12.66)
    assert net.n_branch == 37
    assert int(net.branches.in_service.sum()) == 32
    open_ties = {net.branches.names[k] for k in np.flatnonzero(~net.branches.in_service)}
    assert open_ties == {"8-21", "9-15", "12-22", "18-33", "25-29"}
    assert net.p_load.sum() * net.base_mva == pytest.approx(3.715, abs=1e-12)
    assert net.q_load.sum() * net.base_mva == pytest.approx(2.300, abs=1e-12)
    assert int(net.bus_ids[net.slack]) == 1
    assert net.vm_slack == 1.0
    # branch 1-2 is 0.0922 + j0.0470 ohm on Zbase = 12.66^2 / 10
    k = net.find_branch(2, 1)
    zb = 12.66**2 / 10
    assert net.branches.r[k] * zb == pytest.approx(0.0922, rel=1e-9)
    assert net.branches.x[k] * zb == pytest.approx(0.0470, rel=1e-9)


def test_ieee33_base_load_power_flow(ieee33):
    net = ieee33
    v = pgm.power_flow(net, net.p_inj, net.q_inj, batch=False)
    vm = np.abs(v)
    assert vm.min() == pytest.approx(0.91309, abs=5e-6)
    assert int(net.bus_ids[vm.argmin()]) == 18
    ybus = net.ybus()
    s = v * np.conj(ybus @ v)
    # losses = sum of all injections (the slack supplies them)
    assert s.real.sum() * net.base_mva * 1e3 == pytest.approx(202.7, abs=0.05)
    # the bundled admittance matrix satisfies S = V conj(Ybus V) at PGM's solution
    pq = np.arange(net.n_bus) != net.slack
    spec = net.p_inj + 1j * net.q_inj
    assert np.abs(s - spec)[pq].max() < 1e-8


def test_branch_admittance_consistent_with_ybus(ieee33):
    net = ieee33
    v = pgm.power_flow(net, net.p_inj, net.q_inj, batch=False)
    yf, yt = net.branch_admittance()
    br = net.branches
    # S_f = V_f conj(I_f), S_t = V_t conj(I_t); their sum per branch is the branch loss
    sf = v[br.from_idx] * np.conj(yf @ v)
    st = v[br.to_idx] * np.conj(yt @ v)
    s_bus = v * np.conj(net.ybus() @ v)
    cinc = abs(net.incidence())
    # bus injection = sum of flows leaving the bus into its branches
    from_part = np.bincount(br.from_idx, weights=sf.real, minlength=net.n_bus)
    to_part = np.bincount(br.to_idx, weights=st.real, minlength=net.n_bus)
    assert np.allclose(from_part + to_part, s_bus.real, atol=1e-12)
    assert np.abs(sf[~br.in_service]).max() == 0.0
    assert (sf + st).real.sum() == pytest.approx(s_bus.real.sum(), abs=1e-12)
    assert cinc.shape == (net.n_branch, net.n_bus)
    assert np.all(np.asarray(net.incidence().sum(axis=1)).ravel() == 0)


def test_power_flow_batch_matches_single(ieee33):
    net = ieee33
    scale = np.array([0.3, 1.0, 1.4])[:, None]
    p = scale * net.p_inj
    q = scale * net.q_inj
    vb = pgm.power_flow(net, p, q)
    assert vb.shape == (3, net.n_bus)
    v1 = pgm.power_flow(net, net.p_inj, net.q_inj, batch=False)
    assert np.abs(vb[1] - v1).max() < 1e-10
    assert np.abs(vb[0]).min() > np.abs(vb[2]).min()


def test_other_matpower_case_matches_pandapower():
    pp = pytest.importorskip("pandapower")
    import pandapower.networks as pn

    net = load_case("case14")
    assert net.n_bus == 14 and net.n_branch == 20
    ppnet = pn.case14()
    pp.runpp(ppnet, tolerance_mva=1e-11, numba=False)
    # generator reactive powers from pandapower's solution make every bus a PQ bus
    q_gen = np.zeros(net.n_bus)
    for bus, q in zip(ppnet.gen.bus.to_numpy(), ppnet.res_gen.q_mvar.to_numpy(), strict=True):
        q_gen[int(bus)] += q / net.base_mva
    p_inj = net.p_gen - net.p_load
    q_inj = q_gen - net.q_load
    v = pgm.power_flow(net, p_inj, q_inj, batch=False)
    vm_ref = ppnet.res_bus.vm_pu.to_numpy()
    va_ref = np.deg2rad(ppnet.res_bus.va_degree.to_numpy())
    v_ref = vm_ref * np.exp(1j * va_ref)
    assert np.abs(v - v_ref).max() < 1e-8
    # and our Ybus (taps, charging, bus shunt) satisfies the equations at pandapower's point
    s = v_ref * np.conj(net.ybus() @ v_ref)
    pq = np.arange(net.n_bus) != net.slack
    assert np.abs(s - (p_inj + 1j * q_inj))[pq].max() < 1e-8


def test_parser_reads_tiny_case(tmp_path):
    net = load_case(write_case(tmp_path, TINY.replace("%BRANCH%", "")))
    assert net.n_bus == 4 and net.n_branch == 3
    assert net.p_load.tolist() == pytest.approx([0, 0.05, 0.03, 0.02])
    mpc = parse_matpower(TINY, name="tiny")
    assert mpc["baseMVA"] == 10.0
    assert np.asarray(mpc["bus"]).shape == (4, 13)


def test_unknown_case_name():
    with pytest.raises(NetworkError, match="nosuchcase"):
        load_case("nosuchcase")


@pytest.mark.parametrize(
    ("branch_row", "pattern"),
    [
        ("2 9 0.01 0.02 0 0 0 0 0 0 1 -360 360;", r"unknown bus 9"),
        ("2 4 0 0 0 0 0 0 0 0 0 -360 360;", r"branch 2-4 has zero impedance"),
        ("4 3 0.02 0.02 0 0 0 0 0 0 0 -360 360;", r"duplicate branch 4-3"),
    ],
)
def test_broken_case_names_element(tmp_path, branch_row, pattern):
    with pytest.raises(NetworkError, match=pattern):
        load_case(write_case(tmp_path, TINY.replace("%BRANCH%", branch_row)))


def test_island_names_cut_off_buses(tmp_path):
    text = TINY.replace("%BRANCH%", "").replace(
        "3 4 0.01 0.02 0 0 0 0 0 0 1", "3 4 0.01 0.02 0 0 0 0 0 0 0")
    with pytest.raises(NetworkError, match=r"island: bus\(es\) \[4\]"):
        load_case(write_case(tmp_path, text))


def test_no_slack_and_short_row(tmp_path):
    with pytest.raises(NetworkError, match="slack"):
        load_case(write_case(tmp_path, TINY.replace("%BRANCH%", "").replace(
            "1 3 0   0", "1 1 0   0")))
    with pytest.raises(NetworkError, match=r"mpc\.branch: row 2"):
        load_case(write_case(tmp_path, TINY.replace("%BRANCH%", "").replace(
            "2 3 0.01 0.02 0 0 0 0 0 0 1 -360 360;", "2 3 0.01;")))


def test_edits_return_copies(ieee33):
    net = ieee33
    tie = net.find_branch(18, 33)
    closed = net.with_switch(tie, closed=True)
    assert closed.branches.in_service[tie] and not net.branches.in_service[tie]
    assert closed.ybus()[net.index_of(18), net.index_of(33)] != 0
    assert net.ybus()[net.index_of(18), net.index_of(33)] == 0
    closed.validate()
    # PV plant node behind a transformer, as in the bundled ieee33 twin config
    plant = net.with_bus(34, 12.66).with_branch(8, 34, r=0.08, x=0.48)
    plant.validate()
    assert plant.n_bus == 34 and plant.n_branch == 38
    assert net.n_bus == 33
    with pytest.raises(NetworkError, match="unknown bus 99"):
        net.with_branch(8, 99, r=0.1, x=0.1)
    with pytest.raises(NetworkError, match="unknown bus 77"):
        net.index_of(77)
    with pytest.raises(NetworkError, match=r"island: bus\(es\) \[34\]"):
        net.with_bus(34, 12.66).validate()
    with pytest.raises(NetworkError, match="bus 5 already exists"):
        net.with_bus(5, 12.66)
    with pytest.raises(NetworkError, match="no branch between bus 1 and bus 18"):
        net.find_branch(1, 18)
    with pytest.raises(NetworkError, match="duplicate branch 2-1"):
        net.with_branch(2, 1, r=0.1, x=0.1).validate()


# -- MATPOWER files with code after the matrices (MATPOWER's own case33bw.m layout) -------
_DATA = Path(__file__).resolve().parent / "data"


def test_case33bw_conversion_code_is_evaluated() -> None:
    """Ohms -> per unit and kW -> MW, as the file's own code says, give the bundled case."""
    raw = load_case(_DATA / "case33bw.m")
    ref = load_case("ieee33")
    assert raw.n_bus == 33 and raw.n_branch == 32
    assert raw.p_load.sum() * raw.base_mva == pytest.approx(3.715)
    assert raw.q_load.sum() * raw.base_mva == pytest.approx(2.300)
    k = [ref.branches.names.index(n) for n in raw.branches.names]
    assert np.allclose(raw.branches.r, ref.branches.r[k], rtol=1e-9)
    assert np.allclose(raw.branches.x, ref.branches.x[k], rtol=1e-9)


def test_matrices_without_the_code_keep_their_units() -> None:
    raw = load_case(_DATA / "case33bw_ohms.m")
    assert raw.p_load.sum() * raw.base_mva == pytest.approx(3715.0)
    assert raw.branches.r[0] == pytest.approx(0.0922)


def test_code_outside_the_idioms_is_refused_naming_the_line() -> None:
    with pytest.raises(NetworkError, match=r"case3_code, line 31: .*savecase"):
        load_case(_DATA / "case3_code.m")


@pytest.mark.parametrize(("code", "r0", "pd"), [
    # element and scalar idioms: one column, a scalar variable, operator precedence
    ("Zb = 12.66^2 / 10;\nmpc.branch(:, 3) = mpc.branch(:, 3) / Zb;", 0.5 / 16.02756, 100.0),
    ("[F_BUS, T_BUS, BR_R] = idx_brch;\nmpc.branch(1, BR_R) = 2 * mpc.branch(1, BR_R) - 0.5;",
     0.5, 100.0),
    ("[PQ, PV, REF, NONE, BUS_I, BUS_TYPE, PD, QD] = idx_bus;\n"
     "mpc.bus(:, [PD QD]) = mpc.bus(:, [PD QD]) ./ 1e3;", 0.5, 0.1),
    ("mpc.baseMVA = 2 * 5; %% comment\nmpc.bus(2, 3) = -(-mpc.bus(2, 3)) + ...\n  1;",
     0.5, 101.0),
])
def test_post_processing_idioms(code: str, r0: float, pd: float) -> None:
    text = ("mpc.baseMVA = 10;\nmpc.bus = [\n1 3 0 0 0 0 1 1 0 12.66 1 1 1;\n"
            "2 1 100 60 0 0 1 1 0 12.66 1 1.1 0.9;\n];\n"
            "mpc.branch = [\n1 2 0.5 0.25 0 0 0 0 0 0 1 -360 360;\n];\n" + code)
    mpc = parse_matpower(text, name="t")
    assert mpc["branch"][0, 2] == pytest.approx(r0)  # type: ignore[index]
    assert mpc["bus"][1, 2] == pytest.approx(pd)  # type: ignore[index]
    assert mpc["baseMVA"] == 10.0
