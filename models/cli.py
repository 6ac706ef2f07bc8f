"""``gridtwin train`` and ``gridtwin evaluate``.

Heavy imports (torch, hil, onnxruntime) stay inside ``run``. Training the networks needs
the ``train`` extra (``pip install 'gridtwin[train]'``: torch==2.13.0, onnx), the figures
of ``evaluate --plots`` the ``plots`` extra (matplotlib); both are checked before any work
starts. ``train`` writes to ``./models-trained/`` by default (a complete models directory
for ``--models``: the packaged models are copied there first, the trained ones replace
theirs); the packaged models are replaced only with ``--overwrite-packaged``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from models.errors import MissingExtra

# the training scenario: a different season, seed and (for PV) site from evaluation's
# (March: calm; July: broken clouds, fast PV ramps)
TRAIN_SCENARIOS = (
    {"start": "1990-03-20T06:00", "hours": 6.0, "step_s": 1.0, "bad_pct": 10.0, "seed": 101},
    {"start": "1990-07-15T08:00", "hours": 6.0, "step_s": 1.0, "bad_pct": 10.0, "seed": 102},
)
DEFAULT_OUT = Path("models-trained")


def _scenarios_text() -> str:
    """TRAIN_SCENARIOS in words, for ``--help`` (argparse needs ``%%`` for a percent sign)."""
    parts = [f"{str(kw['start']).replace('T', ' ')}, {kw['hours']:g} h at {kw['step_s']:g} s, "
             f"{kw['bad_pct']:g} %% bad data, seed {kw['seed']}" for kw in TRAIN_SCENARIOS]
    return "; ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train the models and export ONNX + model cards",
                       description="Train the measurement predictor (BiLSTM + BP/LSTM "
                       "baselines) and the PV forecaster (BiLSTM + ANN/BP baseline), then "
                       "calibrate the detector threshold; the networks need torch and onnx "
                       "(pip install 'gridtwin[train]'), the threshold alone does not.")
    p.add_argument("what", nargs="?", choices=("all", "predictor", "pv", "threshold"),
                   default="all", help="what to train (default: all)")
    p.add_argument("--trace", action="append", default=[], metavar="NPZ",
                   help="training scenario trace(s) for the predictor (default: generated "
                        f"in memory, ieee33: {_scenarios_text()})")
    p.add_argument("--synthetic", action="store_true",
                   help="train the predictor on synthetic channels instead of a scenario")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pv-site", default="miami", help="TMY site the PV model trains on")
    p.add_argument("--pv-test-site", default="greensboro", help="unseen site for its card")
    p.add_argument("--pv-days", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"output directory (default: ./{DEFAULT_OUT}/); starts as a copy of "
                        "the packaged models, so it serves as --models DIR")
    p.add_argument("--overwrite-packaged", action="store_true",
                   help="write into the packaged models of the installed gridtwin instead "
                        "(what gridtwin run uses without --models)")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps on tiny data (CI): checks the code path, not the model")
    p.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="accuracy tables on held-out scenario traces",
                       description="Bad-data detection (ours, residual search, DBSCAN), "
                       "branch power prediction (BP, LSTM, BiLSTM), PV forecasting "
                       "(BiLSTM, ANN/BP, pvlib) and state estimation on held-out traces.")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.add_argument("--plots", type=Path, default=None, metavar="DIR",
                   help="write PNG figures like the paper's Figures 10-14")
    e.add_argument("--models", type=Path, default=None, help="models directory")
    e.add_argument("--quick", action="store_true", help="shorter traces (CI)")
    e.add_argument("--seed", type=int, default=21, help="held-out scenario seed")
    e.set_defaults(func=run_evaluate)


class _UsageError(Exception):
    """A bad combination of options: one line on stderr, exit status 2."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def output_dir(out: Path | None, overwrite_packaged: bool, log: Callable[[str], None]) -> Path:
    """Where ``gridtwin train`` writes: ``out`` (default ./models-trained/) seeded with the
    packaged models it does not hold yet, or the packaged directory itself on request."""
    from models.runtime import default_models_dir

    packaged = default_models_dir()
    if overwrite_packaged:
        if out is not None:
            raise _UsageError("--out and --overwrite-packaged exclude each other")
        return packaged
    out = out if out is not None else DEFAULT_OUT
    if out.resolve() == packaged.resolve():
        raise _UsageError(f"--out {out} is the packaged models directory: add "
                          "--overwrite-packaged (without --out) to replace the packaged models")
    if out.exists() and not out.is_dir():
        raise _UsageError(f"--out {out} exists and is not a directory")
    copied = 0
    for src in sorted(packaged.rglob("*")):
        if not src.is_file() or not src.name.endswith((".onnx", ".card.json", ".torch.npz")):
            continue
        dst = out / src.relative_to(packaged)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    if copied:
        log(f"{out}: started from the packaged models ({copied} files); trained ones replace "
            "theirs")
    return out


