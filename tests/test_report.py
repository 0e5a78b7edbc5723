"""Report tables and the notebooks, on a small set of generated records (with failed and missing cells)."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import grids, report
from bench.jobs import Job
from bench.records import TimingRecord, write
from bench.run import job_record
from bench.timing import run_timing
from bench.variants import create_variant


def fake_record(results, name, dataset, category, seed, rng, status="ok", recipe="quick", metrics=None, **overrides):
    """A record as run_job writes it, with generated (or the given) metrics (tests only; never under results/)."""
    v = create_variant(name, **overrides)
    job = Job(name, v, str(results), category, seed=seed, recipe=recipe, dataset=dataset)
    rec = job_record(job, "cpu", status)
    if status == "ok":
        rec.metrics = metrics or {m: float(rng.uniform(0.6, 1.0)) for m in ("image_auroc", "pixel_auroc", "aupro", "f1_max")}
        rec.teachers = [{"backbone": v.teacher, "kind": "random", "file": None, "sha256": None, "label": None}]
        rec.test = {"labels": [0, 0, 1, 1], "scores": rng.random(4).tolist(), "defect": ["good"] * 2 + ["x"] * 2}
        rec.train = {"best_epoch": 1}
    else:
        rec.error = "DataError: broken.png: corrupt or unreadable image"
    write(rec, job.record_path(results))
    return rec


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        for name in ("reduced", "mixed"):          # stpm deliberately not run
            fake_record(root, name, "mvtec_anomaly_detection", "carpet", seed, rng)
            fake_record(root, name, "kolektorsdd", "kolektorsdd", seed, rng)
        for alpha in (0.0, 0.5):
            fake_record(root, "mixed", "kolektorsdd", "kolektorsdd", seed, rng, alpha=alpha)
        for layers in ((1, 2), (2, 3)):
            fake_record(root, "reduced", "kolektorsdd", "kolektorsdd", seed, rng, layers=layers)
    fake_record(root, "stpm", "kolektorsdd", "kolektorsdd", 0, rng, status="failed")
    run_timing(device="cpu", variants=["reduced", "stpm"], batch_sizes=[1], iters=2, warmup=1, rounds=2,
               results=root, image_size=64, peers=False)
    return root


def test_table2_labels_ours_and_the_papers(results):
    t = report.table2_reduced(report.load_runs(results))
    paper_col = f"{report.paper.SOURCE}: reduced"
    assert paper_col in t.columns
    assert t.loc[("mvtec_anomaly_detection", "carpet"), paper_col] == "100.0"
    assert t.loc[("kolektorsdd", "kolektorsdd"), paper_col] == "n/a (paper: MVTec AD only)"
    stpm = [c for c in t.columns if c.startswith("stpm")]
    assert stpm == ["stpm · not run"] and (t[stpm[0]] == "not run").all()
    reduced = [c for c in t.columns if c.startswith("reduced ·")][0]
    assert "±" in t.loc[("kolektorsdd", "kolektorsdd"), reduced]  # three seeds: mean ± CI


def test_table1_table4_table5_table6_shapes(results):
    runs = report.load_runs(results)
    t1 = report.table1_layers(runs)
    assert list(t1.columns) == ["layers 1+2", "layers 2+3", "layers 0+1+2+3"]
    assert t1.loc[("mvtec_anomaly_detection",)].shape[0] == 1
    assert (t1.loc[("mvtec_anomaly_detection",)][["layers 1+2", "layers 2+3"]] == "not run").all(axis=None)
    t4 = report.table4_mixed(runs)
    # mixed, reduced, stpm (not run), the two anomalib peers (not run), the paper's mixed and PatchCore
    assert t4.shape == (2, 7)
    assert [c for c in t4.columns if c.startswith("anomalib")] == ["anomalib-stfpm · not run",
                                                                   "anomalib-patchcore · not run"]
    assert {f"{report.paper.SOURCE}: mixed", f"{report.paper.SOURCE}: PatchCore"} <= set(t4.columns)
    assert any(c.startswith("mixed ·") and c.endswith("· score sum") for c in t4.columns)  # each column names its score
    t5 = report.table5_pixel(runs)
    assert set(t5) == {"pixel AUROC", "AUPRO (FPR <= 0.3; the paper reports none)"}
    t6 = report.table6_btad(runs)
    assert "not run" in t6.iloc[0, 0] and t6.iloc[0, 1] == "97.0"


def test_ablation_and_seed_summary(results):
    runs = report.load_runs(results)
    a = report.ablation_table(runs, "alpha")
    assert list(a.columns) == ["alpha=0.0", "alpha=0.01", "alpha=0.1", "alpha=0.5", "alpha=1.0"]  # the file's
    assert a.loc[("mvtec_anomaly_detection",)].iloc[0]["alpha=0.5"] == "not run"
    assert (a["alpha=0.01"] == "not run").all()
    s = report.seed_summary(runs)
    assert (s.seeds == 3).all() and len(s) == 8


def test_table3_timing_and_ratios(results):
    timing = report.load_timing(results)
    t3 = report.table3_timing(timing)
    assert list(t3.index.get_level_values("measure")) == ["FPS", "latency (ms)", "fraction of floor"]
    assert list(t3.columns)[:2] == ["reduced", "stpm"] and list(t3.columns)[2].startswith("teacher:")
    r = report.timing_ratios(timing)
    ratios = set(r.index.get_level_values("ratio"))
    assert {"reduced / stpm", "reduced / floor", "stpm / floor"} <= ratios
    assert float(r.xs("reduced / stpm", level="ratio").iloc[0, 0].split()[0]) > 0
    assert not report.timing_map_cost(timing).empty and report.timing_runs(timing).kind.iloc[0] == "interleaved rounds"


def _timing(run_id, name, ips, device="cuda", **options):
    return TimingRecord(run_id=run_id, name=name, method=name, scope="map", batch_size=1, precision="fp32",
                        **options, median_ms=1000 / ips, p99_ms=1000 / ips, images_per_s=ips, status="ok",
                        env={"device_name": "GPU X", "device": device})


def test_table3_rows_come_from_one_run_never_mixed():
    timing = [_timing("20260101T000000Z", "reduced", 100.0), _timing("20260101T000000Z", "stpm", 50.0),
              _timing("20260102T000000Z", "reduced", 120.0), _timing("20260103T000000Z", "mixed", 30.0),
              _timing("20260104T000000Z", "reduced", 999.0, device="cpu")]
    t3 = report.table3_timing(timing, device_type="cuda")
    # one run alone: of the runs with most of Table 3's subjects the latest, labelled as single pass
    assert list(t3.columns) == ["reduced", "stpm"]
    assert t3.index.get_level_values("run")[0].startswith("20260101T000000Z")
    assert "single pass" in t3.index.get_level_values("run")[0]
    timing.append(_timing("20260105T000000Z", "stpm", 40.0))
    timing.append(_timing("20260105T000000Z", "mixed", 20.0))
    assert list(report.table3_timing(timing, device_type="cuda").columns) == ["stpm", "mixed"]   # as many, later
    rounds = dict(rounds=[{"median_ms": 10.0}] * 2)
    timing.append(_timing("20260101T120000Z", "stpm", 100.0, **rounds))
    t3 = report.table3_timing(timing, device_type="cuda")   # a run with rounds wins over later single passes
    assert list(t3.columns) == ["stpm"] and t3.index.get_level_values("run")[0] == "20260101T120000Z"


def test_timing_options_are_speedups_over_the_plain_model_of_the_same_run():
    timing = [_timing("r1", "reduced", 100.0), _timing("r1", "reduced", 150.0, cuda_graphs=True),
              _timing("r1", "reduced", 80.0, channels_last=True), _timing("r2", "reduced", 400.0, compile=True)]
    t = report.timing_options(timing)
    row = t.loc[("GPU X", "r1", "reduced", 1, "fp32")]
    assert row["CUDA graphs"] == 1.5 and row["channels_last"] == 0.8
    assert "compile" not in t.columns  # its run has no plain measurement to compare with


def test_speed_vs_accuracy_matches_runs_to_timed_architectures(results):
    fig = report.speed_vs_accuracy(report.load_runs(results), report.load_timing(results))
    labels = [c.get_text().get_text() for ax in fig.axes for tab in ax.tables for c in tab.get_celld().values()]
    assert any(lab.startswith("reduced") for lab in labels)  # reduced was run and timed
    assert not any(lab.startswith("mixed") for lab in labels)  # mixed was run, never timed
    numbers = [t.get_text() for t in fig.axes[0].texts]  # points carry numbers, the key their labels
    assert numbers and all(n.isdigit() for n in numbers)


def test_pareto_front():
    assert report.pareto_front([(1, 1), (2, 0.5), (0.5, 0.9), (2, 1)]) == [3]
    assert sorted(report.pareto_front([(1, 2), (2, 1)])) == [0, 1]


def test_ci95():
    assert np.isnan(report.ci95([0.5]))
    assert report.ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302652729911275 * 1 / np.sqrt(3))


@pytest.mark.slow
def test_every_notebook_executes_on_generated_records(results, tmp_path):
    from bench.notebooks import ORDER, render_all
    pages = render_all(results=results, out_dir=tmp_path, keep_notebooks=True)
    assert [p.stem for p in pages] == list(ORDER) and (tmp_path / "style.css").is_file()
    import nbformat
    for p in pages:
        cells = nbformat.read(p.with_suffix(".ipynb"), as_version=4).cells
        assert not [out for c in cells for out in c.get("outputs", []) if out.get("output_type") == "error"]
        html = p.read_text()
        assert 'href="style.css"' in html and "--jp-" not in html  # one stylesheet, not one per page
        assert str(results) not in html
    t2 = (tmp_path / "table2_reduced.html").read_text()
    assert "not run" in t2 and "paper (Thomine et al., VISAPP 2023)" in t2 and "kolektorsdd" in t2
    assert "Failed runs:</strong> 1" in (tmp_path / "overview.html").read_text()
    assert "alpha=0.01" in (tmp_path / "ablations.html").read_text()


@pytest.mark.parametrize("table,means", [("TABLE2", "TABLE2_MEAN"), ("TABLE4", "TABLE4_MEAN"), ("TABLE5", "TABLE5_MEAN")])
def test_paper_reference_tables_agree_with_their_printed_means(table, means):
    """A transcription check: each column's mean is the paper's printed mean, up to its rounding."""
    t, m = getattr(report.paper, table), getattr(report.paper, means)
    for col, printed in m.items():
        assert t[col].mean() == pytest.approx(printed, abs=0.1)


def test_roc_curves_show_each_methods_preset_runs_only(results):
    fig = report.roc_curves(report.load_runs(results), "kolektorsdd", "kolektorsdd", seed=0)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [lab.split(" ")[0] for lab in labels] == ["reduced", "mixed"]  # alpha/layers variants left out
    assert all("quick/4ep" in lab and "AUROC" in lab for lab in labels)


def test_ablation_plot_draws_one_curve_per_recipe_that_varies_the_axis(results, tmp_path):
    runs = report.load_runs(results)
    rng = np.random.default_rng(1)
    paper = [fake_record(tmp_path, "mixed", "kolektorsdd", "kolektorsdd", s, rng, recipe="paper") for s in (0, 1)]
    for r in paper:
        r.path = "x"
    fig = report.ablation_plot(runs + paper, "alpha")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["kolektorsdd"]  # the paper-recipe runs sit at one alpha: not a curve, not averaged in
    quick = [r.metrics["image_auroc"] for r in runs if r.ok and r.dataset == "kolektorsdd"
             and r.variant_name == "mixed" and r.variant["alpha"] == 0.1]
    ys = fig.axes[0].lines[0].get_ydata()
    assert len(ys) == 3 and ys[1] == pytest.approx(100 * np.mean(quick))


def test_a_new_grid_file_gets_its_table_plot_and_summary_section_with_no_code(tmp_path, monkeypatch):
    ablations = tmp_path / "ablations"
    ablations.mkdir()
    for shipped in report.list_grids():  # the shipped grids, and one more file
        shutil.copy(Path(grids.ABLATIONS) / f"{shipped[0]}.toml", ablations)
    (ablations / "blur.toml").write_text('description = "Gaussian blur of the map"\nvariants = ["reduced"]\n'
                                         'seeds = [0, 1]\n[axes]\nblur_sigma = [2.0, 4.0, 8.0]\n')
    monkeypatch.setattr("bench.grids.ABLATIONS", ablations)
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        for sigma in (2.0, 4.0):
            fake_record(tmp_path, "reduced", "kolektorsdd", "kolektorsdd", seed, rng, blur_sigma=sigma)
    runs = report.load_runs(tmp_path)
    t = report.ablation_table(runs, "blur")
    assert list(t.columns) == ["blur_sigma=2.0", "blur_sigma=4.0", "blur_sigma=8.0"]   # the file's values
    assert "±" in t.iloc[0]["blur_sigma=2.0"] and (t["blur_sigma=8.0"] == "not run").all()
    assert "blur" in report.plottable_grids()
    assert [x.get_text() for x in report.ablation_plot(runs, "blur").axes[0].get_xticklabels()] == ["2.0", "4.0"]
    assert "## Grid `blur`: Gaussian blur of the map" in report.write_summary(tmp_path).read_text()


@pytest.mark.parametrize("grid", [name for name, _ in report.list_grids()])
def test_every_shipped_grid_has_a_table(results, grid):
    t = report.ablation_table(report.load_runs(results), grid)
    assert len(t) and not t.columns.empty


def test_a_run_matching_two_presets_of_a_grid_is_counted_once_under_its_own_teacher(tmp_path):
    grid = tmp_path / "two.toml"
    grid.write_text('variants = ["reduced", "reduced-lite0"]\n[axes]\npooling = [true, false]\n')
    rng = np.random.default_rng(3)
    for seed in (0, 1):
        fake_record(tmp_path, "reduced-lite0", "kolektorsdd", "kolektorsdd", seed, rng)
    t = report.ablation_table(report.load_runs(tmp_path), str(grid))
    assert t.index.get_level_values("base").tolist() == ["reduced-lite0"]   # not once per preset


def test_parity_pairs_by_seed_and_gives_a_verdict(tmp_path):
    """Ours and anomalib's STFPM under the same reading, paired by seed; anomalib's product map
    against its summed map on the same students. Metrics are set so the answer is known."""
    rng = np.random.default_rng(0)
    shift = {"image_auroc": 0.0, "pixel_auroc": 0.05, "aupro": 0.0}   # pixel AUROC: anomalib always +5
    for seed in (0, 1, 2):
        base = {m: 0.7 + 0.02 * seed for m in shift}
        for name, extra, metrics in (
                ("stpm", dict(blur_sigma=0.0, score="max"), base),
                ("anomalib-stfpm", dict(map_weighting="plain"), {m: v + shift[m] for m, v in base.items()}),
                ("anomalib-stfpm", {}, {m: v - 0.1 for m, v in base.items()})):   # product: 10 points lower
            fake_record(tmp_path, name, "kolektorsdd", "kolektorsdd", seed, rng, metrics={**metrics, "f1_max": 0.5},
                        teacher="resnet18", **extra)
    runs = report.load_runs(tmp_path)
    t = report.parity_table(runs).reset_index()
    like = t[(t["layer maps"] == "summed (Eq. 9-10)") & (t.blur == 0.0) & (t.score == "max")].set_index("metric")
    assert like.loc["image_auroc", "verdict"] == "same within CI"
    assert like.loc["pixel_auroc", "verdict"] == "differs"
    assert like.loc["pixel_auroc", "Δ anomalib − ours (paired)"].startswith("5.0")
    own = t[t["layer maps"] == "multiplied (anomalib)"]
    assert (own["STPM (ours)"] == "—").all() and len(own) == 3
    effect = report.product_effect(runs)
    assert effect["seeds"].tolist() == [3]
    assert all(effect[m].iloc[0].startswith("-10.0") for m in ("image_auroc", "aupro"))
    assert effect["pixel_auroc"].iloc[0].startswith("-15.0")


def test_ratios_across_runs_put_each_run_beside_the_others(tmp_path):
    """Two runs of the same subjects: every ratio has both runs' medians; a run of other
    architectures under the same names (another teacher) is not mixed in."""
    options = dict(device="cpu", batch_sizes=[1], iters=2, warmup=1, rounds=2, results=tmp_path, image_size=64,
                   peers=False, scopes=["map"])
    import time
    for _ in range(2):
        run_timing(variants=["reduced", "stpm"], **options)
        time.sleep(1.1)   # run ids are per second
    run_timing(variants=["reduced", "stpm"], overrides={"teacher": "resnet34"}, **options)
    table = report.timing_across_runs(report.load_timing(tmp_path)).reset_index()
    pair = table[table.ratio == "reduced / stpm"]
    assert len(pair) == 1 and pair.runs.iloc[0] == 2 and len(pair["each run (oldest first)"].iloc[0].split(", ")) == 2
    lo, hi = map(float, pair["range"].iloc[0].strip("[]").split(", "))
    assert lo <= pair["median of runs"].iloc[0] <= hi
