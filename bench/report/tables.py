"""The accuracy tables: the paper's Tables 1, 2, 4, 5, 6 beside ours, and any grid's ablation
table, built from the grid file. Cells: mean ± 95 % CI over seeds, in %; "not run" where no record."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from bench import paper
from bench.grids import RECIPE_AXIS, Grid, axis_label
from bench.report.frames import METRICS, TEACHER_FIELDS, ok_records, runs_frame, runs_of_grid, runs_of_preset
from bench.report.numbers import NOT_RUN, ci95, fmt_mean_ci
from bench.variants import PEERS

FAMILY_NAMES = {"mvtec": "MVTec AD", "btad": "BTAD"}
ROWS = ["dataset", "category", "teachers", "recipe"]


def _pivot(df: pd.DataFrame, rows: list[str], cols: list[str], metric: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame()
    table = df.groupby(rows + cols)[metric].apply(fmt_mean_ci).unstack(cols)
    table.columns.name = None
    return table.fillna(NOT_RUN)


def _not_run(what: str = "") -> pd.DataFrame:
    return pd.DataFrame({"status": [NOT_RUN + what]})


def _in_order(values, known: list) -> list:
    """KNOWN (the grid file's values) first, in its order, then any value it does not list."""
    return [*known, *sorted((v for v in values if v not in known), key=lambda v: (len(str(v)), str(v)))]


def _recipe_rank(label: str, grid: Grid) -> int:
    """A recipe column's place: its recipe's in the file ("paper-mean/200ep" as "paper"), else last."""
    order = list(grid.axes[RECIPE_AXIS])
    name = label.split("/")[0].removesuffix("-mean")
    return order.index(name) if name in order else len(order)


def ablation_table(records, grid: str | Grid, metric: str = "image_auroc", datasets=None) -> pd.DataFrame:
    """The grid's table: one column per combination of its axis values (in the file's order), one
    row per dataset, category, teachers and recipe (and preset, for a grid of several); a grid
    without axes has one column per preset."""
    grid = grid if isinstance(grid, Grid) else Grid.load(grid)
    df = runs_of_grid(runs_frame(records, datasets), grid)
    if df.empty:
        return _not_run()
    rows = [r for r in ROWS if not (r == "recipe" and RECIPE_AXIS in grid.axes)
            and not (r == "teachers" and set(grid.axes) & set(TEACHER_FIELDS))]
    columns: dict[str, list[str]] = {}
    for axis, values in grid.variant_axes.items():
        labels = df[f"v.{axis}"].map(lambda x, a=axis: f"{a}={axis_label(x)}")
        df = df.assign(**{axis: labels})
        columns[axis] = _in_order(set(labels), [f"{axis}={axis_label(v)}" for v in values])
    if RECIPE_AXIS in grid.axes:
        columns[RECIPE_AXIS] = sorted(set(df.recipe), key=lambda label: (_recipe_rank(label, grid), label))
    if not columns:
        columns["base"] = list(grid.bases)
    elif len(grid.bases) > 1:
        rows.insert(2, "base")
    table = _pivot(df, rows, list(columns), metric)
    order = list(itertools.product(*columns.values())) if len(columns) > 1 else next(iter(columns.values()))
    return table.reindex(columns=pd.MultiIndex.from_tuples(order) if len(columns) > 1 else order,
                         fill_value=NOT_RUN)


def table1_layers(records, datasets=None) -> pd.DataFrame:
    """Mean image AUROC per dataset for the layers grid's sets of teacher layers (reduced student)."""
    grid = Grid.load("layers")
    df = runs_of_grid(runs_frame(records, datasets), grid)
    if df.empty:
        return _not_run()
    known = ["layers " + axis_label(v) for v in grid.axes["layers"]]
    df = df.assign(layers=df["v.layers"].map(lambda t: "layers " + axis_label(t)))
    # dataset mean over its categories per seed, then mean ± CI over seeds
    per_seed = df.groupby(["dataset", "teachers", "recipe", "layers", "seed"])["image_auroc"].mean().reset_index()
    table = _pivot(per_seed, ["dataset", "teachers", "recipe"], ["layers"], "image_auroc")
    return table.reindex(columns=_in_order(set(table.columns), known), fill_value=NOT_RUN)


def _paper_column(index: pd.Index, datasets: pd.Index, table: pd.DataFrame, column: str, family: str) -> list[str]:
    """The paper's value where our row is the paper's dataset and category, else say why there is none."""
    out = []
    for ds, cat in zip(datasets, index):
        comparable = family in str(ds).lower().replace("btech", "btad") and cat in table.index
        out.append(f"{table.loc[cat, column]:.1f}" if comparable else f"n/a (paper: {FAMILY_NAMES[family]} only)")
    return out


# The paper's column each measured peer stands beside (where the paper has one).
PAPER_PEER = {"anomalib-stfpm": "STPM", "anomalib-patchcore": "PatchCore"}


def _reading(row) -> str:
    """What a column's numbers were scored with: every method keeps its own image score."""
    coreset = f"coreset {row['v.coreset_ratio']:g} · " if row["method"] == "anomalib-patchcore" else ""
    return f"{coreset}score {row['v.score']}"


def _method_table(records, methods, metric, datasets, paper_table, paper_cols, family="mvtec") -> pd.DataFrame:
    runs = runs_frame(records, datasets)
    frames = [f for f in (runs_of_preset(runs, m) for m in methods) if not f.empty]
    if not frames:
        return _not_run()
    df = pd.concat(frames)
    df = df.assign(column=df["method"] + " · " + df["teachers"] + " · " + df["recipe"] + " · "
                   + df.apply(_reading, axis=1))
    table = _pivot(df, ["dataset", "category"], ["column"], metric)
    for m in methods:  # a method with no record still gets its column
        if not any(c.startswith(m + " ·") for c in table.columns):
            table[f"{m} · {NOT_RUN}"] = NOT_RUN
    for col in paper_cols:
        table[f"{paper.SOURCE}: {col}"] = _paper_column(table.index.get_level_values("category"),
                                                        table.index.get_level_values("dataset"),
                                                        paper_table, col, family)
    return table


def _paper_peers(table: pd.DataFrame) -> tuple[str, ...]:
    return tuple(PAPER_PEER[p] for p in PEERS if PAPER_PEER[p] in table.columns)


def table2_reduced(records, datasets=None) -> pd.DataFrame:
    return _method_table(records, ("reduced", "stpm", *PEERS), "image_auroc", datasets, paper.TABLE2,
                         ("reduced", *_paper_peers(paper.TABLE2)))


def table4_mixed(records, datasets=None) -> pd.DataFrame:
    return _method_table(records, ("mixed", "reduced", "stpm", *PEERS), "image_auroc", datasets, paper.TABLE4,
                         ("mixed", *_paper_peers(paper.TABLE4)))


AUPRO_TITLE = "AUPRO (FPR <= 0.3; the paper reports none)"


def table5_pixel(records, datasets=None) -> dict[str, pd.DataFrame]:
    methods = ("mixed", "reduced", "stpm", *PEERS)
    return {"pixel AUROC": _method_table(records, methods, "pixel_auroc", datasets, paper.TABLE5,
                                         ("mixed", *_paper_peers(paper.TABLE5))),
            AUPRO_TITLE: _method_table(records, methods, "aupro", datasets, paper.TABLE5, ())}


PARITY_SIDES = {"STPM (ours)": ("stpm", ("blur_sigma", "score")),
                "anomalib STFPM": ("anomalib-stfpm", ("blur_sigma", "score", "map_weighting"))}
MAP_READINGS = {"product": "multiplied (anomalib)", "plain": "summed (Eq. 9-10)", "area": "area-weighted sum"}


def parity_table(records, datasets=None) -> pd.DataFrame:
    """Our STPM against anomalib's STFPM (same teacher, layers, recipe, images) under each reading of
    the map (layer maps summed or multiplied, blur, image score): mean ± 95 % CI over seeds for each,
    and their difference paired by seed (same split, training images and batch order; only the
    students' initial weights differ). `same within CI` where that interval holds 0."""
    df = runs_frame(records, datasets)
    sides = {side: runs_of_preset(df, preset, free) for side, (preset, free) in PARITY_SIDES.items()}
    sides = {k: v for k, v in sides.items() if not v.empty}
    if len(sides) < 2:
        return _not_run(" (the parity grid: invoke ablate --grid parity)")
    keys = ["dataset", "category", "teachers", "recipe", "layer maps", "blur", "score"]
    both = pd.concat([g.assign(side=side, blur=g["v.blur_sigma"], score=g["v.score"],
                               **{"layer maps": g["v.map_weighting"].map(MAP_READINGS)})
                      for side, g in sides.items()])
    # only where anomalib's STFPM ran: our other STPM records are Table 2's
    where = ["dataset", "category", "teachers", "recipe"]
    peer = set(map(tuple, sides["anomalib STFPM"][where].drop_duplicates().values))
    both = both[[tuple(r) in peer for r in both[where].values]]
    rows = []
    for key, g in both.groupby(keys, sort=True):
        for metric in METRICS:
            per = {side: s.set_index("seed")[metric] for side, s in g.groupby("side")}
            row = dict(zip(keys, key), metric=metric,
                       **{side: fmt_mean_ci(per[side]) if side in per else "—" for side in sides})
            if len(per) == 2:
                diff = (per["anomalib STFPM"] - per["STPM (ours)"]).dropna()
                half = ci95(diff)
                row["Δ anomalib − ours (paired)"] = fmt_mean_ci(diff)
                row["verdict"] = ("one seed" if np.isnan(half) else
                                  "same within CI" if abs(diff.mean()) <= half else "differs")
            rows.append(row)
    return pd.DataFrame(rows).set_index([*keys, "metric"]).fillna("—")


def product_effect(records, datasets=None) -> pd.DataFrame:
    """What anomalib's own map costs its own students: the layer maps multiplied (as it ships) minus
    summed (Eq. 9-10), the same trained students, blur and score, paired by seed."""
    df = runs_of_preset(runs_frame(records, datasets), "anomalib-stfpm", ("blur_sigma", "score", "map_weighting"))
    if df.empty:
        return _not_run(" (the peers and parity grids)")
    keys = ["dataset", "category", "teachers", "recipe", "v.blur_sigma", "v.score"]
    rows = []
    for key, g in df.groupby(keys, sort=True):
        per = {w: s.set_index("seed") for w, s in g.groupby("v.map_weighting")}
        if {"product", "plain"} <= set(per):
            rows.append({**dict(zip(keys, key)), "seeds": len(per["product"].index.intersection(per["plain"].index)),
                         **{m: fmt_mean_ci((per["product"][m] - per["plain"][m]).dropna()) for m in METRICS}})
    if not rows:
        return _not_run(" (needs anomalib's STFPM under both map readings)")
    return pd.DataFrame(rows).rename(columns={"v.blur_sigma": "blur", "v.score": "score"}).set_index(keys[:4])


def table6_btad(records) -> pd.DataFrame:
    btad = sorted({r.dataset for r in ok_records(records) if "btad" in r.dataset.lower()
                   or "btech" in r.dataset.lower()})
    if not btad:
        return pd.DataFrame({"ours": [NOT_RUN + " (no BTAD records: BTAD is not on this machine)"],
                             f"{paper.SOURCE}: mixed": [f"{paper.TABLE6.loc['01', 'mixed']:.1f}"],
                             f"{paper.SOURCE}: FastFlow": [f"{paper.TABLE6.loc['01', 'FastFlow']:.1f}"]},
                            index=pd.Index(["BTAD 01"], name="category"))
    return _method_table(records, ("mixed", "reduced"), "image_auroc", btad, paper.TABLE6, ("mixed",), family="btad")


def paper_table(number: int) -> pd.DataFrame:
    """The paper's table as printed, with its mean row where it has one, clearly captioned."""
    tables = {1: (paper.TABLE1, None), 2: (paper.TABLE2, paper.TABLE2_MEAN), 3: (paper.TABLE3, None),
              4: (paper.TABLE4, paper.TABLE4_MEAN), 5: (paper.TABLE5, paper.TABLE5_MEAN), 6: (paper.TABLE6, None)}
    table, mean = tables[number]
    table = table.copy()
    if mean:
        table.loc["mean"] = pd.Series(mean)
    table.columns = [f"{c}" for c in table.columns]
    return table

