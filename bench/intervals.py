"""Ratios between timed subjects, taken within one run and one round, with bootstrap intervals.

Two subjects timed in the same round saw the same machine state; their throughput ratio in that
round is one observation. A ratio is reported as the median over rounds with a percentile bootstrap
95 % interval (rounds resampled), never as a quotient of two numbers measured at different times.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.records import TimingRecord

# (numerator, denominator) by subject name before any '@map-path' suffix
PAIRS = (("reduced", "stpm"), ("reduced", "anomalib-stfpm"), ("stpm", "anomalib-stfpm"), ("mixed", "reduced"),
         # anomalib's inference as its users run it (TorchInferencer: pre-processor, model, post-processor)
         ("reduced", "anomalib-stfpm[inferencer]"), ("stpm", "anomalib-stfpm[inferencer]"))
CELL_KEYS = ("run_id", "scope", "batch_size", "precision", "channels_last", "compile", "cuda_graphs")


def bootstrap_median(values, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of VALUES and its percentile-bootstrap interval."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no values to summarise")
    if len(v) == 1:
        return float(v[0]), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.median(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
    lo, hi = np.percentile(boots, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(np.median(v)), float(lo), float(hi)


def per_round_ratio(a: TimingRecord, b: TimingRecord) -> np.ndarray:
    """Throughput of A over B in each round both ran (records of one cell of one run)."""
    ra, rb = a.round_images_per_s, b.round_images_per_s
    n = min(len(ra), len(rb))
    return np.asarray(ra[:n]) / np.asarray(rb[:n])


def fmt_interval(m: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{m:.{digits}f}" if np.isnan(lo) else f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _parts(name: str) -> tuple[str, str | None, str]:
    """'reduced@lean[ort]' -> ('reduced', 'lean', 'ort'): subject, map path, backend."""
    backend = "eager"
    if name.endswith("[ort]"):
        name, backend = name[:-len("[ort]")], "ort"
    base, _, path = name.partition("@")
    return base, path or None, backend


def _with_rounds(records: list[TimingRecord]) -> list[TimingRecord]:
    return [r for r in records if r.ok and r.rounds]


def run_ratios(records: list[TimingRecord]) -> pd.DataFrame:
    """Every named pair and every detector's fraction of floor (detector / its teachers alone), per
    cell of each run: median over rounds [95 % interval]."""
    rows = []
    cells: dict[tuple, dict] = {}
    for r in _with_rounds(records):
        cells.setdefault(r.cell, {})[r.name] = r
    for key, subjects in cells.items():
        head = dict(zip(CELL_KEYS, key))
        for a in subjects.values():
            pa = _parts(a.name)
            for b in subjects.values():
                pb = _parts(b.name)
                peer = "peer" in (a.role, b.role)
                like = peer or pa[1:] == pb[1:]       # same map path and backend, or against a peer
                if ((pa[0], pb[0]) in PAIRS and like) or (pa[2] == "ort" and pb[2] == "eager" and pa[:2] == pb[:2]):
                    rows.append({**head, "ratio": f"{a.name} / {b.name}", "archs": f"{_arch(a)} / {_arch(b)}",
                                 **_summary(per_round_ratio(a, b))})
            if a.role == "detector" and a.floor in subjects:
                rows.append({**head, "ratio": f"{a.name} / floor", "archs": f"{_arch(a)} / {a.floor}",
                             **_summary(per_round_ratio(a, subjects[a.floor]))})
    return pd.DataFrame(rows)


def _arch(r: TimingRecord) -> str:
    """What a subject is, whatever its name: its architecture (Variant.arch_key) and backend."""
    return (r.arch_key or r.name) + ("" if r.backend == "eager" else f"[{r.backend}]")


def across_runs(records: list[TimingRecord]) -> pd.DataFrame:
    """The same ratio (same code, architectures and cell) in every run on one device that timed it:
    each run's median over its rounds, and across the runs their median and range. A run's interval
    holds one process's machine state; a new process can land elsewhere, and this shows how far."""
    df = run_ratios(records)
    if df.empty:
        return df
    device = {r.run_id: r.env.get("device_name") for r in records}
    code = {r.run_id: str(r.env.get("git_revision") or "?")[:7] for r in records}
    df = df.assign(device=df.run_id.map(device), code=df.run_id.map(code))
    keys = ["device", "code", "scope", "batch_size", "precision", "channels_last", "compile", "cuda_graphs", "ratio", "archs"]
    rows = []
    for key, g in df.groupby(keys, sort=True):
        if g.run_id.nunique() < 2:
            continue
        g = g.sort_values("run_id")
        rows.append({**dict(zip(keys, key)), "runs": len(g),
                     "each run (oldest first)": ", ".join(f"{m:.2f}" for m in g["median"]),
                     "median of runs": round(float(np.median(g["median"])), 2),
                     "range": f"[{g['median'].min():.2f}, {g['median'].max():.2f}]"})
    return pd.DataFrame(rows)


def _summary(values) -> dict:
    m, lo, hi = bootstrap_median(values)
    return {"median": m, "low": lo, "high": hi, "rounds": len(values), "value": fmt_interval(m, lo, hi)}


def map_cost(records: list[TimingRecord]) -> pd.DataFrame:
    """What the anomaly map costs each detector: `map` minus `network` latency per image, per round
    of one run (both scopes are timed in separate cells of the same run), median [95 % interval]."""
    by = {}
    for r in _with_rounds(records):
        if r.role == "detector" and r.scope in ("network", "map"):
            key = (r.run_id, r.name, r.batch_size, r.precision, r.channels_last, r.compile, r.cuda_graphs)
            by.setdefault(key, {})[r.scope] = r
    rows = []
    for key, pair in by.items():
        if len(pair) == 2:
            bs = key[2]
            n = min(len(pair["map"].rounds), len(pair["network"].rounds))
            diff = [(pair["map"].rounds[i]["median_ms"] - pair["network"].rounds[i]["median_ms"]) / bs * 1e3
                    for i in range(n)]
            m, lo, hi = bootstrap_median(diff)
            rows.append({"run_id": key[0], "subject": key[1], "batch_size": bs, "precision": key[3],
                         "options": _options(pair["map"]), "map - network (us/image)": fmt_interval(m, lo, hi, 0),
                         "map share of map scope": f"{m / (pair['map'].median_ms / bs * 1e3):.0%}"})
    return pd.DataFrame(rows)


def _options(r: TimingRecord) -> str:
    return "+".join(n for n, on in (("channels_last", r.channels_last), ("compile", r.compile),
                                    ("graphs", r.cuda_graphs)) if on) or "plain"
