"""The twin config seen by the estimator: a :class:`~estimator.measurement.MeasurementModel`.

The estimator is a pure library: it knows networks and measurement specs, never the twin
config. This adapter maps the config's electrical channels onto specs (with the scale that
turns a snapshot's engineering values into per unit) and adds one PV pseudo-measurement per
plant. The live estimator worker and ``gridtwin estimate`` both build their model here, so
the two see the same measurements in the same order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from estimator.measurement import MeasurementModel, Spec
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import TwinConfig

__all__ = ["angle_parts", "measurement_model"]


def measurement_model(cfg: TwinConfig, *, pv_sigma_frac: float = 0.041,
                      pv_rel: float = 0.0) -> MeasurementModel:
    """The model of a twin config: its electrical channels in config order, then one
    ``ppv`` pseudo-measurement per plant (the forecast), in ``cfg.plants`` order.

    Accuracy: ``sigma = max(rel * |value|, abs) / k`` per channel (``k = 3`` for a
    maximum-error figure), converted to per unit with the channel's scale. The PV
    forecast's sigma defaults to 4.1 % of the plant rating (the paper's BiLSTM RMSE).
    """
    net = cfg.network
    specs: list[Spec] = []
    chan: list[int] = []
    scale: list[float] = []
    for ch in cfg.channels:
        if not ch.electrical:
            continue
        q = ch.quantity
        if q in ("vm", "va", "pinj", "qinj"):
            assert ch.bus is not None
            bus = net.index_of(ch.bus)
            if q == "vm":
                sc = 1.0 / net.base_kv[bus]
            elif q == "va":
                sc = 1.0
            else:
                sc = 1.0 / net.base_mva
            specs.append(Spec(q, bus=bus, sigma=ch.abs * sc / ch.k, rel=ch.rel / ch.k,
                              name=ch.name))
        elif q in ("im", "ia", "p", "q"):
            assert ch.branch is not None and ch.end is not None
            f = int(net.branches.from_idx[ch.branch])
            end_bus = net.index_of(ch.end)
            end = "from" if end_bus == f else "to"
            if q == "im":
                # I_base (kA) = S_base (MVA) / (sqrt(3) U_base (kV))
                sc = math.sqrt(3.0) * net.base_kv[end_bus] / net.base_mva
            elif q == "ia":
                sc = 1.0
            else:
                sc = 1.0 / net.base_mva
            specs.append(Spec(q, branch=ch.branch, end=end, sigma=ch.abs * sc / ch.k,
                              rel=ch.rel / ch.k, name=ch.name))
        else:
            raise ConfigError(f"channel {ch.name}: quantity {q!r} has no measurement "
                              "function")
        chan.append(ch.index)
        scale.append(sc)
    for plant in cfg.plants:
        node = net.index_of(plant.node)
        specs.append(Spec("ppv", bus=node, sigma=pv_sigma_frac * plant.rating_mw
                          / net.base_mva, rel=pv_rel, name=f"{plant.name}.forecast"))
        chan.append(-1)
        scale.append(1.0 / net.base_mva)
    return MeasurementModel(net, specs, channel=chan, scale=scale)


def angle_parts(dva: np.ndarray, pv_nodes: np.ndarray) -> dict[str, float]:
    """Angle RMSE (rad) of the errors ``dva`` (snapshots x buses) at the PV plant nodes
    (``MeasurementModel.pv_nodes``) and at the other buses, apart: a plant node's angle
    rests on its plant's output, which the bundled meters leave to the forecast, so the
    two say different things about an estimator (``gridtwin evaluate``'s SE rows and
    ``gridtwin demo``'s JSON)."""
    pv = np.zeros(dva.shape[1], bool)
    pv[np.asarray(pv_nodes, np.int64)] = True
    if not pv.any() or dva.shape[0] == 0:
        return {}
    return {"va_rmse_pv_nodes_rad": float(np.sqrt(np.mean(dva[:, pv] ** 2))),
            "va_rmse_other_buses_rad": float(np.sqrt(np.mean(dva[:, ~pv] ** 2)))}