def run_train(args: argparse.Namespace) -> int:
    from models.extras import require

    try:
        if args.what != "threshold":
            require("gridtwin train", "torch", "onnx")
        out = output_dir(args.out, args.overwrite_packaged, _log)
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 2
    except _UsageError as exc:
        print(f"gridtwin train: {exc}", file=sys.stderr)
        return 2

    if args.what in ("all", "predictor"):
        _train_predictor(args, out, _log)
    if args.what in ("all", "pv"):
        from models.training.train_pv import train_pv

        steps = args.steps or (30 if args.smoke else 1200)
        train_pv(out, site=args.pv_site, test_site=args.pv_test_site,
                 n_days=4 if args.smoke else args.pv_days, steps=steps, seed=args.seed,
                 log=_log, sim_step_s=60.0 if args.smoke else 2.0)
    if args.what in ("all", "threshold") and not args.smoke:
        from models.training.train_threshold import calibrate_threshold

        calibrate_threshold(out, seed=args.seed + 500, log=_log)
    return 0


def _train_predictor(args: argparse.Namespace, out: Path, log: Callable[[str], None]) -> None:
    from models.training.data import concat, synthetic_predictor_data, trace_predictor_data
    from models.training.train import train_predictor

    steps = args.steps or (30 if args.smoke else 3000)
    if args.synthetic or args.smoke:
        data = synthetic_predictor_data(20 if args.smoke else 400, 400 if args.smoke else 3000,
                                        seed=args.seed)
        source: dict[str, object] = {"kind": "synthetic", "generator":
                                     "models.training.data.synthetic_series", "seed": args.seed}
    else:
        from gateway.config import load_config
        from hil.trace import load_trace

        if args.trace:
            traces = [load_trace(p) for p in args.trace]
            source = {"kind": "scenario traces", "files": [str(p) for p in args.trace],
                      "meta": [{k: t.meta.get(k) for k in ("seed", "start", "hours", "step_s",
                                                            "bad_data_pct")} for t in traces]}
        else:
            from hil.scenario import ScenarioSpec, make_trace

            traces = []
            for kw in TRAIN_SCENARIOS:
                spec = ScenarioSpec(**kw)  # type: ignore[arg-type]
                log(f"generating the training scenario {spec}")
                traces.append(make_trace(spec))
            source = {"kind": "scenario (hil.scenario.make_trace)",
                      "specs": list(TRAIN_SCENARIOS)}
        parts = []
        for t in traces:
            cfg = load_config(str(t.meta.get("config", "ieee33")))
            parts.append(trace_predictor_data(t, cfg, max_per_channel=3000, seed=args.seed))
        data = concat(parts)
    train_predictor(data, out, steps=steps, seed=args.seed, source=source, log=log)


def run_evaluate(args: argparse.Namespace) -> int:
    from models.extras import require

    if args.plots is not None:
        try:
            require("gridtwin evaluate --plots", "matplotlib")
        except MissingExtra as exc:
            print(exc, file=sys.stderr)
            return 2
    from models.evaluate import evaluate

    report = evaluate(models_dir=args.models, plots=args.plots, quick=args.quick,
                      seed=args.seed, log=_log)
    if args.json:
        print(json.dumps(report))
    else:
        _print_tables(report)
    return 0


def _print_tables(report: dict[str, object]) -> None:
    for section in ("detection", "prediction", "pv", "se", "topology", "forecast", "sensors"):
        rows = report.get(section) or []
        print(f"== {section}")
        if not rows:
            print("  (none)")
        for row in rows:  # type: ignore[attr-defined]
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()))
    for note in report.get("notes", []) or []:  # type: ignore[attr-defined]
        print(f"note: {note}")
