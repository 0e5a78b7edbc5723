"""The timing tables (Table 3 and what stands beside it). Every row and every ratio comes from one
timing run, named: subjects compared were timed side by side in its interleaved rounds."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench import intervals
from bench.records import TimingRecord
from bench.report.numbers import NOT_RUN
from bench.variants import PRESETS

# Table 3's subjects first, in the paper's order; every other subject after them, sorted.
TABLE3_FIRST = ("reduced", "stpm", "mixed", "anomalib-stfpm")
PAPERS_REDUCED = PRESETS["reduced"].arch_key


def timing_frame(timing: list[TimingRecord]) -> pd.DataFrame:
    """One row per timed case. `rounds` is 0 for single-pass records (timing schema 1): those
    predate interleaved rounds, are kept and labelled, and never enter a ratio."""
    rows = [{"run_id": r.run_id, "origin": r.origin, "name": r.name, "method": r.method, "scope": r.scope,
             "batch_size": r.batch_size, "precision": r.precision, "channels_last": r.channels_last,
             "compile": r.compile, "cuda_graphs": r.cuda_graphs, "median_ms": r.median_ms, "p99_ms": r.p99_ms,
             "images_per_s": r.images_per_s, "role": r.role, "floor": r.floor, "map_path": r.map_path or "exact",
             "rounds": len(r.rounds), "device": r.env["device_name"], "device_type": r.env["device"],
             "gmacs": r.gmacs, "variant_key": r.variant_key,
             "arch_key": r.arch_key}
            for r in timing if r.ok]
    return pd.DataFrame(rows)


def is_plain(df: pd.DataFrame) -> pd.Series:
    """Rows timed without channels_last, torch.compile or CUDA graphs."""
    return ~df.channels_last & ~df["compile"] & ~df.cuda_graphs


def one_run(df: pd.DataFrame, rank=None) -> pd.DataFrame:
    """Per device, the rows of one run only: the latest run with interleaved rounds (where a device
    has none, its latest single-pass run); with RANK (a run's rows -> a number), the latest of the
    runs ranked highest."""
    keep = []
    for _, g in df.groupby("device_type"):
        pool = g[g.rounds > 0] if (g.rounds > 0).any() else g
        runs = {run: (rank(rows) if rank else 0, run) for run, rows in pool.groupby("run_id")}
        keep.append(pool[pool.run_id == max(runs, key=runs.get)])
    return pd.concat(keep) if keep else df


def _times_the_papers_detectors(rows: pd.DataFrame) -> tuple[bool, int]:
    """Table 3 is the paper's architectures (ResNet-18 teachers): a run of other teachers (the peers
    grid's Lite0) ranks below one of them, and a run with more of Table 3's subjects above one with fewer."""
    return PAPERS_REDUCED in set(rows.arch_key), len(set(rows.name) & set(TABLE3_FIRST))


def table3_timing(timing: list[TimingRecord], scope: str = "map", batch_size: int = 1, precision: str = "fp32",
                  device_type: str | None = None) -> pd.DataFrame:
    """FPS, latency and fraction of floor per subject, one timing run per device (named)."""
    df = timing_frame(timing)
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN + " (no timing records)"]})
    df = df[(df.scope == scope) & (df.batch_size == batch_size) & (df.precision == precision) & is_plain(df)]
    if device_type:
        df = df[df.device_type == device_type]
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN + f" (no {scope} b{batch_size} {precision} records)"]})
    df = one_run(df, rank=_times_the_papers_detectors)
    rows = []
    for device, g in df.groupby("device"):
        run = g.run_id.iloc[0] + ("" if g.rounds.iloc[0] else " (single pass, before interleaved rounds)")
        ips = dict(zip(g["name"], g["images_per_s"]))
        for measure, col, fmt in (("FPS", "images_per_s", "{:.1f}"), ("latency (ms)", "median_ms", "{:.1f}")):
            rows.append({"device": device, "run": run, "measure": measure,
                         **{n: fmt.format(v) for n, v in zip(g["name"], g[col])}})
        floors = {n: ips[n] / ips[f] for n, f in zip(g["name"], g["floor"]) if f in ips}
        if floors:
            rows.append({"device": device, "run": run, "measure": "fraction of floor",
                         **{n: f"{v:.2f}" for n, v in floors.items()}})
    table = pd.DataFrame(rows).set_index(["device", "run", "measure"]).fillna("—")
    first = sorted((n for n in table.columns if n.split("@")[0] in TABLE3_FIRST),
                   key=lambda n: (TABLE3_FIRST.index(n.split("@")[0]), n))
    return table[first + sorted(c for c in table.columns if c not in first)]


def _options(channels_last: bool, compile: bool, cuda_graphs: bool, graphs: str = "CUDA graphs") -> str:
    return " + ".join(n for n, on in (("channels_last", channels_last), ("compile", compile),
                                       (graphs, cuda_graphs)) if on)


def timing_options(timing: list[TimingRecord], scope: str = "map") -> pd.DataFrame:
    """Speed-up of channels_last, torch.compile and CUDA graphs over the plain model, measured in
    the same run at the same batch and precision (1.00 = no change)."""
    df = timing_frame(timing)
    if df.empty:
        return pd.DataFrame()
    df = df[df.scope == scope]
    plain = is_plain(df)
    base = {(r.run_id, r.name, r.batch_size, r.precision): r.images_per_s for r in df[plain].itertuples(index=False)}
    out = []
    for r in df[~plain].itertuples(index=False):
        ref = base.get((r.run_id, r.name, r.batch_size, r.precision))
        if ref:
            out.append({"device": r.device, "run": r.run_id, "subject": r.name, "batch": r.batch_size,
                        "precision": r.precision, "option": _options(r.channels_last, r.compile, r.cuda_graphs),
                        "speed-up": r.images_per_s / ref})
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out).pivot_table(index=["device", "run", "subject", "batch", "precision"],
                                          columns="option", values="speed-up")
    table = table.round(2)
    return table.astype(object).where(table.notna(), "—")   # an option a subject was not timed with


def _device_names(timing: list[TimingRecord]) -> dict:
    return {r.run_id: r.env["device_name"] for r in timing}


def timing_ratios(timing: list[TimingRecord], scope: str = "map") -> pd.DataFrame:
    """Within each run with interleaved rounds: throughput ratios (reduced/STPM, reduced/anomalib
    STFPM, mixed/reduced, each detector over its teachers alone), median over rounds [95 % interval]."""
    table = intervals.run_ratios(timing)
    if table.empty:
        return table
    table = table[table.scope == scope]
    if table.empty:
        return pd.DataFrame()
    cell = [f"batch {b} · {p}" + ("" if not (c or k or g) else " · " + _options(c, k, g, "graphs").replace(" + ", "+"))
            for b, p, c, k, g in zip(table.batch_size, table.precision, table.channels_last, table["compile"],
                                     table.cuda_graphs)]
    table = table.assign(device=table.run_id.map(_device_names(timing)), cell=cell)
    # one row per ratio, one column per cell: a run's comparisons read down a column
    out = table.pivot_table(index=["device", "run_id", "ratio"], columns="cell", values="value", aggfunc="first")
    out.columns.name = None
    return out.fillna("—")


def timing_across_runs(timing: list[TimingRecord], scope: str = "map") -> pd.DataFrame:
    """Each ratio in every run that timed it (same code, architectures and cell; `code` is the git
    revision): how far a repeat in a new process moves it, beside the intervals of one run."""
    table = intervals.across_runs(timing)
    if table.empty:
        return table
    table = table[(table.scope == scope) & ~table["compile"] & ~table.cuda_graphs]
    return table.drop(columns=["scope", "compile", "cuda_graphs", "archs"]).set_index(
        ["device", "code", "ratio", "batch_size", "precision", "channels_last"]).sort_index()


def timing_map_cost(timing: list[TimingRecord]) -> pd.DataFrame:
    """What the anomaly map costs each detector (scope `map` minus `network`), per run with rounds."""
    table = intervals.map_cost(timing)
    if table.empty:
        return table
    return table.assign(device=table.run_id.map(_device_names(timing))).set_index(
        ["device", "run_id", "subject", "batch_size", "precision", "options"])


def timing_runs(timing: list[TimingRecord]) -> pd.DataFrame:
    """Every timing run: when, where, what, with which allocator; the single-pass ones labelled as
    such, and how many of a run's cases were found wrong later (status `invalid`, in no table)."""
    df = timing_frame(timing)
    if df.empty:
        return df
    out = df.groupby("run_id").agg(device=("device", "first"), subjects=("name", lambda x: ", ".join(sorted(set(x)))),
                                   cases=("name", "size"), rounds=("rounds", "max")).reset_index()
    out["kind"] = np.where(out.rounds > 0, "interleaved rounds", "single pass (older; not compared across runs)")
    allocator = {r.run_id: r.env.get("allocator") or "—" for r in timing}
    invalid = pd.Series([r.run_id for r in timing if r.status == "invalid"], dtype=object).value_counts()
    out["allocator"] = out.run_id.map(allocator)
    out["invalid cases"] = out.run_id.map(invalid).fillna(0).astype(int)
    return out.set_index("run_id")
