"""Training and ONNX export of the PV forecaster (and its ANN/BP baseline).

``gridtwin train pv [--site miami] [--test-site greensboro] [--days N] [--steps N]``

Method: the paper's BiLSTM over a window of weather samples (sec. 5.4.1), with
physically derived inputs appended to each sample (:mod:`models.pv_features`): the sun's
direction (cos zenith, sin/cos azimuth from the NOAA solar position, :mod:`models.solar`)
and the cosine of the angle of incidence on, and the isotropic-sky (Liu-Jordan)
transposition of the measured DNI/DHI/GHI to, a nominal equator-facing plane tilted at
the latitude. Without them the window does not say where the sun is and the
plane-of-array irradiance of a tilted plant is undetermined (a slow bias that moved with
the season and the site).

Data (:func:`models.training.data.pv_dataset`): the scenario's own physical truth (``hil.weather``
TMY + sub-hourly clouds, the station on the plant and the plant seeing the footprint
average of the cloud field; ``hil.pvplant`` plants with hidden random parameters) at ONE
training site; inputs are the weather station's *measured* GHI, DNI, DHI, air
temperature, wind speed and wind direction (sensor noise of the bundled config) plus the
sun terms, 10 samples ``stride_s`` apart ending now (see :data:`models.training.data.PV_STRIDE_S`);
target: the plant's AC output now per unit of rating. Days spread over the year; every 6th day
is held out (same site); the test site is never seen in training and its days give the
card's "unseen site" metrics.

Normalisation: min-max (the paper's equation) with *fixed physical ranges* of the
sensors (``models.pv_features.WEATHER_MIN`` / ``WEATHER_MAX``), not the training site's
extremes: a site's own extremes made an unseen, colder site (Greensboro in winter,
-17 degC, vs Miami's +3 degC) fall outside [0, 1] and into the clip.

Output uncertainty for the estimator: on the unseen site's days (the situation the
gateway is in), the RMS error is taken in bins of the prediction ``p`` and fitted both
as ``sigma(p) = a + b p`` and as ``sigma(p) = a + b p (1 - p)`` (per unit; weighted by
bin counts); the better fit is stored in the card as ``extra.sigma_pu =
{"abs": a, "rel": b, "form": "linear" | "p(1-p)"}`` with the bin table in
``extra.sigma_bins`` and both fits' weighted RMS misfit in ``extra.sigma_fits``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import TensorSpec
from models.features import WINDOW, minmax
from models.pv_features import PV_SUN_FEATURES, PV_SUN_UNITS, feature_ranges
from models.training.data import PV_STRIDE_S, PvData, pv_dataset
from models.training.metrics import pv_metrics
from models.training.nets import (
    PV_GAMMA,
    PV_PRIOR_GAIN,
    PV_RESIDUAL_SCALE,
    MlpRegressor,
    PhysicsPv,
    RecurrentRegressor,
)
from models.training.train import export_onnx, fit, predict, set_seed, write_card

PV_HIDDEN = 24
# MSE (the conditional mean, what the estimator's pseudo-measurement wants) plus a small
# absolute term (models.training.train.MseL1): low outputs keep their relative accuracy
PV_LOSS = "mse+l1"


def _sun_up(d: PvData) -> np.ndarray:
    return d.sun_up | (d.y > 0.0)


SIGMA_EDGES = (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.01)


SIGMA_FORMS = ("linear", "p(1-p)")


def sigma_shape(form: str, p: np.ndarray) -> np.ndarray:
    """The p-dependent term of the error model: ``p`` (linear) or ``p (1 - p)``."""
    return p if form == "linear" else p * (1.0 - p)


def sigma_model(pred: np.ndarray, true: np.ndarray, *, edges: tuple[float, ...] = SIGMA_EDGES
                ) -> tuple[dict[str, Any], list[dict[str, float]], dict[str, float]]:
    """RMS error in bins of the prediction; weighted fits ``sigma = a + b p`` and
    ``sigma = a + b p (1 - p)``; returns the better one (smaller weighted RMS misfit,
    as ``{"abs": a, "rel": b, "form": ...}``), the bins and each form's misfit."""
    bins = []
    for lo_, hi_ in itertools.pairwise(edges):
        m = (pred >= lo_) & (pred < hi_)
        if m.sum() >= 20:
            bins.append({"p_lo": lo_, "p_hi": hi_, "p_mean": float(pred[m].mean()),
                         "rms": float(np.sqrt(np.mean((pred[m] - true[m]) ** 2))),
                         "bias": float(np.mean(pred[m] - true[m])), "n": int(m.sum())})
    pm = np.array([b["p_mean"] for b in bins])
    rm = np.array([b["rms"] for b in bins])
    n = np.array([b["n"] for b in bins], float)
    w = np.sqrt(n)
    best: dict[str, Any] | None = None
    misfit: dict[str, float] = {}
    for form in SIGMA_FORMS:
        g = sigma_shape(form, pm)
        # weighted least squares: min sum n_k (a + b g(p_k) - rms_k)^2
        coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(pm), g], 1) * w[:, None], rm * w,
                                   rcond=None)
        a, b = float(max(coef[0], 0.005)), float(max(coef[1], 0.0))
        misfit[form] = float(np.sqrt(np.sum(n * (a + b * g - rm) ** 2) / n.sum()))
        if best is None or misfit[form] < misfit[best["form"]]:
            best = {"abs": a, "rel": b, "form": form}
    assert best is not None
    return best, bins, misfit


