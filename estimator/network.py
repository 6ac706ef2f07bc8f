"""The grid model: buses, branches and admittances in per unit, read from MATPOWER cases.

A :class:`Network` is an immutable description of a balanced (positive-sequence) feeder:
per-unit loads, a slack bus, and pi-model branches with an off-nominal tap at the from end
(the MATPOWER branch model). Everything the estimators need is derived from it:

* the bus admittance matrix ``Ybus`` (sparse, complex),
* the branch admittance matrices ``Yf``/``Yt`` with ``I_from = Yf @ V``, ``I_to = Yt @ V``,
* the branch-bus incidence matrix.

The branch model (MATPOWER manual, section 3.2), with ``ys = 1/(r + jx)``,
``t = ratio * exp(j*shift)`` (ratio 0 in the file means 1)::

    [I_f]   [ (ys + j b/2)/|t|^2   -ys/conj(t) ] [V_f]
    [I_t] = [ -ys/t                 ys + j b/2  ] [V_t]

Bus shunts ``gs + j bs`` (pu at 1 pu voltage) are added to the diagonal of ``Ybus``.

The bundled cases live in ``estimator/cases``: ``ieee33`` (Baran & Wu 1989, 12.66 kV,
10 MVA base) and ``case14`` (the IEEE 14-bus case, written out from pandapower's case data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from estimator.errors import NetworkError
from estimator.matpower import evaluate

__all__ = [
    "Branches",
    "Network",
    "bundled_cases",
    "load_case",
    "parse_matpower",
]

CASES_DIR = Path(__file__).resolve().parent / "cases"


@dataclass(frozen=True)
class Branches:
    """Pi-model branches (lines, transformers, switches, ties), all per unit.

    ``from_idx``/``to_idx`` are internal bus indices; ``ratio`` is the off-nominal tap at
    the from end (1.0 for lines); ``shift`` is the phase shift in rad; ``b`` the total
    line-charging susceptance; ``names`` are ``"f-t"`` in external bus numbers.
    """

    from_idx: np.ndarray
    to_idx: np.ndarray
    r: np.ndarray
    x: np.ndarray
    b: np.ndarray
    ratio: np.ndarray
    shift: np.ndarray
    in_service: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.from_idx.shape[0])


@dataclass(frozen=True)
class Network:
    """A balanced feeder in per unit on ``base_mva`` and per-bus ``base_kv``.

    Loads ``p_load``/``q_load`` and generation ``p_gen``/``q_gen`` are per-bus vectors in pu
    (generation at the slack bus is not a specification; the slack balances the feeder).
    """

    name: str
    base_mva: float
    bus_ids: np.ndarray
    base_kv: np.ndarray
    slack: int
    vm_slack: float
    va_slack: float
    p_load: np.ndarray
    q_load: np.ndarray
    p_gen: np.ndarray
    q_gen: np.ndarray
    gs: np.ndarray
    bs: np.ndarray
    branches: Branches

    # ------------------------------------------------------------------ sizes / lookup
    @property
    def n_bus(self) -> int:
        return int(self.bus_ids.shape[0])

    @property
    def n_branch(self) -> int:
        return len(self.branches)

    def index_of(self, bus_id: int) -> int:
        """Internal index of the bus numbered ``bus_id``; ``NetworkError`` if unknown."""
        hits = np.flatnonzero(self.bus_ids == int(bus_id))
        if hits.size == 0:
            raise NetworkError(f"{self.name}: unknown bus {bus_id}")
        return int(hits[0])

    def find_branch(self, f_id: int, t_id: int) -> int:
        """Index of the branch between buses ``f_id`` and ``t_id`` (either orientation)."""
        f = self.index_of(f_id)
        t = self.index_of(t_id)
        br = self.branches
        hits = np.flatnonzero(((br.from_idx == f) & (br.to_idx == t))
                              | ((br.from_idx == t) & (br.to_idx == f)))
        if hits.size == 0:
            raise NetworkError(f"{self.name}: no branch between bus {f_id} and bus {t_id}")
        return int(hits[0])

    @property
    def p_inj(self) -> np.ndarray:
        """Specified net active injection per bus (generation - load), pu."""
        return self.p_gen - self.p_load

    @property
    def q_inj(self) -> np.ndarray:
        """Specified net reactive injection per bus (generation - load), pu."""
        return self.q_gen - self.q_load

    # ------------------------------------------------------------------ admittances
    def _series_and_taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        br = self.branches
        on = br.in_service.astype(float)
        # ys = 1 / (r + jx), zeroed for out-of-service branches
        ys = on / (br.r + 1j * br.x)
        # bc = j b / 2 (half of the line charging at each end)
        bc = on * 1j * br.b / 2.0
        # t = ratio * exp(j * shift)
        tap = br.ratio * np.exp(1j * br.shift)
        return ys, bc, tap, on

    def branch_admittance(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """``(Yf, Yt)``, each ``n_branch x n_bus``: ``I_from = Yf @ V``, ``I_to = Yt @ V``.

        Rows of out-of-service branches are zero.
        """
        br = self.branches
        ys, bc, tap, _ = self._series_and_taps()
        # Yff = (ys + j b/2) / |t|^2 ; Yft = -ys / conj(t)
        yff = (ys + bc) / (tap * np.conj(tap))
        yft = -ys / np.conj(tap)
        # Ytf = -ys / t ; Ytt = ys + j b/2
        ytf = -ys / tap
        ytt = ys + bc
        rows = np.arange(self.n_branch)
        shape = (self.n_branch, self.n_bus)
        yf = sp.csr_matrix((np.r_[yff, yft], (np.r_[rows, rows], np.r_[br.from_idx, br.to_idx])),
                           shape=shape, dtype=complex)
        yt = sp.csr_matrix((np.r_[ytf, ytt], (np.r_[rows, rows], np.r_[br.from_idx, br.to_idx])),
                           shape=shape, dtype=complex)
        return yf, yt

    def ybus(self) -> sp.csr_matrix:
        """Bus admittance matrix (``n_bus x n_bus``, complex CSR) of in-service branches."""
        br = self.branches
        yf, yt = self.branch_admittance()
        cf = sp.csr_matrix((np.ones(self.n_branch), (np.arange(self.n_branch), br.from_idx)),
                           shape=(self.n_branch, self.n_bus))
        ct = sp.csr_matrix((np.ones(self.n_branch), (np.arange(self.n_branch), br.to_idx)),
                           shape=(self.n_branch, self.n_bus))
        # Ybus = Cf^T Yf + Ct^T Yt + diag(gs + j bs)
        y = cf.T @ yf + ct.T @ yt + sp.diags(self.gs + 1j * self.bs)
        out = sp.csr_matrix(y, dtype=complex)
        out.sum_duplicates()
        out.sort_indices()
        return out

    def incidence(self) -> sp.csr_matrix:
        """Branch-bus incidence (``n_branch x n_bus``): +1 at the from bus, -1 at the to bus."""
        br = self.branches
        rows = np.arange(self.n_branch)
        return sp.csr_matrix(
            (np.r_[np.ones(self.n_branch), -np.ones(self.n_branch)],
             (np.r_[rows, rows], np.r_[br.from_idx, br.to_idx])),
            shape=(self.n_branch, self.n_bus))

    # ------------------------------------------------------------------ edits (copies)
    def with_bus(self, bus_id: int, base_kv: float, p_load: float = 0.0,
                 q_load: float = 0.0) -> Network:
        """A copy with one more bus (PQ, no shunt); loads in pu."""
        if np.any(self.bus_ids == int(bus_id)):
            raise NetworkError(f"{self.name}: bus {bus_id} already exists")
        if not base_kv > 0:
            raise NetworkError(f"{self.name}: bus {bus_id} needs base_kv > 0, got {base_kv}")
        return replace(
            self,
            bus_ids=np.r_[self.bus_ids, int(bus_id)],
            base_kv=np.r_[self.base_kv, float(base_kv)],
            p_load=np.r_[self.p_load, float(p_load)],
            q_load=np.r_[self.q_load, float(q_load)],
            p_gen=np.r_[self.p_gen, 0.0],
            q_gen=np.r_[self.q_gen, 0.0],
            gs=np.r_[self.gs, 0.0],
            bs=np.r_[self.bs, 0.0],
        )

    def with_branch(self, f_id: int, t_id: int, r: float, x: float, b: float = 0.0,
                    ratio: float = 1.0, in_service: bool = True, shift: float = 0.0) -> Network:
        """A copy with one more branch between existing buses (per unit, shift in rad)."""
        f = self.index_of(f_id)
        t = self.index_of(t_id)
        br = self.branches
        nb = Branches(
            from_idx=np.r_[br.from_idx, f].astype(np.int64),
            to_idx=np.r_[br.to_idx, t].astype(np.int64),
            r=np.r_[br.r, float(r)],
            x=np.r_[br.x, float(x)],
            b=np.r_[br.b, float(b)],
            ratio=np.r_[br.ratio, float(ratio)],
            shift=np.r_[br.shift, float(shift)],
            in_service=np.r_[br.in_service, bool(in_service)],
            names=(*br.names, f"{int(f_id)}-{int(t_id)}"),
        )
        return replace(self, branches=nb)

    def with_switch(self, branch_index: int, closed: bool) -> Network:
        """A copy with branch ``branch_index`` switched in (closed) or out (open)."""
        if not 0 <= branch_index < self.n_branch:
            raise NetworkError(f"{self.name}: unknown branch index {branch_index}")
        status = self.branches.in_service.copy()
        status[branch_index] = bool(closed)
        return replace(self, branches=replace(self.branches, in_service=status))

    def with_loads(self, p_load: np.ndarray, q_load: np.ndarray) -> Network:
        """A copy with other per-bus loads (pu)."""
        return replace(self, p_load=np.asarray(p_load, float).copy(),
                       q_load=np.asarray(q_load, float).copy())

    # ------------------------------------------------------------------ checks
    def islands(self) -> list[np.ndarray]:
        """Connected groups of bus indices over in-service branches, slack's group first."""
        br = self.branches
        on = br.in_service
        adj = sp.csr_matrix((np.ones(int(on.sum())), (br.from_idx[on], br.to_idx[on])),
                            shape=(self.n_bus, self.n_bus))
        _, labels = connected_components(adj, directed=False)
        groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
        groups.sort(key=lambda g: (self.slack not in g, int(g[0])))
        return groups

    def validate(self) -> None:
        """Raise :class:`NetworkError` naming the first inconsistent element.

        Checks: sizes, bus numbers unique, slack in range, branch ends are known buses,
        no zero impedance, no duplicate branch (same pair of buses twice), taps > 0,
        base kV > 0, and every bus connected to the slack by in-service branches.
        """
        n = self.n_bus
        for field in ("base_kv", "p_load", "q_load", "p_gen", "q_gen", "gs", "bs"):
            if getattr(self, field).shape != (n,):
                raise NetworkError(f"{self.name}: '{field}' has shape "
                                   f"{getattr(self, field).shape}, expected ({n},)")
        uniq, counts = np.unique(self.bus_ids, return_counts=True)
        if np.any(counts > 1):
            raise NetworkError(f"{self.name}: bus {int(uniq[counts > 1][0])} is defined twice")
        if not 0 <= self.slack < n:
            raise NetworkError(f"{self.name}: slack index {self.slack} is not a bus")
        bad_kv = np.flatnonzero(~(self.base_kv > 0))
        if bad_kv.size:
            raise NetworkError(f"{self.name}: bus {int(self.bus_ids[bad_kv[0]])} has base_kv "
                               f"{self.base_kv[bad_kv[0]]}; must be > 0")
        br = self.branches
        m = len(br)
        for field in ("to_idx", "r", "x", "b", "ratio", "shift", "in_service"):
            if getattr(br, field).shape != (m,):
                raise NetworkError(f"{self.name}: branch field '{field}' has wrong length")
        if len(br.names) != m:
            raise NetworkError(f"{self.name}: branch names have wrong length")
        for k in range(m):
            for end in (br.from_idx[k], br.to_idx[k]):
                if not 0 <= end < n:
                    raise NetworkError(f"{self.name}: branch {br.names[k]} connects an "
                                       f"unknown bus (index {int(end)})")
            if br.from_idx[k] == br.to_idx[k]:
                raise NetworkError(f"{self.name}: branch {br.names[k]} connects bus "
                                   f"{int(self.bus_ids[br.from_idx[k]])} to itself")
        zero = np.flatnonzero((br.r == 0) & (br.x == 0))
        if zero.size:
            raise NetworkError(f"{self.name}: branch {br.names[zero[0]]} has zero impedance "
                               "(r = x = 0); model a closed switch as a small impedance or "
                               "merge the buses")
        bad_tap = np.flatnonzero(~(br.ratio > 0))
        if bad_tap.size:
            raise NetworkError(f"{self.name}: branch {br.names[bad_tap[0]]} has tap ratio "
                               f"{br.ratio[bad_tap[0]]}; must be > 0")
        lo = np.minimum(br.from_idx, br.to_idx)
        hi = np.maximum(br.from_idx, br.to_idx)
        seen: dict[tuple[int, int], int] = {}
        for k in range(m):
            key = (int(lo[k]), int(hi[k]))
            if key in seen:
                raise NetworkError(f"{self.name}: duplicate branch {br.names[k]} (branch "
                                   f"{k} repeats branch {seen[key]}, {br.names[seen[key]]})")
            seen[key] = k
        groups = self.islands()
        if len(groups) > 1:
            cut = np.concatenate(groups[1:])
            ids = sorted(int(i) for i in self.bus_ids[cut])
            raise NetworkError(f"{self.name}: island: bus(es) {ids} are not connected to the "
                               f"slack bus {int(self.bus_ids[self.slack])}")


