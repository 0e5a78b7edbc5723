"""How a number is written in a table: mean ± 95 % CI over seeds, in percent; "not run" for a cell
with no record."""
from __future__ import annotations

import numpy as np
from scipy import stats

NOT_RUN = "not run"


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student t); NaN for one value."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def fmt_mean_ci(values, scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 0:
        return NOT_RUN
    half = ci95(v)
    return f"{v.mean():.1f}" if np.isnan(half) else f"{v.mean():.1f} ± {half:.1f}"
