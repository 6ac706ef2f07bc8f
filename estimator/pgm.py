"""power-grid-model adapter: a :class:`~estimator.network.Network` as a PGM input dataset.

Used for the ground truth (scenario generator, tests) and as the peer baseline of the
estimator. Mapping (positive sequence, symmetric calculation):

* bus ``i``            -> ``node`` id ``i`` with ``u_rated = base_kv * 1e3`` V
* branch ``k``         -> ``generic_branch`` id ``n_bus + k`` (pi model, tap ``k`` and shift
  ``theta`` at the from end: the MATPOWER branch model); r, x in ohm and g, b in S referred
  to the to-side voltage base
* slack                -> ``source`` (``u_ref = vm_slack``, very large short-circuit power,
  i.e. an ideal voltage source)
* bus shunt            -> ``shunt``
* each bus             -> one ``sym_load`` (``const_power``), id ``LOAD0 + i``: the net
  injection ``p + jq`` of the bus enters as a load ``-(p + jq)``, so a batch of injection
  vectors is one dense update of that component.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from estimator.errors import EstimatorError
from estimator.network import Network

__all__ = ["input_data", "load_ids", "power_flow"]

# short-circuit power of the slack source (VA): large enough that the source impedance is
# negligible at 1e-12 pu for feeders of a few hundred MVA
SOURCE_SK = 1e25


def load_ids(net: Network) -> np.ndarray:
    """Ids of the per-bus ``sym_load`` components (same order as the buses)."""
    return np.arange(net.n_bus, dtype=np.int32) + _load0(net)


def _load0(net: Network) -> int:
    return net.n_bus + net.n_branch + 1


def input_data(net: Network, p_inj_pu: np.ndarray | None = None,
               q_inj_pu: np.ndarray | None = None) -> dict[Any, np.ndarray]:
    """The PGM input dataset of ``net`` with bus injections (pu, default: the case's).

    Component ids: nodes ``0..n_bus-1``, branches ``n_bus..n_bus+n_branch-1``, source
    ``n_bus+n_branch``, loads from :func:`load_ids`, shunts after the loads.
    """
    from power_grid_model import ComponentType, LoadGenType, initialize_array

    n, m = net.n_bus, net.n_branch
    base_va = net.base_mva * 1e6
    node = initialize_array("input", ComponentType.node, n)
    node["id"] = np.arange(n)
    node["u_rated"] = net.base_kv * 1e3

    br = net.branches
    gb = initialize_array("input", ComponentType.generic_branch, m)
    gb["id"] = n + np.arange(m)
    gb["from_node"] = br.from_idx
    gb["to_node"] = br.to_idx
    status = br.in_service.astype(np.int8)
    gb["from_status"] = status
    gb["to_status"] = status
    # Z_base (to side) = U_to^2 / S_base ; r_ohm = r_pu * Z_base
    z_base_to = (net.base_kv[br.to_idx] * 1e3) ** 2 / base_va
    gb["r1"] = br.r * z_base_to
    gb["x1"] = br.x * z_base_to
    gb["g1"] = 0.0
    # b_siemens = b_pu / Z_base
    gb["b1"] = br.b / z_base_to
    gb["k"] = br.ratio
    gb["theta"] = br.shift
    gb["sn"] = np.nan

    src = initialize_array("input", ComponentType.source, 1)
    src["id"] = n + m
    src["node"] = net.slack
    src["status"] = 1
    src["u_ref"] = net.vm_slack
    src["u_ref_angle"] = net.va_slack
    src["sk"] = SOURCE_SK

    shunt_at = np.flatnonzero((net.gs != 0) | (net.bs != 0))
    sh = initialize_array("input", ComponentType.shunt, shunt_at.size)
    sh["id"] = _load0(net) + n + np.arange(shunt_at.size)
    sh["node"] = shunt_at
    sh["status"] = 1
    z_base_bus = (net.base_kv[shunt_at] * 1e3) ** 2 / base_va
    sh["g1"] = net.gs[shunt_at] / z_base_bus
    sh["b1"] = net.bs[shunt_at] / z_base_bus
    sh["g0"] = 0.0
    sh["b0"] = 0.0

    p = net.p_inj if p_inj_pu is None else np.asarray(p_inj_pu, float)
    q = net.q_inj if q_inj_pu is None else np.asarray(q_inj_pu, float)
    load = initialize_array("input", ComponentType.sym_load, n)
    load["id"] = load_ids(net)
    load["node"] = np.arange(n)
    load["status"] = 1
    load["type"] = LoadGenType.const_power
    # load = -(injection), in W / var
    load["p_specified"] = -p * base_va
    load["q_specified"] = -q * base_va

    data = {
        ComponentType.node: node,
        ComponentType.generic_branch: gb,
        ComponentType.source: src,
        ComponentType.sym_load: load,
    }
    if shunt_at.size:
        data[ComponentType.shunt] = sh
    return data


def power_flow(net: Network, p_inj_pu: np.ndarray, q_inj_pu: np.ndarray, batch: bool = True,
               *, method: str = "newton_raphson", tolerance: float = 1e-12,
               max_iterations: int = 30, threading: int = 0) -> np.ndarray:
    """Complex bus voltages (pu) from power-grid-model's power flow.

    ``p_inj_pu``/``q_inj_pu``: net injections per bus (generation - load) in pu; with
    ``batch`` they are ``(n_scenarios, n_bus)`` and the result is ``(n_scenarios, n_bus)``
    (one dense batch update of the per-bus ``sym_load``), else ``(n_bus,)`` -> ``(n_bus,)``.
    The slack bus entry is ignored by the solver (the source balances it).
    ``threading``: PGM's (0 = all hardware threads for batches, -1 = sequential).
    """
    from power_grid_model import CalculationMethod, ComponentType, PowerGridModel
    from power_grid_model.errors import PowerGridError

    calc = CalculationMethod[method]
    p = np.asarray(p_inj_pu, float)
    q = np.asarray(q_inj_pu, float)
    model = PowerGridModel(input_data(net, p if not batch else None, q if not batch else None))
    out_spec: dict[Any, Any] = {ComponentType.node: ["u_pu", "u_angle"]}
    try:
        if not batch:
            res = model.calculate_power_flow(
                calculation_method=calc, error_tolerance=tolerance,
                max_iterations=max_iterations, output_component_types=out_spec)
            nd = res[ComponentType.node]
            return nd["u_pu"] * np.exp(1j * nd["u_angle"])
        if p.ndim != 2 or p.shape != q.shape or p.shape[1] != net.n_bus:
            raise EstimatorError(f"power_flow batch needs (n_scenarios, {net.n_bus}) arrays, "
                                 f"got {p.shape} and {q.shape}")
        base_va = net.base_mva * 1e6
        upd = {ComponentType.sym_load: {
            "p_specified": -p * base_va,
            "q_specified": -q * base_va,
        }}
        res = model.calculate_power_flow(
            update_data=upd, calculation_method=calc, error_tolerance=tolerance,
            max_iterations=max_iterations, threading=threading, output_component_types=out_spec)
    except PowerGridError as exc:
        raise EstimatorError(f"power-grid-model power flow failed: {exc}") from exc
    nd = res[ComponentType.node]
    return nd["u_pu"] * np.exp(1j * nd["u_angle"])
