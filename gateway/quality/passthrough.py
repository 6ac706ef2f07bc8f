"""The quality seam when there is no quality stage: values pass, PV gets a nameplate guess."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.config import TwinConfig

#: the nameplate guess's sigma, as a share of the rating: the estimator trusts it little
NAMEPLATE_SIGMA = 0.3


def nameplate_mw(ghi: np.ndarray, rating: np.ndarray) -> np.ndarray:
    """A PV plant's nameplate guess (MW): rating * clip(0.85 * GHI / 1000 W/m2, 0, 1),
    half the rating where there is no GHI (NaN)."""
    return np.where(np.isfinite(ghi), rating * np.clip(0.85 * ghi / 1000.0, 0.0, 1.0),
                    0.5 * rating)


@dataclass
class PassResult:
    values: np.ndarray
    flags: np.ndarray
    pv_mw: np.ndarray
    pv_sigma_mw: np.ndarray


class PassThroughQuality:
    """Used when the quality stage is disabled or its models are missing: values pass
    unchanged, and each PV plant gets a weak pseudo-measurement so the estimate stays
    observable: P = rating * clip(0.85 * GHI / 1000 W/m2, 0, 1) from the plant's weather
    meter (a nameplate PVWatts-style guess), or half the rating when there is no GHI,
    with sigma = 30 % of rating so the estimator trusts it little."""

    def __init__(self, cfg: TwinConfig) -> None:
        self.rating = np.array([p.rating_mw for p in cfg.plants], float)
        self.ghi = np.array([cfg.channel_index.get(f"{p.weather}.ghi", -1) for p in cfg.plants],
                            int)
        self.sigma = NAMEPLATE_SIGMA * self.rating
        self._has_ghi = self.ghi >= 0
        self._ghi_at = np.maximum(self.ghi, 0)
        self._all_ghi = bool(self._has_ghi.all())
        self._no_ghi = ~self._has_ghi
        # the guess changes only when an irradiance does (weather is slow next to the
        # snapshot rate): the last GHI values and their guess are kept
        self._last_ghi = b""
        self._last_pv = np.zeros(0)

    def process(self, values: np.ndarray, flags: np.ndarray, now: float) -> PassResult:
        ghi = values.take(self._ghi_at)  # every snapshot: no np.where unless needed
        if not self._all_ghi:
            ghi[self._no_ghi] = np.nan
        key = ghi.tobytes()
        if key != self._last_ghi:
            self._last_ghi, self._last_pv = key, nameplate_mw(ghi, self.rating)
        return PassResult(values, flags, self._last_pv.copy(), self.sigma)

    lookahead_s = 0.0
    remote = None  # no predictor process

    def new_regime(self) -> None:
        """Nothing is tested here, so a topology change needs no re-basing."""

    def lookahead(self) -> None:
        """Nothing is predicted here, so nothing can be prepared ahead."""
