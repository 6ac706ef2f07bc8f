"""Optional libraries and the extras that install them (``pip install 'gridtwin[EXTRA]'``).

The run-time install stays lean: torch and onnx (training), matplotlib (figures) come with
extras, and are imported only where used. Commands check them up front with
:func:`require`, so a missing one is one line naming the extra, before any work starts.
"""

from __future__ import annotations

from importlib import import_module

from models.errors import MissingExtra

#: importable module -> the pyproject extra that installs it
EXTRA_OF: dict[str, str] = {"torch": "train", "onnx": "train", "matplotlib": "plots"}


def _importable(module: str) -> bool:
    try:
        import_module(module)
    except ImportError:
        return False
    return True


def require(what: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` unless every module in ``modules`` imports."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        extras = ",".join(sorted({EXTRA_OF.get(m, m) for m in missing}))
        raise MissingExtra(f"{what} needs {' and '.join(missing)}: "
                           f"pip install 'gridtwin[{extras}]'")
