"""``gridtwin train threshold``: the detector threshold, calibrated on a held-out trace.

The quality stage (:mod:`gateway.quality.detector`) flags a value when its statistic z
exceeds k. k is chosen on the *clean* values of a calibration trace that neither the
training nor the evaluation uses (1990-09-10, seed ``--seed + 500``), with the stage run at
the default k = 8 (:func:`gateway.quality.detector.choose_threshold` says how), and stored
in the predictor's model card; the .onnx file is unchanged. numpy only: no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.card import card_path, load_card, save_card
from models.evaluate import Log, run_stage, scenario_trace


def set_threshold(models_dir: Path, k: float, q: float, n: int, source: str) -> None:
    """Store the calibrated threshold in the predictor card (the .onnx is unchanged)."""
    path = models_dir / "predictor.onnx"
    card = load_card(card_path(path))
    card.extra["threshold"] = round(float(k), 3)
    card.extra["threshold_method"] = (
        f"k = max(4, 8 s_z), s_z = median(z) / 0.6745 = {q:.4f}: robust (MAD) scale of the "
        f"statistic z on {n} clean held-out values ({source})")
    save_card(card, card_path(path))


def calibrate_threshold(models_dir: Path, *, seed: int, log: Log = print) -> float:
    """Choose the detector threshold on a held-out calibration trace (clean values only)
    and store it in the predictor card of ``models_dir``."""
    from gateway.config import load_config
    from gateway.quality.detector import choose_threshold

    cfg = load_config("ieee33")
    spec = {"start": "1990-09-10T09:00", "hours": 3.0, "step_s": 1.0, "bad_pct": 10.0,
            "seed": seed}
    tr = scenario_trace(spec, log)
    res = run_stage(cfg, tr, models_dir, threshold=8.0)
    elec = np.array([c.electrical for c in cfg.channels])
    warm = 100
    z = res["z"][warm:][:, elec]
    clean = ~tr.bad[warm:][:, elec] & ~tr.missing[warm:][:, elec] & np.isfinite(z)
    k, q = choose_threshold(z[clean])
    set_threshold(models_dir, k, q, int(clean.sum()),
                  f"scenario {spec}, values not labelled bad or missing")
    log(f"threshold: k = {k:.3f} (robust scale s_z = {q:.4f} over {int(clean.sum())} "
        "clean values)")
    return k
