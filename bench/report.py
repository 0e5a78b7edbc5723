"""The DataFrames and figures behind the tables and notebooks. Notebooks only call these."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student t); NaN for one value."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def fmt_mean_ci(values, scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 0:
        return "not run"
    half = ci95(v)
    return f"{v.mean():.1f}" if np.isnan(half) else f"{v.mean():.1f} ± {half:.1f}"


def ok_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def seed_summary(records: list[dict], metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, category, recipe, epochs): seeds and mean ± 95 % CI (in %)."""
    rows = []
    for r in ok_records(records):
        rows.append({"variant": r["variant_name"], "key": r["variant_key"], "dataset": r["dataset"],
                     "category": r["category"], "recipe": f"{r['recipe']}/{r['epochs']}ep", "seed": r["seed"],
                     **{m: r["metrics"][m] for m in metrics}})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    out = df.groupby(["variant", "key", "dataset", "category", "recipe"], sort=False).agg(
        seeds=("seed", "nunique"), **{m: (m, fmt_mean_ci) for m in metrics}).reset_index()
    return out.drop(columns="key")
