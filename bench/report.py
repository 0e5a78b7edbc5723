"""The DataFrames and figures behind the tables and notebooks. Notebooks only call these.

Our cells are mean ± 95 % CI over seeds, in percent; a cell with no record says "not run".
The paper's figures come from `bench.paper` and are always labelled as the paper's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench import intervals, paper
from bench.store import read_records
from bench.variants import PRESETS, variant_from_fields

METRICS = ("image_auroc", "pixel_auroc", "aupro")
NOT_RUN = "not run"
# Fields a table may vary without the run stopping to be "the method": which teachers were available.
TEACHER_FIELDS = ("teacher", "teacher2", "teacher_init", "teacher2_init")
FAMILY_NAMES = {"mvtec": "MVTec AD", "btad": "BTAD"}


# ------------------------------------------------------------------ numbers
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


# ------------------------------------------------------------------ records
def load_runs(results: str | Path = "results") -> list[dict]:
    return read_records(Path(results) / "runs")


def load_timing(results: str | Path = "results") -> list[dict]:
    return read_records(Path(results) / "timing")


def ok_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def teachers_label(variant: dict) -> str:
    def one(name, init):
        return name + (" (random)" if init == "random" else "")
    label = one(variant["teacher"], variant["teacher_init"])
    if variant.get("teacher2"):
        label += " + " + one(variant["teacher2"], variant["teacher2_init"])
    return label


def runs_frame(records: list[dict], datasets: list[str] | None = None) -> pd.DataFrame:
    """One row per finished run, the fields the tables group by, metrics as columns."""
    rows = []
    for r in ok_records(records):
        if datasets and r["dataset"] not in datasets:
            continue
        v = variant_from_fields(r["variant"]).fields()  # older records lack later fields: their defaults
        rows.append({"method": r["method"], "variant_name": r["variant_name"], "variant_key": r["variant_key"],
                     "arch_key": variant_from_fields(v).arch_key,
                     "dataset": r["dataset"], "category": r["category"], "seed": r["seed"],
                     "recipe": f"{r['recipe']}/{r['epochs']}ep", "teachers": teachers_label(v),
                     **{f"v.{k}": (tuple(val) if isinstance(val, list) else val) for k, val in v.items()},
                     **{m: r["metrics"][m] for m in (*METRICS, "f1_max")}})
    return pd.DataFrame(rows)


def seed_summary(records: list[dict], metrics=METRICS) -> pd.DataFrame:
    """One row per (variant, dataset, category, recipe): seeds and mean ± 95 % CI (in %)."""
    df = runs_frame(records)
    if df.empty:
        return df
    keys = ["variant_key", "dataset", "category", "recipe"]
    out = df.groupby(keys, sort=False).agg(variant=("variant_name", "first"), seeds=("seed", "nunique"),
                                           **{m: (m, fmt_mean_ci) for m in metrics}).reset_index()
    return out[["variant", "dataset", "category", "recipe", "seeds", *metrics]]


def select(df: pd.DataFrame, base: str, free: tuple[str, ...] = ()) -> pd.DataFrame:
    """Runs of preset BASE: every variant field as the preset's, except teachers and FREE fields."""
    if df.empty:
        return df
    preset = PRESETS[base].fields()
    mask = pd.Series(True, index=df.index)
    for k, val in preset.items():
        if k in TEACHER_FIELDS or k in free:
            continue
        val = tuple(val) if isinstance(val, list) else val
        mask &= df[f"v.{k}"].apply(lambda x, val=val: x == val or (val is None and _is_nan(x)))
    return df[mask]


def _is_nan(x) -> bool:
    """A field that is None in a record reads back as NaN where other rows hold numbers (coreset_ratio)."""
    return isinstance(x, float) and np.isnan(x)


