"""Golden state-estimation cases in the power-grid-model test-data style.

A case is a directory with ``input.json`` (network, measurements in per unit with bus
numbers and branch names, the measurement vector, the method and its options),
``params.json`` (tolerance per output field and where the expected values come from) and
``sym_output.json`` (expected ``node`` ``u_pu``/``u_angle`` and J(x)).

``python -m estimator.golden DIR`` regenerates the bundled set (tests/data/se_golden).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from estimator.measurement import MeasurementModel, Spec
from estimator.network import Network, load_case

__all__ = ["dump_specs", "load_golden", "write_case"]


def _network(desc: dict[str, Any]) -> Network:
    net = load_case(desc["case"])
    for bus, node, r, x in desc.get("plants", []):
        net = net.with_bus(int(node), float(net.base_kv[net.index_of(int(bus))]))
        net = net.with_branch(int(bus), int(node), r=float(r), x=float(x))
    net.validate()
    return net


def dump_specs(model: MeasurementModel) -> list[dict[str, Any]]:
    net = model.net
    out = []
    for s in model.specs:
        d: dict[str, Any] = {"kind": s.kind, "sigma": s.sigma, "rel": s.rel}
        if s.bus is not None:
            d["bus"] = int(net.bus_ids[s.bus])
        else:
            d["branch"] = net.branches.names[s.branch]  # type: ignore[index]
            d["end"] = s.end
        out.append(d)
    return out


def load_golden(path: Path) -> tuple[MeasurementModel, np.ndarray, dict[str, Any], str]:
    """``(model, z, options, method)`` of a golden ``input.json``."""
    data = json.loads(Path(path).read_text())
    net = _network(data["network"])
    names = list(net.branches.names)
    specs = []
    for d in data["measurements"]:
        if "bus" in d:
            specs.append(Spec(d["kind"], bus=net.index_of(d["bus"]), sigma=d["sigma"],
                              rel=d["rel"]))
        else:
            specs.append(Spec(d["kind"], branch=names.index(d["branch"]), end=d["end"],
                              sigma=d["sigma"], rel=d["rel"]))
    model = MeasurementModel(net, specs)
    z = np.array([np.nan if x is None else x for x in data["z"]], float)
    return model, z, dict(data.get("options", {})), data.get("method", "linear")


def write_case(directory: Path, *, network: dict[str, Any], model: MeasurementModel,
               z: np.ndarray, method: str, options: dict[str, Any], v: np.ndarray,
               tolerance: dict[str, float], reference: str,
               objective: float | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    inp = {"network": network, "measurements": dump_specs(model),
           "z": [None if not np.isfinite(x) else float(x) for x in z],
           "method": method, "options": options}
    (directory / "input.json").write_text(json.dumps(inp, indent=1) + "\n")
    (directory / "params.json").write_text(json.dumps(
        {"tolerance": tolerance, "reference": reference, "objective_rel": 1e-6},
        indent=1) + "\n")
    out: dict[str, Any] = {"node": {"id": [int(b) for b in model.net.bus_ids],
                                    "u_pu": [float(x) for x in np.abs(v)],
                                    "u_angle": [float(x) for x in np.angle(v)]}}
    if objective is not None:
        out["objective"] = objective
    (directory / "sym_output.json").write_text(json.dumps(out, indent=1) + "\n")


def main(root: str) -> None:
    from estimator.baselines import make_estimator
    from estimator.synthetic import PAPER_PLANTS, paper_specs, truth

    base = Path(root)
    opts: dict[str, Any] = {"tolerance": 1e-12, "max_iterations": 80}
    plants = [[b, n, 0.08, 0.48] for b, n in PAPER_PLANTS]
    desc = {"case": "ieee33", "plants": plants}
    net = _network(desc)
    model = MeasurementModel(net, paper_specs(net))
    v, z = truth(model, load_scale=0.9, pv_pu=np.array([0.05, 0.08, 0.03, 0.07]))
    write_case(base / "ieee33_paper_clean", network=desc, model=model, z=z,
               method="linear", options=opts, v=v,
               tolerance={"u_pu": 1e-8, "u_angle": 1e-8},
               reference="power-flow truth (power-grid-model newton_raphson, tol 1e-12)")
    rng = np.random.default_rng(2024)
    zn = z + rng.standard_normal(z.size) * model.sigma(z)
    for method, ref in (("linear", "regression: gridtwin linear SE at generation time"),
                        ("wls", "regression: classical polar WLS optimum (Gauss-Newton)")):
        st = make_estimator(method, model, **opts).solve(zn, warm_start=False)
        write_case(base / f"ieee33_paper_noisy_{method}", network=desc, model=model, z=zn,
                   method=method, options=opts, v=st.v,
                   tolerance={"u_pu": 1e-9, "u_angle": 1e-9}, reference=ref,
                   objective=st.objective)
    desc14 = {"case": "case14"}
    net14 = _network(desc14)
    model14 = MeasurementModel(net14, paper_specs(net14, pmus=(1, 4, 9, 13),
                                                  injections=(2, 3, 6, 8, 11), plants=()))
    v14, z14 = truth(model14)
    write_case(base / "case14_zero_injection_clean", network=desc14, model=model14, z=z14,
               method="linear", options=opts, v=v14,
               tolerance={"u_pu": 1e-8, "u_angle": 1e-8},
               reference="power-flow truth (power-grid-model newton_raphson, tol 1e-12); "
                         "buses 7 and 8 are zero-injection buses (equality constraints)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/se_golden")
