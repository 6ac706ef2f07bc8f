"""Exception root of the hil (emulator and scenario) package."""

from __future__ import annotations


class HilError(Exception):
    """Root of every error raised on purpose by ``hil``."""


class ScenarioError(HilError):
    """A scenario cannot be generated or a trace file is unreadable or inconsistent."""