def _pivot(df: pd.DataFrame, rows: list[str], cols: list[str], metric: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame()
    table = df.groupby(rows + cols)[metric].apply(fmt_mean_ci).unstack(cols)
    table.columns.name = None
    return table.fillna(NOT_RUN)


def _paper_column(index: pd.Index, datasets: pd.Index, table: pd.DataFrame, column: str, family: str) -> list[str]:
    """The paper's value where our row is the paper's dataset and category, else say why there is none."""
    out = []
    for ds, cat in zip(datasets, index):
        comparable = family in str(ds).lower().replace("btech", "btad") and cat in table.index
        out.append(f"{table.loc[cat, column]:.1f}" if comparable else f"n/a (paper: {FAMILY_NAMES[family]} only)")
    return out


# ------------------------------------------------------------------ tables
def table1_layers(records, datasets=None) -> pd.DataFrame:
    """Mean image AUROC per dataset for feature-level pairs (reduced student, our teachers)."""
    df = select(runs_frame(records, datasets), "reduced", free=("layers",))
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN]})
    order = ["levels " + _label(v) for v in sorted(df["v.layers"].unique(), key=_axis_order)]
    df = df.assign(levels=df["v.layers"].map(lambda t: "levels " + _label(t)))
    # dataset mean over its categories per seed, then mean ± CI over seeds
    per_seed = df.groupby(["dataset", "teachers", "recipe", "levels", "seed"])["image_auroc"].mean().reset_index()
    return _pivot(per_seed, ["dataset", "teachers", "recipe"], ["levels"], "image_auroc")[order]


# Peers measured here (anomalib's, in the same harness), and the paper's column each stands beside.
PEERS = ("anomalib-stfpm", "anomalib-patchcore")
PAPER_PEER = {"anomalib-stfpm": "STPM", "anomalib-patchcore": "PatchCore"}
# Fields a method's column may vary and names in its label: PatchCore's coreset is the CPU's choice.
FREE = {"anomalib-patchcore": ("coreset_ratio",)}


def _reading(row) -> str:
    """What a column's numbers were scored with: every method keeps its own image score."""
    coreset = f"coreset {row['v.coreset_ratio']:g} · " if row["method"] == "anomalib-patchcore" else ""
    return f"{coreset}score {row['v.score']}"


def _method_table(records, methods, metric, datasets, paper_table, paper_cols, family="mvtec") -> pd.DataFrame:
    frames = [select(runs_frame(records, datasets), m, free=FREE.get(m, ())) for m in methods]
    df = pd.concat([f for f in frames if not f.empty]) if any(not f.empty for f in frames) else pd.DataFrame()
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN]})
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


def table5_pixel(records, datasets=None) -> dict[str, pd.DataFrame]:
    methods = ("mixed", "reduced", "stpm", *PEERS)
    return {"pixel AUROC": _method_table(records, methods, "pixel_auroc", datasets, paper.TABLE5,
                                         ("mixed", *_paper_peers(paper.TABLE5))),
            "AUPRO (FPR <= 0.3; the paper reports none)": _method_table(
                records, methods, "aupro", datasets, paper.TABLE5, ())}


def parity_table(records, datasets=None) -> pd.DataFrame:
    """Our STPM against anomalib's STFPM (same teacher, levels, recipe, images) under each reading of
    the map (levels summed or multiplied, blur, image score): mean ± 95 % CI over seeds for each,
    and their difference paired by seed (same split, same training images and batch order; only
    the student's initial weights differ). `same within CI` where that interval holds 0."""
    df = runs_frame(records, datasets)
    sides = {"STPM (ours)": select(df, "stpm", free=("blur_sigma", "score")),
             "anomalib STFPM": select(df, "anomalib-stfpm", free=("blur_sigma", "score", "map_weighting"))}
    sides = {k: v for k, v in sides.items() if not v.empty}
    if len(sides) < 2:
        return pd.DataFrame({"status": [NOT_RUN + " (the parity grid: invoke ablate --grid parity)"]})
    keys = ["dataset", "category", "teachers", "recipe", "levels", "blur", "score"]
    frames = []
    for side, g in sides.items():
        levels = g["v.map_weighting"].map({"product": "multiplied (anomalib)", "plain": "summed (Eq. 9-10)",
                                           "area": "area-weighted sum"})
        frames.append(g.assign(side=side, levels=levels, blur=g["v.blur_sigma"], score=g["v.score"]))
    both = pd.concat(frames)
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


def table6_btad(records) -> pd.DataFrame:
    btad = sorted({r["dataset"] for r in ok_records(records) if "btad" in r["dataset"].lower()
                   or "btech" in r["dataset"].lower()})
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


def timing_frame(timing: list[dict]) -> pd.DataFrame:
    """One row per timed case. `rounds` is 0 for single-pass records (timing schema 1): those
    predate interleaved rounds, are kept and labelled, and never enter a ratio."""
    rows = [{**{k: r[k] for k in ("run_id", "origin", "name", "method", "scope", "batch_size", "precision",
                                  "channels_last", "compile", "cuda_graphs", "median_ms", "p99_ms",
                                  "images_per_s")},
             "role": r.get("role", "peer" if r.get("origin") == "anomalib" else "detector"),
             "floor": r.get("floor"), "map_path": r.get("map_path") or "exact",
             "rounds": len(r.get("rounds") or []),
             "device": r["env"]["device_name"], "device_type": r["env"]["device"],
             "gmacs": r.get("gmacs"), "variant_key": r.get("variant_key"),
             "arch_key": variant_from_fields(r["variant"]).arch_key if r.get("variant") else None}
            for r in timing if r.get("status") == "ok"]
    return pd.DataFrame(rows)


