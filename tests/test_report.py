"""Report tables and the notebooks, on a small set of generated records (with failed and missing cells)."""
import numpy as np
import pytest

from bench import report
from bench.run import Job, _base_record
from bench.store import write_json_atomic
from bench.timing import run_timing
from bench.variants import create_variant


def fake_record(results, name, dataset, category, seed, rng, status="ok", recipe="quick", **overrides):
    """A record as run_job writes it, with generated metrics (tests only; never under results/)."""
    v = create_variant(name, **overrides)
    job = Job(name, v, str(results), category, seed=seed, recipe=recipe, dataset=dataset)
    rec = _base_record(job, "cpu")
    labels = [0, 0, 1, 1]
    if status == "ok":
        rec.update(status="ok", metrics={m: float(rng.uniform(0.6, 1.0)) for m in
                                         ("image_auroc", "pixel_auroc", "aupro", "f1_max")},
                   teachers=[{"backbone": v.teacher, "kind": "random", "file": None, "sha256": None, "label": None}],
                   test={"labels": labels, "scores": rng.random(4).tolist(), "defect": ["good"] * 2 + ["x"] * 2},
                   examples=None, train={"best_epoch": 1})
    else:
        rec.update(status="failed", error="DataError: broken.png: corrupt or unreadable image")
    write_json_atomic(job.record_path(results), rec)
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
    assert list(t1.columns) == ["levels 1+2", "levels 2+3", "levels 0+1+2+3"]
    assert t1.loc[("mvtec_anomaly_detection",)].shape[0] == 1
    assert (t1.loc[("mvtec_anomaly_detection",)][["levels 1+2", "levels 2+3"]] == "not run").all(axis=None)
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
    a = report.ablation_table(runs, "mixed", ("alpha",))
    assert list(a.columns) == ["alpha=0.0", "alpha=0.1", "alpha=0.5"]
    assert a.loc[("mvtec_anomaly_detection",)].iloc[0]["alpha=0.5"] == "not run"
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
    return {"run_id": run_id, "origin": "ours", "name": name, "method": name, "scope": "map", "batch_size": 1,
            "precision": "fp32", "channels_last": False, "compile": False, "cuda_graphs": False, **options,
            "median_ms": 1000 / ips, "p99_ms": 1000 / ips, "images_per_s": ips, "status": "ok",
            "env": {"device_name": "GPU X", "device": device}, "variant": None, "variant_key": None}


def test_table3_rows_come_from_one_run_never_mixed():
    timing = [_timing("20260101T000000Z", "reduced", 100.0), _timing("20260101T000000Z", "stpm", 50.0),
              _timing("20260102T000000Z", "reduced", 120.0), _timing("20260103T000000Z", "mixed", 30.0),
              _timing("20260104T000000Z", "reduced", 999.0, device="cpu")]
    t3 = report.table3_timing(timing, device_type="cuda")
    assert list(t3.columns) == ["mixed"]          # the latest run alone, labelled as single pass
    assert "single pass" in t3.index.get_level_values("run")[0]
    rounds = dict(rounds=[{"median_ms": 10.0}] * 2, round_images_per_s=[100.0, 100.0])
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
    outs = render_all(results=results, out_dir=tmp_path, html=True)
    assert [o.stem for o in outs] == list(ORDER)
    import nbformat
    for o in outs:
        cells = nbformat.read(o, as_version=4).cells
        assert not [out for c in cells for out in c.get("outputs", []) if out.get("output_type") == "error"]
        assert o.with_suffix(".html").stat().st_size > 1000
    t2 = (tmp_path / "table2_reduced.html").read_text()
    assert "not run" in t2 and "paper (Thomine et al., VISAPP 2023)" in t2 and "kolektorsdd" in t2
    assert "Failed runs:** 1" in (tmp_path / "overview.ipynb").read_text()


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
        r["_path"] = "x"
    fig = report.ablation_plot(runs + paper, "mixed", "alpha")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["kolektorsdd"]  # the paper-recipe runs sit at one alpha: not a curve, not averaged in
    quick = [r["metrics"]["image_auroc"] for r in runs if r["status"] == "ok" and r["dataset"] == "kolektorsdd"
             and r["variant_name"] == "mixed" and r["variant"]["alpha"] == 0.1]
    ys = fig.axes[0].lines[0].get_ydata()
    assert len(ys) == 3 and ys[1] == pytest.approx(100 * np.mean(quick))