# ---------------------------------------------------------------------- MATPOWER reader
def _matrix(body: str, what: str, source: str) -> np.ndarray:
    rows: list[list[float]] = []
    for chunk in re.split(r"[;\n\r]", body):
        toks = chunk.replace(",", " ").split()
        if not toks:
            continue
        try:
            rows.append([float(t.replace("Inf", "inf")) for t in toks])
        except ValueError as exc:
            raise NetworkError(f"{source}: mpc.{what}: cannot read row '{chunk.strip()}'"
                               ) from exc
    if not rows:
        return np.zeros((0, 0))
    width = max(len(r) for r in rows)
    short = [i for i, r in enumerate(rows) if len(r) != width]
    if short:
        raise NetworkError(f"{source}: mpc.{what}: row {short[0] + 1} has "
                           f"{len(rows[short[0]])} columns, expected {width}")
    return np.asarray(rows, dtype=float)


def parse_matpower(text: str, *, name: str = "case") -> dict[str, object]:
    """Read ``baseMVA``, ``bus``, ``gen`` and ``branch`` from MATPOWER case text.

    Comments (``%``), rows ended by ``;`` or a newline and comma-separated values are
    accepted; other fields (``gencost``, ``bus_name`` cell arrays, ...) are ignored. Code
    after the matrices that converts units (MATPOWER's ``case33bw.m`` keeps ohms and kW in
    its matrices) is evaluated by :mod:`estimator.matpower`, or the file is refused
    naming the line.
    """
    out = evaluate(text, name, lambda body, what: _matrix(body, what, name))
    for key in ("baseMVA", "bus", "branch"):
        if key not in out:
            raise NetworkError(f"{name}: MATPOWER field mpc.{key} is missing")
    if "gen" not in out:
        out["gen"] = np.zeros((0, 10))
    return out