def _is_plain(df: pd.DataFrame) -> pd.Series:
    """Rows timed without channels_last, torch.compile or CUDA graphs."""
    return ~df.channels_last & ~df["compile"] & ~df.cuda_graphs


def _one_run(df: pd.DataFrame) -> pd.DataFrame:
    """Per device, the rows of one run only: the latest run with interleaved rounds, or, where a
    device has none, its latest single-pass run."""
    keep = []
    for _, g in df.groupby("device_type"):
        pool = g[g.rounds > 0] if (g.rounds > 0).any() else g
        keep.append(pool[pool.run_id == pool.run_id.max()])
    return pd.concat(keep) if keep else df


def table3_timing(timing: list[dict], scope: str = "map", batch_size: int = 1, precision: str = "fp32",
                  device_type: str | None = None) -> pd.DataFrame:
    """FPS, latency and fraction of floor per subject, one timing run per device (named)."""
    df = timing_frame(timing)
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN + " (no timing records)"]})
    df = df[(df.scope == scope) & (df.batch_size == batch_size) & (df.precision == precision) & _is_plain(df)]
    if device_type:
        df = df[df.device_type == device_type]
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN + f" (no {scope} b{batch_size} {precision} records)"]})
    df = _one_run(df)
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
    preferred = [n for n in table.columns if n.split("@")[0] in ("reduced", "stpm", "mixed", "anomalib-stfpm")]
    return table[preferred + sorted(c for c in table.columns if c not in preferred)]


def timing_options(timing: list[dict], scope: str = "map") -> pd.DataFrame:
    """Speed-up of channels_last, torch.compile and CUDA graphs over the plain model, measured in
    the same run at the same batch and precision (1.00 = no change)."""
    df = timing_frame(timing)
    if df.empty:
        return pd.DataFrame()
    df = df[df.scope == scope]
    plain = _is_plain(df)
    base = {(r.run_id, r.name, r.batch_size, r.precision): r.images_per_s for r in df[plain].itertuples(index=False)}
    out = []
    for r in df[~plain].itertuples(index=False):
        ref = base.get((r.run_id, r.name, r.batch_size, r.precision))
        if ref:
            option = " + ".join(n for n, on in (("channels_last", r.channels_last), ("compile", r.compile),
                                                 ("CUDA graphs", r.cuda_graphs)) if on)
            out.append({"device": r.device, "run": r.run_id, "subject": r.name, "batch": r.batch_size,
                        "precision": r.precision, "option": option, "speed-up": r.images_per_s / ref})
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out).pivot_table(index=["device", "run", "subject", "batch", "precision"],
                                          columns="option", values="speed-up")
    return table.round(2)


def _device_names(timing: list[dict]) -> dict:
    return {r["run_id"]: r["env"]["device_name"] for r in timing}


def timing_ratios(timing: list[dict], scope: str = "map") -> pd.DataFrame:
    """Within each run with interleaved rounds: throughput ratios (reduced/STPM, reduced/anomalib
    STFPM, mixed/reduced, each detector over its teachers alone), median over rounds [95 % interval]."""
    table = intervals.run_ratios(timing)
    if table.empty:
        return table
    table = table[table.scope == scope]
    if table.empty:
        return pd.DataFrame()
    names = _device_names(timing)
    cell = [f"batch {b} · {p}" + ("" if not (c or k or g) else " · " + "+".join(
                n for n, on in (("channels_last", c), ("compile", k), ("graphs", g)) if on))
            for b, p, c, k, g in zip(table.batch_size, table.precision, table.channels_last, table["compile"],
                                     table.cuda_graphs)]
    table = table.assign(device=table.run_id.map(names), cell=cell)
    # one row per ratio, one column per cell: a run's comparisons read down a column
    out = table.pivot_table(index=["device", "run_id", "ratio"], columns="cell", values="value", aggfunc="first")
    out.columns.name = None
    return out.fillna("—")


