"""Input preparation shared by training and run time (numpy only, no torch).

Measurement predictor (one shared model for every channel kind)
---------------------------------------------------------------
A window holds the previous ``T-1 = 9`` cleaned values of one channel. It is made
unit-free before the network sees it::

    c = mean(w)                           # window centre, channel units
    s = max(std(w), floor)                # window scale, channel units (floor > 0)
    x_n = (w - c) / s                     # what the network reads, shape (9,)
    y   = c + s * f(x_n)                  # the prediction of the current value

so a kV, kA, MW or rad channel all look alike to the network, and one model serves them
all. ``floor`` is the channel's measurement standard deviation (from the config's
accuracy class), so a flat, noise-free window is not blown up by a near-zero std.

PV forecaster
-------------
Weather windows (irradiance GHI, DNI, DHI in W/m2, air temperature degC, wind speed m/s,
wind direction deg) are min-max normalised per feature with the training constants
stored in the model card: ``x_n = (x - x_min) / (x_max - x_min)`` (paper eq. for the PV
inputs); values are clipped to [-0.5, 1.5] so an unseen site a little outside the
training range extrapolates gently rather than wildly. The forecaster's further inputs
(the sun's position and the plane-of-array proxy, from the sample's time and the plant's
coordinates) are built by :mod:`models.pv_features` and normalised the same way; the
model card's ``normalisation.features`` lists what a model reads.
"""

from __future__ import annotations

import numpy as np

WINDOW = 10  # T: the paper's time-series length; the network reads the previous T-1 values
HIST = WINDOW - 1
PV_FEATURES = ("ghi", "dni", "dhi", "temp_air", "wind_speed", "wind_dir")
PV_UNITS = ("W/m2", "W/m2", "W/m2", "degC", "m/s", "deg")
TARGET_CLIP = 12.0  # normalised targets beyond this are clipped in training


def normalise_windows(
    win: np.ndarray, floor: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``win`` (B, T-1) -> (x_n float32 (B, T-1, 1), centre (B,), scale (B,))."""
    c = win.mean(axis=1)
    # s = max(std(w), floor): population std of the window
    s = np.maximum(win.std(axis=1), floor)
    xn = ((win - c[:, None]) / s[:, None]).astype(np.float32)
    return xn[:, :, None], c, s


def minmax(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """x_n = (x - x_min) / (x_max - x_min), clipped to [-0.5, 1.5]; float32."""
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return np.clip((x - lo) / span, -0.5, 1.5).astype(np.float32)


def sliding_windows(series: np.ndarray, length: int) -> np.ndarray:
    """(n, ...) -> (n - length + 1, length, ...) view of consecutive windows."""
    n = series.shape[0]
    if n < length:
        return np.empty((0, length, *series.shape[1:]), series.dtype)
    idx = np.arange(length)[None, :] + np.arange(n - length + 1)[:, None]
    return series[idx]