def network_from_matpower(mpc: dict[str, object], *, name: str) -> Network:
    """Build a :class:`Network` from parsed MATPOWER matrices (MW/MVAr converted to pu)."""
    base = float(mpc["baseMVA"])  # type: ignore[arg-type]
    bus = np.asarray(mpc["bus"], float)
    gen = np.asarray(mpc["gen"], float)
    branch = np.asarray(mpc["branch"], float)
    if bus.ndim != 2 or bus.shape[1] < 13:
        raise NetworkError(f"{name}: mpc.bus needs 13 columns, got {bus.shape}")
    if branch.ndim != 2 or branch.shape[1] < 11:
        raise NetworkError(f"{name}: mpc.branch needs 11 columns, got {branch.shape}")
    ids = bus[:, 0].astype(np.int64)
    pos = {int(b): i for i, b in enumerate(ids)}
    slack_rows = np.flatnonzero(bus[:, 1] == 3)
    if slack_rows.size != 1:
        raise NetworkError(f"{name}: need exactly one slack bus (type 3), found "
                           f"{[int(i) for i in ids[slack_rows]]}")
    slack = int(slack_rows[0])
    n = ids.size
    p_gen = np.zeros(n)
    q_gen = np.zeros(n)
    vm_slack = float(bus[slack, 7])
    for row in gen:
        gid = int(row[0])
        if gid not in pos:
            raise NetworkError(f"{name}: generator at unknown bus {gid}")
        if row.shape[0] > 7 and row[7] <= 0:
            continue
        k = pos[gid]
        p_gen[k] += row[1] / base
        q_gen[k] += row[2] / base
        if k == slack:
            vm_slack = float(row[5])
    f_idx = np.empty(branch.shape[0], np.int64)
    t_idx = np.empty(branch.shape[0], np.int64)
    names = []
    for k, row in enumerate(branch):
        f, t = int(row[0]), int(row[1])
        names.append(f"{f}-{t}")
        for end in (f, t):
            if end not in pos:
                raise NetworkError(f"{name}: branch {f}-{t} (row {k + 1}) refers to unknown "
                                   f"bus {end}")
        f_idx[k] = pos[f]
        t_idx[k] = pos[t]
    ratio = branch[:, 8].copy()
    ratio[ratio == 0] = 1.0
    base_kv = bus[:, 9].copy()
    net = Network(
        name=name,
        base_mva=base,
        bus_ids=ids,
        base_kv=base_kv,
        slack=slack,
        vm_slack=vm_slack,
        va_slack=float(np.deg2rad(bus[slack, 8])),
        p_load=bus[:, 2] / base,
        q_load=bus[:, 3] / base,
        p_gen=p_gen,
        q_gen=q_gen,
        gs=bus[:, 4] / base,
        bs=bus[:, 5] / base,
        branches=Branches(
            from_idx=f_idx,
            to_idx=t_idx,
            r=branch[:, 2].copy(),
            x=branch[:, 3].copy(),
            b=branch[:, 4].copy(),
            ratio=ratio,
            shift=np.deg2rad(branch[:, 9]),
            in_service=branch[:, 10] > 0,
            names=tuple(names),
        ),
    )
    return net


def bundled_cases() -> list[str]:
    """Names accepted by :func:`load_case` without a path."""
    return sorted(p.stem for p in CASES_DIR.glob("*.m"))


def load_case(name_or_path: str | Path, *, validate: bool = True) -> Network:
    """A bundled case by name (``"ieee33"``) or a MATPOWER ``.m`` file by path.

    Raises :class:`NetworkError` for an unknown name, an unreadable file or (with
    ``validate``) an inconsistent network.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CASES_DIR / f"{name_or_path}.m"
        if not path.exists():
            raise NetworkError(f"unknown case '{name_or_path}'; bundled: {bundled_cases()} "
                               "or give a path to a MATPOWER .m file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NetworkError(f"case file {path} not found") from None
    except OSError as exc:
        raise NetworkError(f"cannot read case file {path}: {exc.strerror or exc}") from exc
    net = network_from_matpower(parse_matpower(text, name=path.stem), name=path.stem)
    if validate:
        net.validate()
    return net
