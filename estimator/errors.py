"""Exception root of the estimator package."""

from __future__ import annotations

import numpy as np


class EstimatorError(Exception):
    """Root of every error raised on purpose by ``estimator``."""


class NetworkError(EstimatorError):
    """A grid case is inconsistent; the message names the element (bus, branch, island)."""


class NotObservableError(EstimatorError):
    """The measurement set cannot determine every bus voltage; ``buses`` names the ones left."""

    def __init__(self, message: str, buses: list[int] | None = None) -> None:
        self.buses = list(buses or [])
        super().__init__(message)


class DidNotConverge(EstimatorError):
    """The iteration hit its limit; ``mismatch`` is the last max |dV| (pu)."""

    def __init__(self, message: str, mismatch: float, iterations: int,
                 last: np.ndarray | None = None) -> None:
        self.mismatch = mismatch
        self.iterations = iterations
        self.last = last
        super().__init__(message)