def timing_map_cost(timing: list[dict]) -> pd.DataFrame:
    """What the anomaly map costs each detector (scope `map` minus `network`), per run with rounds."""
    table = intervals.map_cost(timing)
    if table.empty:
        return table
    return table.assign(device=table.run_id.map(_device_names(timing))).set_index(
        ["device", "run_id", "subject", "batch_size", "precision", "options"])


def timing_runs(timing: list[dict]) -> pd.DataFrame:
    """Every timing run: when, where, what; the single-pass ones labelled as such."""
    df = timing_frame(timing)
    if df.empty:
        return df
    out = df.groupby("run_id").agg(device=("device", "first"), subjects=("name", lambda x: ", ".join(sorted(set(x)))),
                                   cases=("name", "size"), rounds=("rounds", "max")).reset_index()
    out["kind"] = np.where(out.rounds > 0, "interleaved rounds", "single pass (older; not compared across runs)")
    return out.set_index("run_id")


def ablation_table(records, base: str, axes: tuple[str, ...], metric="image_auroc", datasets=None) -> pd.DataFrame:
    df = select(runs_frame(records, datasets), base, free=axes)
    if df.empty:
        return pd.DataFrame({"status": [NOT_RUN]})
    df = df.assign(**{a: df[f"v.{a}"].map(lambda x, a=a: f"{a}={_label(x)}") for a in axes})
    return _pivot(df, ["dataset", "category", "teachers", "recipe"], list(axes), metric).sort_index(axis=1)


def _label(value) -> str:
    return "+".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _axis_order(value):
    """Layer tuples by length then levels (the paper's 1+2, 2+3 before 0+1+2+3); others as they sort."""
    return (len(value), value) if isinstance(value, tuple) else (0, (str(type(value)), value))


def provenance(records, timing) -> pd.DataFrame:
    """What stands behind the numbers: datasets, teachers (with weight labels), recipes, hardware."""
    rows = {}
    for r in ok_records(records):
        hw = r["hardware"]
        key = (r["dataset"], teachers_label(r["variant"]), f"{r['recipe']}/{r['epochs']}ep",
               hw["cpu"] + " (CPU)" if hw["device"] == "cpu" else hw["device_name"])
        labels = "; ".join(f"{t['backbone']}: {t.get('label') or t['kind']}" for t in r["teachers"])
        row = rows.setdefault(key, {"runs": 0, "seeds": set(), "weights": labels})
        row["runs"] += 1
        row["seeds"].add(r["seed"])
    out = [{"dataset": k[0], "teachers": k[1], "recipe": k[2], "hardware": k[3], "runs": v["runs"],
            "seeds": ",".join(map(str, sorted(v["seeds"]))), "teacher weights": v["weights"]}
           for k, v in sorted(rows.items())]
    for dev in sorted({r["env"]["device_name"] for r in timing if r.get("status") == "ok"}):
        out.append({"dataset": "(timing)", "teachers": "random init (speed only)", "recipe": "-",
                    "hardware": dev, "runs": sum(1 for r in timing if r["env"]["device_name"] == dev),
                    "seeds": "-", "teacher weights": "-"})
    return pd.DataFrame(out)


def is_canonical(record: dict) -> bool:
    """The run is its method's preset, up to the teachers it had."""
    preset = PRESETS[record["method"]].fields()
    fields = variant_from_fields(record["variant"]).fields()  # older records lack later fields
    free = (*TEACHER_FIELDS, *FREE.get(record["method"], ()))
    return all(fields[k] == v for k, v in preset.items() if k not in free)


