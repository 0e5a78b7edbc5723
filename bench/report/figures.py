"""The figures: anomaly-map gallery, ROC curves, speed against accuracy, a grid's axis plotted."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from bench.grids import RECIPE_AXIS, Grid, axis_label, list_grids
from bench.records import RunRecord, TimingRecord
from bench.report.frames import ok_records, runs_frame, runs_of_grid, runs_of_preset, teachers_label
from bench.report.numbers import NOT_RUN, ci95
from bench.report.timing_tables import is_plain, one_run, timing_frame
from bench.variants import PRESETS


def gallery(record: RunRecord, max_rows: int = 4):
    """Test images, ground truth, the final map, and each teacher's map (the paper's Fig. 2 idea)."""
    path = Path(record.path).with_name(record.examples)
    ex = np.load(path)
    branches = [k for k in ("map_main", "map_aux") if k in ex]
    cols = ["image", "ground truth", "final map", *branches]
    n = min(max_rows, len(ex["image"]))
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    titles = {"map_main": f"teacher 1 ({record.variant['teacher']})",
              "map_aux": f"teacher 2 ({record.variant.get('teacher2')})"}
    for i in range(n):
        panels = [ex["image"][i].transpose(1, 2, 0), ex["mask"][i], ex["map"][i].astype(float),
                  *[ex[b][i].astype(float) for b in branches]]
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            ax.imshow(img, cmap=None if j == 0 else ("gray" if j == 1 else "jet"))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles.get(cols[j], cols[j]), fontsize=9)
        axes[i][0].set_ylabel(f"{ex['name'][i]}\nscore {ex['score'][i]:.3g}", fontsize=8)
    fig.suptitle(f"{record.variant_name} · {record.dataset}/{record.category} · seed {record.seed}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves(records, dataset: str, category: str, seed: int = 0):
    """Image ROC of each method's preset runs (any teachers, recipe or image-score rule: the demo
    scores by max), one curve per variant and recipe."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    shown = 0
    cell = [r for r in ok_records(records) if r.dataset == dataset and r.category == category and r.seed == seed]
    for m in ("reduced", "stpm", "mixed"):
        keys = set(runs_of_preset(runs_frame(cell), m, free=("score",)).variant_key) if cell else set()
        cands = [r for r in cell if r.variant_key in keys]
        preset_score = {r.recipe_label for r in cands if r.variant["score"] == PRESETS[m].score}
        cands = [r for r in cands if r.variant["score"] == PRESETS[m].score
                 or r.recipe_label not in preset_score]  # another score rule only where no preset run
        for rec in sorted(cands, key=lambda r: r.epochs):
            fpr, tpr, _ = roc_curve(rec.test["labels"], rec.test["scores"])
            score = "" if rec.variant["score"] == PRESETS[m].score else f", score {rec.variant['score']}"
            ax.plot(fpr, tpr, label=f"{m} ({teachers_label(rec.variant)}, {rec.recipe_label}{score}) "
                                    f"AUROC {rec.metrics['image_auroc']:.3f}")
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


def speed_vs_accuracy(records: list[RunRecord], timing: list[TimingRecord], scope="map", batch_size=1, precision="fp32"):
    """Throughput (timing records) against image AUROC (run records) per variant, one panel per
    timed device, Pareto front marked. A run and a timing record match when their architectures
    match (Variant.arch_key): speed does not depend on the weights or on evaluation-time readings.
    Points carry numbers, explained in a table under each panel: full labels beside the points
    overlap until unreadable once a few dozen variants cluster."""
    t = timing_frame(timing)
    if not t.empty:
        t = t[(t.scope == scope) & (t.batch_size == batch_size) & (t.precision == precision) & is_plain(t)
              & t.arch_key.notna()]
    if t.empty:
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.text(0.5, 0.5, NOT_RUN + " (no timing records)", ha="center")
        return fig
    t = t[t.map_path != "lean"] if (t.map_path != "lean").any() else t   # one session timed a lean approximation beside it
    runs = runs_frame(records)
    recorded = set(runs.arch_key) if not runs.empty else set()
    # the one run (per device) that places the most recorded architectures: speeds on a panel are side by side
    t = one_run(t, rank=lambda rows: len(recorded & set(rows.arch_key)))
    devices = sorted(t.device.unique())
    panels = []
    for device in devices:
        speed = dict(zip(t[t.device == device].arch_key, t[t.device == device].images_per_s))
        points = []
        if not runs.empty:
            for (ds, arch, recipe), g in runs[runs.arch_key.isin(speed)].groupby(["dataset", "arch_key", "recipe"]):
                # one architecture scored several ways (score, blur, map readings): its method's own reading
                canonical = g.index.isin(runs_of_preset(g, g.method.iloc[0]).index)
                g = g[canonical] if canonical.any() else g
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


def plottable(grid: Grid) -> bool:
    """A grid with one preset and one variant axis has a plot (the others have their table)."""
    return len(grid.bases) == 1 and len(grid.variant_axes) == 1 and RECIPE_AXIS not in grid.axes


def plottable_grids() -> list[str]:
    return [name for name, _ in list_grids() if plottable(Grid.load(name))]


def ablation_plot(records, grid: str | Grid, metric: str = "image_auroc", kind: str = "auto"):
    """Mean ± 95 % CI over seeds of METRIC against a plottable grid's axis (values in the grid
    file's order), a group per dataset/category: a line over a numeric axis, else bars."""
    grid = grid if isinstance(grid, Grid) else Grid.load(grid)
    if not plottable(grid):
        raise ValueError(f"grid {grid.name!r}: a plot has one preset and one axis; use ablation_table")
    (axis, known), base = next(iter(grid.variant_axes.items())), grid.bases[0]
    if kind == "auto":
        kind = "line" if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known) else "bar"
    df = runs_of_grid(runs_frame(records), grid)
    fig, ax = plt.subplots(figsize=(6, 4))
    if df.empty:
        ax.text(0.5, 0.5, NOT_RUN, ha="center")
        return fig
    recorded = set(df[f"v.{axis}"])
    xs = [axis_label(v) for v in [*(v for v in known if v in recorded), *sorted(recorded - set(known), key=str)]]
    df = df.assign(x=df[f"v.{axis}"].map(axis_label))
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
