"""Records as DataFrames, and which runs a table takes: a preset's runs, a grid's runs.

A run belongs to preset P when every Variant field is P's, except the teachers (a table shows runs
with whichever teachers were available, and says which) and the fields a table lets vary. A grid's
runs are those of its presets with its axes free, whatever grid (or none) recorded them: a record
is a fact about a variant, and the grid file says which variants to compare.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench.grids import Grid
from bench.jobs import Job
from bench.records import RunRecord, TimingRecord, read_runs, read_timing
from bench.report.numbers import fmt_mean_ci
from bench.variants import PRESETS, Variant

METRICS = ("image_auroc", "pixel_auroc", "aupro")
# Fields a table may vary without the run stopping to be "the method": which teachers were available.
TEACHER_FIELDS = ("teacher", "teacher2", "teacher_init", "teacher2_init")
# ... and, for a method, what the machine chose: PatchCore's coreset (1 % on a CPU, 10 % as shipped).
FREE = {"anomalib-patchcore": ("coreset_ratio",)}


def load_runs(results: str | Path = "results") -> list[RunRecord]:
    return read_runs(Path(results) / "runs")


def load_timing(results: str | Path = "results") -> list[TimingRecord]:
    return read_timing(Path(results) / "timing")


def ok_records(records: list) -> list:
    return [r for r in records if r.ok]


def teachers_label(variant: dict) -> str:
    def one(name, init):
        return name + (" (random)" if init == "random" else "")
    label = one(variant["teacher"], variant["teacher_init"])
    if variant.get("teacher2"):
        label += " + " + one(variant["teacher2"], variant["teacher2_init"])
    return label


def runs_frame(records: list[RunRecord], datasets: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run: the fields the tables group by (`v.<field>` for every Variant
    field, older records' missing fields at their defaults), metrics as columns."""
    rows = []
    for r in ok_records(records):
        if datasets and r.dataset not in datasets:
            continue
        variant = Variant.from_record(r)
        v = variant.fields()
        rows.append({"method": r.method, "variant_name": r.variant_name, "variant_key": r.variant_key,
                     "arch_key": variant.arch_key, "dataset": r.dataset, "category": r.category, "seed": r.seed,
                     "recipe": r.recipe_label, "teachers": teachers_label(v),
                     "grid": (r.grid or {}).get("name"), **{f"v.{k}": val for k, val in v.items()},
                     **{m: r.metrics[m] for m in (*METRICS, "f1_max")}})
    return pd.DataFrame(rows)