def gallery_picks(records, datasets=None, path_part: str = "") -> list[dict]:
    """Runs with kept example maps: one per dataset, category and method's preset (MixedTeacher
    first), or every run whose path contains PATH_PART."""
    picks = [r for r in ok_records(records) if r.get("examples") and (not datasets or r["dataset"] in datasets)
             and (path_part in r["_path"] if path_part else is_canonical(r))]
    # the longest-trained run of each method first: it shows what the method can do
    picks.sort(key=lambda r: (r["dataset"], r["category"], r["method"] != "mixed", r["method"], -r["epochs"]))
    if path_part:
        return picks
    seen, out = set(), []
    for r in picks:
        key = (r["dataset"], r["category"], r["method"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# ------------------------------------------------------------------ figures
def _plt():
    import matplotlib.pyplot as plt
    return plt


def gallery(record: dict, max_rows: int = 4):
    """Test images, ground truth, the final map, and each teacher's map (the paper's Fig. 2 idea)."""
    plt = _plt()
    path = Path(record["_path"]).with_name(record["examples"])
    ex = np.load(path)
    parts = [k for k in ("map_main", "map_aux") if k in ex]
    cols = ["image", "ground truth", "final map", *parts]
    n = min(max_rows, len(ex["image"]))
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    titles = {"map_main": f"teacher 1 ({record['variant']['teacher']})",
              "map_aux": f"teacher 2 ({record['variant'].get('teacher2')})"}
    for i in range(n):
        panels = [ex["image"][i].transpose(1, 2, 0), ex["mask"][i], ex["map"][i].astype(float),
                  *[ex[p][i].astype(float) for p in parts]]
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            ax.imshow(img, cmap=None if j == 0 else ("gray" if j == 1 else "jet"))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles.get(cols[j], cols[j]), fontsize=9)
        axes[i][0].set_ylabel(f"{ex['name'][i]}\nscore {ex['score'][i]:.3g}", fontsize=8)
    fig.suptitle(f"{record['variant_name']} · {record['dataset']}/{record['category']} · seed {record['seed']}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves(records, dataset: str, category: str, seed: int = 0):
    """Image ROC of each method's preset runs (any teachers, recipe or image-score rule: the demo
    scores by max), one curve per variant and recipe."""
    from sklearn.metrics import roc_curve
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    shown = 0
    cell = [r for r in ok_records(records) if r["dataset"] == dataset and r["category"] == category
            and r["seed"] == seed]
    for m in ("reduced", "stpm", "mixed"):
        keys = set(select(runs_frame(cell), m, free=("score",)).variant_key) if cell else set()
        cands = [r for r in cell if r["variant_key"] in keys]
        preset_score = {(r["recipe"], r["epochs"]) for r in cands if r["variant"]["score"] == PRESETS[m].score}
        cands = [r for r in cands if r["variant"]["score"] == PRESETS[m].score
                 or (r["recipe"], r["epochs"]) not in preset_score]  # another score rule only where no preset run
        for rec in sorted(cands, key=lambda r: r["epochs"]):
            fpr, tpr, _ = roc_curve(rec["test"]["labels"], rec["test"]["scores"])
            score = "" if rec["variant"]["score"] == PRESETS[m].score else f", score {rec['variant']['score']}"
            ax.plot(fpr, tpr, label=f"{m} ({teachers_label(rec['variant'])}, {rec['recipe']}/{rec['epochs']}ep{score}) "
                                    f"AUROC {rec['metrics']['image_auroc']:.3f}")
            shown += 1
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"image ROC · {dataset}/{category} · seed {seed}")
    if shown:
        ax.legend(fontsize=6, loc="lower right")
    else:
        ax.text(0.5, 0.5, NOT_RUN, ha="center")
    fig.tight_layout()
    return fig


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (higher is better on both)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]


