"""One-way imports: the gateway and the estimator are separate processes.

``hil -> gateway.codecs, gateway.config, estimator.network``; the gateway reaches into the
estimator only for the network model (config validation) and into ``models`` only for the
ONNX runtime of the data-quality stage; the estimator is a pure library that imports
nothing of the other packages; nothing imports ``hil`` but tests and the
command-line/benchmark entry points; torch is never loaded by what runs live.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> prefixes of other packages it may import (anywhere in a module)
#: the run-time part of ``models`` (cards, ONNX runtime, features, solar position): what
#: the gateway and the test rig may use; training and evaluation are entry points
MODELS_RUNTIME = ("models.runtime", "models.card", "models.features", "models.pv_features",
                  "models.solar", "models.errors")
ALLOWED: dict[str, tuple[str, ...]] = {
    # the estimator is a library the gateway uses whole; the quality stage runs the ONNX
    # models in the gateway process
    "gateway": ("estimator", *MODELS_RUNTIME),
    # a pure library: nothing of the other packages, not even in its entry points
    "estimator": (),
    # the test rig drives everything
    "hil": ("gateway", "estimator", *MODELS_RUNTIME),
    # the run-time part imports nothing of the other packages; entry points (below) may
    "models": (),
}
# entry points (CLI subcommands, benchmarks, evaluation) and the offline training code
# may use any package
ENTRY_POINT_PREFIXES = ("cli", "bench", "evaluate", "train", "data", "nets")
PACKAGES = tuple(ALLOWED)


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(module, at_top_level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(id(n) for n in tree.body)
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top))
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_direction(path: Path) -> None:
    pkg = path.relative_to(ROOT).parts[0]
    # the estimator is a pure library: its entry points get no exemption
    entry = path.name.startswith(ENTRY_POINT_PREFIXES) and pkg != "estimator"
    for mod, top in imports_of(path):
        root = mod.split(".")[0]
        if root == "torch":
            assert pkg == "models" and (entry or not top), (
                f"{path.name} imports torch at module level; only training code may")
        if root not in PACKAGES or root == pkg or entry:
            continue
        assert mod.startswith(ALLOWED[pkg]), (
            f"{path.relative_to(ROOT)} imports {mod}: {pkg} may import only "
            f"{', '.join(ALLOWED[pkg])} from other packages")


def test_live_path_never_loads_torch_or_hil() -> None:
    """What `gridtwin run` loads (gateway, estimator process, quality stage) stays lean."""
    code = (
        "import importlib, pkgutil, sys\n"
        "live = ['gateway.config', 'gateway.snapshot']\n"
        "for name in ['gateway.app', 'gateway.quality.stage', 'gateway.quality.detector',"
        " 'gateway.estimator_worker', 'estimator.linear', 'models.runtime', 'models.serve',"
        " 'models.features', 'models.pv_features', 'models.solar', 'models.card']:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != name: raise\n"
        "    else:\n"
        "        live.append(name)\n"
        "for m in live: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'hil'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"live path loads {out.stdout.strip()}"