def _free(method: str, free: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The fields a run of METHOD may differ in from its preset and still be the method."""
    return (*TEACHER_FIELDS, *FREE.get(method, ()), *free)


def runs_of_preset(df: pd.DataFrame, base: str, free: tuple[str, ...] = ()) -> pd.DataFrame:
    """Runs of preset BASE: every variant field as the preset's, except teachers, the method's free
    fields and FREE."""
    if df.empty:
        return df
    mask = pd.Series(True, index=df.index)
    preset = PRESETS[base]
    skip = _free(preset.method, free)
    for k, val in preset.fields().items():
        if k not in skip:
            mask &= df[f"v.{k}"].apply(lambda x, val=val: x == val or (val is None and _is_nan(x)))
    return df[mask]


def _is_nan(x) -> bool:
    """A field that is None in a record reads back as NaN where other rows hold numbers (coreset_ratio)."""
    return isinstance(x, float) and x != x


def runs_of_grid(df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Runs of the grid's presets with its axes free, a `base` column naming the preset. A run that
    matches several presets (they differ only in teachers, as `reduced` and `reduced-lite0`) is
    counted once, under the preset whose teacher it had, else the first."""
    frames = [runs_of_preset(df, base, tuple(grid.variant_axes))
              .assign(base=base, own_teacher=lambda f, b=base: f["v.teacher"] == PRESETS[b].teacher)
              for base in grid.bases]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    runs = pd.concat(frames).sort_values("own_teacher", ascending=False, kind="stable")
    runs = runs[~runs.index.duplicated(keep="first")].drop(columns="own_teacher")
    return runs.sort_index(kind="stable")


def seed_summary(records: list[RunRecord], metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, category, recipe): seeds and mean ± 95 % CI (in %)."""
    df = runs_frame(records)
    if df.empty:
        return df
    keys = ["variant_key", "dataset", "category", "recipe"]
    out = df.groupby(keys, sort=False).agg(variant=("variant_name", "first"), seeds=("seed", "nunique"),
                                           **{m: (m, fmt_mean_ci) for m in metrics}).reset_index()
    return out[["variant", "dataset", "category", "recipe", "seeds", *metrics]]


def print_jobs_summary(jobs: list[Job], results: str | Path) -> None:
    """The seed summary of these jobs' records (what `invoke ablate` prints at the end)."""
    keys = {(j.variant.key, j.dataset_name, j.category, j.recipe, j.n_epochs) for j in jobs}
    table = seed_summary([r for r in load_runs(results)
                          if (r.variant_key, r.dataset, r.category, r.recipe, r.epochs) in keys])
    if len(table):
        print()
        print(tabulate(table, headers="keys", tablefmt="github", showindex=False))


def failed_runs(records: list[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([{"variant_name": r.variant_name, "dataset": r.dataset, "category": r.category,
                          "seed": r.seed, "error": r.error} for r in records if r.status == "failed"])


def provenance(records: list[RunRecord], timing: list[TimingRecord]) -> pd.DataFrame:
    """What stands behind the numbers: datasets, teachers (with weight labels), recipes, hardware."""
    rows = {}
    for r in ok_records(records):
        key = (r.dataset, teachers_label(r.variant), r.recipe_label,
               r.env["cpu"] + " (CPU)" if r.device == "cpu" else r.env["device_name"])
        labels = "; ".join(f"{t['backbone']}: {t.get('label') or t['kind']}" for t in r.teachers)
        row = rows.setdefault(key, {"runs": 0, "seeds": set(), "weights": labels})
        row["runs"] += 1
        row["seeds"].add(r.seed)
    out = [{"dataset": k[0], "teachers": k[1], "recipe": k[2], "hardware": k[3], "runs": v["runs"],
            "seeds": ",".join(map(str, sorted(v["seeds"]))), "teacher weights": v["weights"]}
           for k, v in sorted(rows.items())]
    for dev in sorted({r.env["device_name"] for r in timing if r.ok}):
        out.append({"dataset": "(timing)", "teachers": "random init (speed only)", "recipe": "-",
                    "hardware": dev, "runs": sum(1 for r in timing if r.env["device_name"] == dev),
                    "seeds": "-", "teacher weights": "-"})
    return pd.DataFrame(out)


def is_canonical(record: RunRecord) -> bool:
    """The run is its method's preset, up to the teachers it had (and its method's free fields)."""
    fields = Variant.from_record(record).fields()
    skip = _free(record.method)
    return all(fields[k] == v for k, v in PRESETS[record.method].fields().items() if k not in skip)


def gallery_picks(records: list[RunRecord], datasets=None, path_part: str = "") -> list[RunRecord]:
    """Runs with kept example maps: one per dataset, category and method's preset (MixedTeacher
    first), or every run whose path contains PATH_PART."""
    picks = [r for r in ok_records(records) if r.examples and (not datasets or r.dataset in datasets)
             and (path_part in r.path if path_part else is_canonical(r))]
    # the longest-trained run of each method first: it shows what the method can do
    picks.sort(key=lambda r: (r.dataset, r.category, r.method != "mixed", r.method, -r.epochs))
    if path_part:
        return picks
    seen, out = set(), []
    for r in picks:
        key = (r.dataset, r.category, r.method)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
