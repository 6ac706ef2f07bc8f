"""Run ``gridtwin`` in a child Python where one top-level module is not installed.

A finder placed first on ``sys.meta_path`` answers ModuleNotFoundError for the module
(what an install without the extra that provides it sees); the child also checks, after
the command, that nothing loaded the module some other way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# python -c CODE MODULE ARGS...: runs `gridtwin ARGS...` with MODULE not installable
_CODE = (
    "import sys\n"
    "blocked = sys.argv.pop(1)\n"
    "class Absent:\n"
    "    @staticmethod\n"
    "    def find_spec(name, path=None, target=None):\n"
    "        if name.split('.')[0] == blocked:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Absent)\n"
    "from gateway.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "assert blocked not in {m.split('.')[0] for m in sys.modules}\n"
    "sys.exit(status)\n"
)


def gridtwin_without(module: str, *args: str, cwd: Path = ROOT, timeout: float = 280.0
                     ) -> subprocess.CompletedProcess[str]:
    """``gridtwin ARGS`` with ``module`` absent; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-c", _CODE, module, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)