def train_pv(out_dir: Path, *, site: str, test_site: str, n_days: int, steps: int, seed: int,
             batch: int = 512, lr: float = 3e-3, log: Callable[[str], None] = print,
             sim_step_s: float = 1.0, more_test_sites: tuple[str, ...] = ("sandpoint",),
             features: tuple[str, ...] = PV_SUN_FEATURES) -> dict[str, Any]:
    """Train the physics-informed BiLSTM forecaster and its ANN/BP baseline; write the
    ONNX files and cards. ``test_site`` and ``more_test_sites`` are never trained on; the
    card reports each (``metrics.unseen_sites``) and ``test_site`` as ``unseen_site``."""
    torch.set_num_threads(1)  # small nets: threads only add sync overhead
    days = [int(d) for d in np.linspace(3, 360, n_days)]
    val_days = days[::6]
    train_days = [d for d in days if d not in val_days]
    test_days = [int(d) for d in np.linspace(10, 350, max(4, n_days // 3))]
    sites = [test_site] + [t for t in more_test_sites if t not in (site, test_site)]
    log(f"pv: simulating {len(days)} days at {site}, {len(test_days)} at each of {sites}")
    tr = pv_dataset(site, train_days, seed=seed, step_s=sim_step_s, features=features)
    va = pv_dataset(site, val_days, seed=seed + 1, step_s=sim_step_s, features=features)
    tes = {t: pv_dataset(t, test_days, seed=seed + 2, step_s=sim_step_s, features=features)
           for t in sites}
    lo, hi = feature_ranges(features)
    xtr, xva = (minmax(d.x, lo, hi) for d in (tr, va))
    xtes = {t: minmax(d.x, lo, hi) for t, d in tes.items()}
    log(f"pv: {len(tr.y)} training windows, {len(va.y)} held out, "
        f"{sum(len(d.y) for d in tes.values())} unseen-site")
    card = _card_parts(features, lo, hi)
    data = {"data": {"generator": "hil.weather + hil.pvplant (TMY from pvlib, "
                                  "sub-hourly cloud model, hidden plant params)",
                     "site": site, "days_of_year": train_days, "held_out_days": val_days,
                     "step_s": sim_step_s, "plants_per_day": 4},
            "unseen_site": {"site": test_site, "days_of_year": test_days, "seed": seed + 2},
            "unseen_sites": {"sites": sites, "days_of_year": test_days, "seed": seed + 2},
            "seed": seed, "steps": steps, "batch": batch, "lr": lr,
            "loss": PV_LOSS, "optimizer": "Adam, cosine decay"}
    set_seed(seed)
    models = {
        # two outputs: the ratio to the physical prior and an additive residual
        "bilstm": PhysicsPv(RecurrentRegressor(len(features), PV_HIDDEN, bidirectional=True,
                                               head_hidden=16, n_out=2), lo, hi, features),
        "bp": MlpRegressor(len(features), WINDOW, 64),
    }
    sets = _PvSets(tr, va, tes, xtr, xva, xtes, sites, test_site, test_days)
    return {name: _train_one(name, model, sets, out_dir=out_dir, card=card, data=data,
                             n_features=len(features), steps=steps, batch=batch, lr=lr,
                             seed=seed, site=site, log=log)
            for name, model in models.items()}


@dataclass
class _PvSets:
    """The training, held-out and unseen-site windows of one run (raw and normalised)."""

    tr: Any
    va: Any
    tes: dict[str, Any]
    xtr: np.ndarray
    xva: np.ndarray
    xtes: dict[str, np.ndarray]
    sites: list[str]
    test_site: str
    test_days: list[int]


def _train_one(name: str, model: Any, d: _PvSets, *, out_dir: Path, card: dict[str, Any],
               data: dict[str, Any], n_features: int, steps: int, batch: int, lr: float,
               seed: int, site: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Fit one network, score it held out and at every unseen site, fit its sigma(p),
    export it with its card; its report."""
    log(f"training pv {name} ({sum(p.numel() for p in model.parameters())} parameters)")
    hist = fit(model, d.xtr, d.tr.y, steps=steps, batch=batch, lr=lr, seed=seed,
               loss=PV_LOSS, log=log, x_val=d.xva, y_val=d.va.y)
    pva = np.clip(predict(model, d.xva), 0, 1.05)
    m_va = pv_metrics(pva, d.va.y, sun_up=_sun_up(d.va))
    log(f"  {name}: held-out {json.dumps(m_va)}")
    ptes = {t: np.clip(predict(model, x), 0, 1.05) for t, x in d.xtes.items()}
    m_tes = {t: pv_metrics(ptes[t], d.tes[t].y, sun_up=_sun_up(d.tes[t])) for t in d.sites}
    for t, m in m_tes.items():
        log(f"  {name} unseen {t}: {json.dumps(m)}")
    rep: dict[str, Any] = {"held_out_same_site": m_va, "unseen_site": m_tes[d.test_site],
                           "unseen_sites": m_tes}
    # sigma(p) from the unseen sites' binned RMS errors (daytime)
    pte = np.concatenate([ptes[t][_sun_up(d.tes[t])] for t in d.sites])
    yte = np.concatenate([d.tes[t].y[_sun_up(d.tes[t])] for t in d.sites])
    sig, sig_bins, sig_fits = sigma_model(pte, yte)
    rep["sigma_pu"] = sig
    rep["sigma_bins"] = sig_bins
    path = _export(name, model, d.xva, out_dir)
    site_list = ", ".join(d.sites)
    write_card(
        path, name=path.stem,
        task=f"PV forecaster ({name}): station weather window -> plant AC output / rating",
        **card,
        training={**data, "seconds": round(hist["seconds"], 1),
                  "architecture": _architecture(name, n_features),
                  "method": _method(name)},
        metrics={"held_out_same_site": m_va,
                 "unseen_site": {"site": d.test_site, "days": d.test_days,
                                 **m_tes[d.test_site]},
                 "unseen_sites": [{"site": t, "days": d.test_days, **m_tes[t]}
                                  for t in d.sites],
                 "definition": "MAPE over points above 5 % of rating; RMSE in % of "
                               "rating over daytime points"},
        extra={"stride_s": PV_STRIDE_S, "sigma_pu": sig, "sigma_bins": sig_bins,
               "sigma_fits": sig_fits,
               "sigma_definition": "sigma(p) = abs + rel * g(p) (p.u. of rating), "
                                   "g(p) = p if form == 'linear', p (1 - p) if form == "
                                   "'p(1-p)': weighted fit to the RMS error in bins of "
                                   f"the prediction p on the unseen sites ({site_list}); "
                                   "the form with the smaller weighted misfit "
                                   "(sigma_fits) is kept",
               "max_pu": 1.0, "train_site": site},
    )
    log(f"  wrote {path} ({path.stat().st_size} bytes), sigma {sig}")
    return rep


def _export(name: str, model: Any, xva: np.ndarray, out_dir: Path) -> Path:
    """The network as ONNX: the BiLSTM with its physical prior inside the graph."""
    example = torch.from_numpy(xva[:64].copy())
    if name == "bilstm":
        path = out_dir / "pv_forecaster.onnx"
        assert isinstance(model, PhysicsPv)
        export_onnx(model.exportable(WINDOW), example, path, input_name="weather",
                    output_name="p_pu", check=model)
    else:
        path = out_dir / "baselines" / "pv_bp.onnx"
        export_onnx(model, example, path, input_name="weather", output_name="p_pu")
    return path


def _card_parts(features: tuple[str, ...], lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    """What both PV cards say of their inputs, output, window and normalisation."""
    units = [PV_SUN_UNITS[PV_SUN_FEATURES.index(f)] for f in features]
    described = ", ".join(f"{f} [{u}]" for f, u in zip(features, units, strict=True))
    return {
        "inputs": [TensorSpec("weather", (None, WINDOW, len(features)), "float32", "1",
                              f"min-max normalised {described}; {WINDOW} samples "
                              f"{PV_STRIDE_S:g} s apart ending now; sun terms from the "
                              "sample time (UTC) and the plant's latitude/longitude "
                              "(models.pv_features)")],
        "outputs": [TensorSpec("p_pu", (None, 1), "float32", "p.u. of plant AC rating",
                               "plant AC active power now")],
        "window": WINDOW,
        "normalisation": {"method": "min-max per feature: (x - min) / (max - min), "
                                    "clipped to [-0.5, 1.5]; fixed sensor ranges, the "
                                    "same at every site",
                          "features": list(features), "units": units,
                          "builder": "models.pv_features.PvInputs (run time), "
                                     "models.pv_features.feature_series (training)",
                          "min": [round(float(v), 4) for v in lo],
                          "max": [round(float(v), 4) for v in hi]},
    }


def _architecture(name: str, n_features: int) -> str:
    if name == "bilstm":
        return (f"1-layer BiLSTM hidden {PV_HIDDEN}/direction -> 16 tanh -> 2 (ratio k, "
                "residual r) over a PVWatts prior: p = min(p_dc (1 + k), 1) + "
                f"{PV_RESIDUAL_SCALE:g} r")
    return f"MLP {WINDOW * n_features}-64-64-1 tanh (ANN/BP)"


def _method(name: str) -> str:
    if name != "bilstm":
        return ("ANN/BP over the same weather windows and derived sun-position inputs "
                "(the raw output as target)")
    return ("physics-informed: inside the exported graph, the current sample's isotropic-sky "
            "POA on a typical fixed-tilt plane (tilt clip(0.75 |lat|, 10, 35) deg; NOAA solar "
            "position, measured DNI/DHI/GHI), "
            "air temperature and wind speed give a PVWatts DC estimate p_dc (Faiman cell "
            f"temperature, gamma {PV_GAMMA:g}/K, gain {PV_PRIOR_GAIN:.4f} per kW/m2); the "
            "paper's BiLSTM over the weather window learns its ratio k to the plant's output "
            "and a small residual r")