def speed_vs_accuracy(records, timing, scope="map", batch_size=1, precision="fp32"):
    """Throughput (timing records) against image AUROC (run records) per variant, one panel per
    timed device, Pareto front marked. A run and a timing record match when their architectures
    match (Variant.arch_key): speed does not depend on the weights or on evaluation-time readings.
    Points carry numbers, explained in a table under each panel: full labels beside the points
    overlap until unreadable once a few dozen variants cluster."""
    plt = _plt()
    t = timing_frame(timing)
    if not t.empty:
        t = t[(t.scope == scope) & (t.batch_size == batch_size) & (t.precision == precision) & _is_plain(t)
              & t.arch_key.notna()]
    if t.empty:
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.text(0.5, 0.5, NOT_RUN + " (no timing records)", ha="center")
        return fig
    t = _one_run(t[t.map_path != "lean"] if (t.map_path != "lean").any() else t)   # one session timed a lean approximation beside it
    devices = sorted(t.device.unique())
    runs = runs_frame(records)
    panels = []
    for device in devices:
        speed = dict(zip(t[t.device == device].arch_key, t[t.device == device].images_per_s))
        points = []
        if not runs.empty:
            for (ds, arch, recipe), g in runs[runs.arch_key.isin(speed)].groupby(["dataset", "arch_key", "recipe"]):
                points.append((ds, float(speed[arch]), float(g.image_auroc.mean()),
                               f"{g.variant_name.iloc[0]} ({g.teachers.iloc[0]}, {recipe})"))
        panels.append(sorted(points, key=lambda p: (p[0], -p[2], -p[1])))
    n_rows = max([len(p) for p in panels] + [1])
    fig, axes = plt.subplots(2, len(devices), figsize=(7.5 * len(devices), 5 + 0.19 * n_rows + 0.4),
                             squeeze=False, gridspec_kw={"height_ratios": [5, 0.19 * n_rows + 0.4]})
    for ax, key_ax, device, points in zip(axes[0], axes[1], devices, panels):
        key_ax.axis("off")
        if not points:
            ax.text(0.5, 0.5, NOT_RUN + " (no timed architecture has run records)", ha="center")
            continue
        number, spots = 0, {}
        for ds in sorted({p[0] for p in points}):
            pts = [p for p in points if p[0] == ds]
            front = set(pareto_front([(x, y) for _, x, y, _ in pts]))
            sc = ax.scatter([p[1] for p in pts], [p[2] for p in pts], label=ds, s=18)
            for i, (_, x, y, _lab) in enumerate(pts):
                number += 1
                if i in front:
                    ax.scatter([x], [y], marker="*", s=220, facecolors="none", edgecolors=sc.get_facecolor()[0])
                spots.setdefault((round(x, 1), round(y, 3)), []).append(str(number))
        for k, ((x, y), numbers) in enumerate(sorted(spots.items())):
            # coincident points share one label; neighbours alternate sides so they do not print onto each other
            ax.annotate(",".join(numbers), (x, y), fontsize=7, textcoords="offset points",
                        xytext=(5, 2) if k % 2 else (-5, 2), ha="left" if k % 2 else "right")
        ax.set(xlabel=f"images/s ({device}, scope {scope}, batch {batch_size}, {precision})",
               ylabel="image AUROC (mean over seeds and categories)",
               title="speed vs accuracy (☆ = Pareto front within a dataset)")
        ax.legend(fontsize=8)
        rows = [[i, ds, lab, f"{y:.3f}", f"{x:.0f}"] for i, (ds, x, y, lab) in enumerate(points, 1)]
        table = key_ax.table(cellText=rows, colLabels=["#", "dataset", "variant (teachers, recipe)", "AUROC", "img/s"],
                             loc="upper center", cellLoc="left", colLoc="left",
                             colWidths=[0.04, 0.14, 0.64, 0.09, 0.09])
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.0)
        for cell in table.get_celld().values():
            cell.set_linewidth(0.2)
    fig.tight_layout()
    return fig


def ablation_plot(records, base: str, axis: str, metric: str = "image_auroc", kind: str = "line"):
    """Mean ± 95 % CI over seeds of METRIC against one axis, a line/bar group per dataset/category."""
    plt = _plt()
    df = select(runs_frame(records), base, free=(axis,))
    fig, ax = plt.subplots(figsize=(6, 4))
    if df.empty:
        ax.text(0.5, 0.5, NOT_RUN, ha="center")
        return fig
    values = sorted(df[f"v.{axis}"].unique(), key=_axis_order)
    xs = [_label(v) for v in values]
    df = df.assign(x=df[f"v.{axis}"].map(_label))
    groups = list(df.groupby(["dataset", "category", "teachers", "recipe"]))
    if any(g.x.nunique() > 1 for _, g in groups):  # a recipe run at one axis value only is no curve
        groups = [(k, g) for k, g in groups if g.x.nunique() > 1]
    recipes = {k[3] for k, _ in groups}
    width = 0.8 / max(1, len(groups))
    for gi, ((ds, cat, teachers, recipe), g) in enumerate(groups):
        stats_ = g.groupby("x")[metric].agg(["mean", lambda s: ci95(s)])
        stats_ = stats_.reindex(xs)
        means, cis = stats_["mean"].values * 100, np.nan_to_num(stats_.iloc[:, 1].values * 100)
        label = (ds if ds == cat else f"{ds}/{cat}") + (f" ({recipe})" if len(recipes) > 1 else "")
        if kind == "line":
            ax.errorbar(range(len(xs)), means, yerr=cis, marker="o", capsize=3, label=label)
        else:
            ax.bar(np.arange(len(xs)) + gi * width, means, width, yerr=cis, capsize=3, label=label)
    ax.set_xticks(np.arange(len(xs)) + (0 if kind == "line" else width * (len(groups) - 1) / 2))
    ax.set_xticklabels([str(x) for x in xs])
    ax.set(xlabel=axis, ylabel=f"{metric.replace('_', ' ')} (%)",
           title=f"{base}: {metric} vs {axis} (mean ± 95 % CI{', ' + recipes.pop() if len(recipes) == 1 else ''})",
           ylim=(50 if "auroc" in metric else 0, 100))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
