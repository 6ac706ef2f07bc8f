"""Measurement noise, missing values and gross errors (bad data) for scenario traces.

Noise: Gaussian, ``sigma = channel.sigma_at(true value) = max(rel |x|, abs) / k`` (k = 3
for accuracy stated as a maximum error, the 3-sigma convention).

Bad data, as in the DT paper (sec. 5.2): a requested share (e.g. 5, 10, 15 %) of the
*electrical* values (PMU and SCADA channels; weather channels get noise and gaps only) is
corrupted, chosen uniformly among the values that are not missing:

* magnitudes of voltage and current phasors (``vm``, ``im``): off by +-20-30 %,
* active and reactive power (``p``, ``q``, ``pinj``, ``qinj``): off by +-40-50 %,
* phasor angles (``va``, ``ia``): off by +-0.20-0.30 rad, i.e. the phasor moves by 20-30 %
  of its magnitude (|V e^{j d} - V| ~ |V| d), the angle counterpart of the magnitude rule.

The error is ``sign * u * max(|x|, typical_c)`` (u uniform in the range), where
``typical_c`` is the channel's median magnitude over the trace, raised to the median of the
same quantity's channels when the channel itself is nearly always near zero, and never
below 60 standard deviations of the channel's noise floor (so a gross error is
at least 12 sigma). A value near zero (a lightly
loaded branch, PV at night) is therefore corrupted relative to what the channel usually
reads, and every value labelled bad is really wrong (>> its noise).

Missing values: ``missing_pct`` of all values; half as isolated values (uniform), half as
dropouts of a whole device (a PMU with its current channels, one SCADA meter, one weather
station) lasting 2-10 s. A missing value is NaN in ``measured`` and is never labelled bad.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ANGLE_QUANTITIES = frozenset({"va", "ia"})
PHASOR_MAGNITUDES = frozenset({"vm", "im"})
POWER_QUANTITIES = frozenset({"p", "q", "pinj", "qinj"})
ELECTRICAL_QUANTITIES = ANGLE_QUANTITIES | PHASOR_MAGNITUDES | POWER_QUANTITIES

# relative error range (magnitudes, powers) or absolute range in rad (angles)
BAD_RANGE: dict[str, tuple[float, float]] = {
    **{q: (0.20, 0.30) for q in PHASOR_MAGNITUDES},
    **{q: (0.40, 0.50) for q in POWER_QUANTITIES},
    **{q: (0.20, 0.30) for q in ANGLE_QUANTITIES},
}


def noise_sigma(truth: np.ndarray, rel: np.ndarray, abs_: np.ndarray, k: np.ndarray
                ) -> np.ndarray:
    """Per-value sigma: max(rel |x|, abs) / k (columns = channels)."""
    return np.maximum(rel[None, :] * np.abs(truth), abs_[None, :]) / k[None, :]


def add_noise(truth: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """measured = truth + sigma * N(0, 1)."""
    return truth + sigma * rng.standard_normal(truth.shape)


def missing_mask(n_steps: int, devices: Sequence[np.ndarray], n_channels: int, pct: float,
                 rng: np.random.Generator, step_s: float) -> np.ndarray:
    """Bool (T, m): isolated missing values plus whole-device dropouts of 2-10 s."""
    mask = np.zeros((n_steps, n_channels), dtype=bool)
    if pct <= 0 or n_steps == 0 or n_channels == 0:
        return mask
    total = n_steps * n_channels
    share = pct / 100.0
    n_iso = round(0.5 * share * total)
    if n_iso:
        flat = rng.choice(total, size=min(n_iso, total), replace=False)
        mask.ravel()[flat] = True
    # dropouts: a device's channels are all missing for L steps, L ~ U{2..10} s
    min_len = max(1, round(2.0 / step_s))
    max_len = max(min_len, round(10.0 / step_s))
    mean_len = 0.5 * (min_len + max_len)
    for cols in devices:
        n_events = rng.poisson(0.5 * share * n_steps / mean_len)
        if n_events == 0:
            continue
        starts = rng.integers(0, n_steps, size=n_events)
        lengths = rng.integers(min_len, max_len + 1, size=n_events)
        steps = np.zeros(n_steps + 1, dtype=np.int64)
        np.add.at(steps, starts, 1)
        np.add.at(steps, np.minimum(starts + lengths, n_steps), -1)
        rows = np.cumsum(steps[:-1]) > 0
        mask[np.ix_(rows, cols)] = True
    return mask


def typical_magnitude(truth: np.ndarray, quantities: Sequence[str], floor: np.ndarray
                      ) -> np.ndarray:
    """Per-channel typical magnitude used to scale gross errors near zero."""
    med = np.median(np.abs(truth), axis=0) if truth.shape[0] else np.zeros(truth.shape[1])
    typ = med.copy()
    qs = np.asarray(quantities)
    for q in set(quantities):
        cols = qs == q
        # a channel whose median is tiny compared to its siblings takes the siblings' median
        sib = float(np.median(med[cols]))
        typ[cols] = np.maximum(med[cols], np.where(med[cols] < 0.1 * sib, sib, 0.0))
    return np.maximum(typ, floor)


def corrupt(measured: np.ndarray, truth: np.ndarray, quantities: Sequence[str],
            eligible: np.ndarray, missing: np.ndarray, pct: float, sigma_floor: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt ``pct`` % of the eligible (electrical) values; returns (measured, bad, error).

    The count is ``round(pct/100 * T * n_eligible)`` exactly (capped by the values that are
    not missing). ``error`` is the gross error added (0 where not bad).
    """
    n_steps, m = truth.shape
    bad = np.zeros((n_steps, m), dtype=bool)
    gross = np.zeros((n_steps, m))
    cols = np.flatnonzero(eligible)
    if pct <= 0 or cols.size == 0 or n_steps == 0:
        return measured, bad, gross
    n_bad = round(pct / 100.0 * n_steps * cols.size)
    sub_missing = missing[:, cols]
    candidates = np.flatnonzero(~sub_missing.ravel())
    n_bad = min(n_bad, candidates.size)
    pick = candidates[rng.choice(candidates.size, size=n_bad, replace=False)]
    rows, sub_cols = np.divmod(pick, cols.size)
    chan = cols[sub_cols]
    qs = [quantities[int(c)] for c in cols]
    typ = typical_magnitude(truth[:, cols], qs, 60.0 * sigma_floor[cols])
    lo = np.array([BAD_RANGE.get(q, (0.0, 0.0))[0] for q in quantities])
    hi = np.array([BAD_RANGE.get(q, (0.0, 0.0))[1] for q in quantities])
    u = lo[chan] + (hi[chan] - lo[chan]) * rng.random(n_bad)
    sign = np.where(rng.random(n_bad) < 0.5, -1.0, 1.0)
    typ_full = np.zeros(m)
    typ_full[cols] = typ
    is_angle = np.array([quantities[c] in ANGLE_QUANTITIES for c in range(m)])
    # error = sign * u * max(|x|, typical)  (magnitudes, powers); sign * u rad (angles)
    scale = np.where(is_angle[chan], 1.0, np.maximum(np.abs(truth[rows, chan]), typ_full[chan]))
    err = sign * u * scale
    out = measured.copy()
    out[rows, chan] += err
    bad[rows, chan] = True
    gross[rows, chan] = err
    return out, bad, gross
