"""The run-time part of ``models`` stands alone: what the gateway and the predictor's
child process load imports nothing of the other packages and no offline-only library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("models.errors", "models.card", "models.runtime", "models.serve", "models.features",
           "models.pv_features", "models.solar", "models.extras", "models.training")
FOREIGN = ("gateway", "estimator", "hil", "torch", "onnx", "matplotlib", "sklearn", "pyarrow")


def test_runtime_modules_load_nothing_foreign() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(sorted({{m for m in sys.modules if m.split('.')[0] in {FOREIGN!r}}})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"the models run time loads {out.stdout.strip()}"


def test_detector_lives_with_the_quality_stage() -> None:
    assert not (ROOT / "models" / "detector.py").exists()
    assert (ROOT / "gateway" / "quality" / "detector.py").is_file()
    features = (ROOT / "models" / "features.py").read_text()
    # one owner per name: models.features does not hand out models.pv_features' names
    assert "pv_features" not in "\n".join(
        line for line in features.splitlines() if line.startswith(("from ", "import ", "    from")))
    assert "__getattr__" not in features
