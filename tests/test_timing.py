import json
import os
import sys

import numpy as np
import pytest
import torch

from bench.build import build_detector
from bench.records import TIMING_SCHEMA, TimingRecord
from bench.intervals import bootstrap_median, map_cost, per_round_ratio, run_ratios
from bench.timing import run_timing
from bench.timing_measure import Cell, Protocol, interleaved_rounds, latency_stats, measure, time_cell
from bench.timing_subjects import build_subjects, count_gmacs, subject_fn
from bench.variants import create_variant

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible here)")


def test_latency_stats_by_hand():
    s = latency_stats(np.array([10.0, 20.0, 30.0, 40.0]), batch=8)
    assert s["median_ms"] == 25 and s["min_ms"] == 10 and s["mean_ms"] == 25
    assert s["images_per_s"] == pytest.approx(8 / 0.025) and s["iters"] == 4


def test_measure_counts_iterations_after_warmup():
    calls = []
    ms = measure(lambda x: calls.append(x), 1, torch.device("cpu"), iters=5, warmup=2)
    assert len(ms) == 5 and len(calls) == 7 and (ms >= 0).all()


def test_rounds_interleave_subjects_and_rotate_their_order():
    order = []
    fns = {n: (lambda x, n=n: order.append(n)) for n in "abc"}
    out = interleaved_rounds(fns, {n: None for n in "abc"}, torch.device("cpu"), rounds=3, iters={"a": 1, "b": 1, "c": 1})
    assert order == list("abc" "bca" "cab")          # round-robin, never one subject's rounds back to back
    assert all(len(v) == 3 and len(v[0]["ms"]) == 1 and v[0]["cpu_s"] >= 0 for v in out.values())


def test_bootstrap_median_interval_by_hand():
    m, lo, hi = bootstrap_median([1.0, 1.0, 1.0, 1.0])
    assert (m, lo, hi) == (1.0, 1.0, 1.0)
    m, lo, hi = bootstrap_median([1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 100.0])
    assert m == 3.0 and 2.0 <= lo <= m <= hi <= 4.0   # one outlying round does not move the median
    m, lo, hi = bootstrap_median([2.0])
    assert m == 2.0 and np.isnan(lo)
    with pytest.raises(ValueError):
        bootstrap_median([])


def _rec(name, ips, role="detector", floor=None, scope="map", bs=1):
    """A timing record whose rounds ran at IPS images/s."""
    return TimingRecord(status="ok", run_id="r1", scope=scope, batch_size=bs, precision="fp32", name=name, role=role,
                        floor=floor, median_ms=1e3 * bs / np.median(ips), rounds=[{"median_ms": 1e3 * bs / v} for v in ips])


def test_ratios_are_per_round_with_the_floor():
    recs = [_rec("reduced", [20, 40, 60], floor="teacher:x"), _rec("stpm", [10, 20, 30], floor="teacher:x"),
            _rec("teacher:x", [40, 80, 120], role="teacher")]
    assert per_round_ratio(recs[0], recs[1]).tolist() == [2, 2, 2]
    table = run_ratios(recs).set_index("ratio")
    # a drifting machine moves every subject together: per-round ratios stay exact
    assert table.loc["reduced / stpm", "median"] == 2 and table.loc["reduced / stpm", "low"] == 2
    assert table.loc["reduced / floor", "median"] == 0.5 and table.loc["stpm / floor", "median"] == 0.25
    assert "stpm / reduced" not in table.index and len(table) == 3


def test_ratios_never_mix_runs():
    a, b = _rec("reduced", [20, 20]), _rec("stpm", [10, 10])
    b.run_id = "r2"
    assert run_ratios([a, b]).empty


def test_runs_table_counts_invalid_cases_and_names_the_allocator():
    from bench.report import timing_runs
    env = {"device": "cpu", "device_name": "cpu", "allocator": "glibc malloc (default)"}
    recs = [_rec("reduced", [20, 40]), _rec("stpm", [10, 20]), _rec("stpm", [10, 20], bs=8)]
    recs[2].status = "invalid"
    for r in recs:
        r.env = env
    row = timing_runs(recs).loc["r1"]
    assert row["cases"] == 2 and row["invalid cases"] == 1 and row["allocator"] == "glibc malloc (default)"


def test_map_cost_is_map_minus_network_per_image():
    recs = [_rec("reduced", [100, 100], scope="network", bs=2), _rec("reduced", [50, 50], scope="map", bs=2)]
    row = map_cost(recs).iloc[0]
    assert row["map - network (us/image)"].startswith("10000")     # 20 ms - 10 ms per image


def test_teacher_floor_is_a_subject_and_each_architecture_is_timed_once():
    subs = build_subjects([("reduced", create_variant("reduced")), ("stpm", create_variant("stpm")),
                           ("reduced-again", create_variant("reduced", score="max")),
                           ("mixed", create_variant("mixed"))], peers=False)
    names = [s.name for s in subs]
    # reduced and STPM share ResNet-18 to layer3: one floor; an evaluation-only difference costs nothing
    assert names == ["teacher:resnet18[..layer3]", "reduced", "stpm",
                     "teacher:resnet18[..layer2]+efficientnet_b0[..blocks.6]", "mixed"]
    assert all(s.floor in names for s in subs if s.role == "detector")
    assert {s.map_path for s in subs if s.role == "detector"} == {"exact"}


def test_end_to_end_starts_from_uint8_and_returns_score_and_fp16_map():
    s = build_subjects([("reduced", create_variant("reduced"))], peers=False)[1]
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    scores, maps = subject_fn(s, "end_to_end", torch.device("cpu"), torch.float32)(x)
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and maps.dtype == torch.float16


def test_reduced_costs_fewer_macs_than_stpm():
    red = build_detector(create_variant("reduced", teacher_init="random"))
    stpm = build_detector(create_variant("stpm", teacher_init="random"))
    assert 0 < count_gmacs(red, 64, torch.device("cpu")) < count_gmacs(stpm, 64, torch.device("cpu"))


def test_cpu_run_records_every_round_of_every_subject_per_cell(tmp_path):
    recs = run_timing(device="cpu", variants=["reduced", "stpm"], batch_sizes=[1, 2], scopes=["network", "map"],
                      iters=2, warmup=1, rounds=3, threads=1, results=tmp_path, image_size=64, peers=False)
    assert {(r.name, r.scope) for r in recs} == {(n, s) for n in ("reduced", "stpm", "teacher:resnet18[..layer3]")
                                                       for s in ("network", "map")}
    files = list((tmp_path / "timing").rglob("*.json"))
    assert len(files) == len(recs) == 12
    on_disk = json.loads(files[0].read_text())
    assert on_disk["schema_version"] == TIMING_SCHEMA and len(on_disk["rounds"]) == 3
    assert all(len(x["ms"]) == 2 for x in on_disk["rounds"]) and "round_images_per_s" not in on_disk  # derived
    for key in ("median_ms", "p99_ms", "images_per_s", "warmup", "student_params_m", "peak_rss_mb", "precision_mode"):
        assert key in on_disk
    assert on_disk["teachers"][0] == {"backbone": "resnet18", "kind": "random"}
    assert on_disk["env"]["threads_set"] == 1 and on_disk["env"]["allocator"] and on_disk["env"]["git_revision"]
    if sys.platform.startswith("linux") and not os.environ.get("LD_PRELOAD"):   # glibc: the run kept freed memory
        assert on_disk["env"]["allocator"].startswith("glibc malloc, freed memory kept (mmap threshold 256 MiB")
    assert len(run_ratios(recs)) == 4 * 3   # reduced/stpm, reduced/floor, stpm/floor in 4 cells


def test_a_channels_last_or_cast_cell_leaves_the_model_as_it_was():
    # every later cell of a run times the same model object: an option of one cell must not leak
    subs = build_subjects([("reduced", create_variant("reduced"))], peers=False)
    protocol = Protocol(torch.device("cpu"), rounds=2, iters=1, warmup=0, image_size=64)
    for cell in (Cell("map", 1, "fp32", channels_last=True), Cell("map", 1, "bf16")):
        time_cell(subs, cell, protocol)
        for s in subs:
            assert all(p.dtype == torch.float32 and p.is_contiguous() for p in s.model.parameters()), (s.name, cell)


@pytest.mark.parametrize("kwargs,match", [
    (dict(device="cuda"), "no CUDA device"),
    (dict(precision_mode="amp"), "precision mode"),
    (dict(rounds=1), "at least 2"),
])
def test_refusals(tmp_path, kwargs, match):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises((RuntimeError, ValueError), match=match):
        run_timing(results=tmp_path, **kwargs)


def test_cell_tag_names_its_options():
    assert Cell("map", 8, "fp16", channels_last=True, cuda_graphs=True).tag == "map_b8_fp16_cl_graphs"


@cuda
def test_cuda_run_uses_events_graphs_and_checks_the_gpu_is_idle(tmp_path):
    recs = run_timing(device="cuda", variants=["reduced"], batch_sizes=[1, 4], precisions=["fp32", "fp16"],
                      iters=5, warmup=2, rounds=2, results=tmp_path, peers=False)
    ok = [r for r in recs if r.status == "ok"]
    assert ok and all(r.peak_device_mem_mb_cell > 0 for r in ok)
    assert all(r.env["cudnn_benchmark"] is True and r.gpu_activity["before"] is not None for r in ok)
    assert any(r.cuda_graphs for r in ok)


@cuda
def test_cuda_measure_with_events():
    x = torch.rand(256, 256, device="cuda")
    ms = measure(lambda a: a @ a, x, torch.device("cuda"), iters=5, warmup=2)
    assert len(ms) == 5 and (ms > 0).all()


def test_grid_architectures_are_timed_once_each(tmp_path):
    recs = run_timing(device="cpu", grid="readings", batch_sizes=[1], scopes=["network"], iters=1, warmup=1,
                      rounds=2, results=tmp_path, image_size=64, peers=False)
    dets = [r for r in recs if r.role == "detector"]
    # readings: score, fusion and map weighting do not change the architecture, the EfficientNet student does
    assert len(dets) == 2 and {r.variant["student2"] for r in dets} == {"conv", "copy"}


def test_onnxruntime_subject_matches_pytorch_and_is_timed_in_the_same_rounds(tmp_path):
    pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime, onnx) is not installed")
    recs = run_timing(device="cpu", variants=["reduced"], batch_sizes=[2], scopes=["network", "map", "end_to_end"],
                      iters=2, warmup=1, rounds=2, threads=1, results=tmp_path, image_size=64, peers=False,
                      backends=("eager", "onnxruntime"))
    ort = [r for r in recs if r.backend == "onnxruntime" and r.role == "detector"]
    floor = [r for r in recs if r.backend == "onnxruntime" and r.role == "teacher"]
    assert {r.scope for r in ort} == {r.scope for r in floor} == {"map", "end_to_end"}  # not network alone
    assert all(r.status == "ok" and r.export_check["max_abs_diff_maps"] < 1e-4 for r in ort)
    assert all(r.status == "ok" and r.export_check["max_abs_diff_features"] < 1e-4 for r in floor)
    # an exported detector's floor is its teacher exported alike, not the eager teacher
    assert {r.floor for r in ort} == {r.name for r in floor}
    ratios = set(run_ratios(recs).ratio)
    assert {"reduced[ort] / reduced", "reduced[ort] / floor"} <= ratios


def test_anomalib_inference_path_is_timed_beside_its_model(tmp_path):
    pytest.importorskip("anomalib", reason="the peers extra (anomalib) is not installed")
    recs = run_timing(device="cpu", variants=["stpm"], batch_sizes=[1], scopes=["network", "map", "end_to_end"],
                      iters=1, warmup=1, rounds=2, threads=1, results=tmp_path, image_size=64)
    inf = [r for r in recs if r.name == "anomalib-stfpm[inferencer]"]
    assert {r.scope for r in inf} == {"map", "end_to_end"} and all(r.status == "ok" for r in inf)
    assert all(r.backend == "inferencer" and r.origin == "anomalib" for r in inf)
    assert {"stpm / anomalib-stfpm", "stpm / anomalib-stfpm[inferencer]"} <= set(run_ratios(recs).ratio)


def test_onnxruntime_backend_refusals(tmp_path):
    with pytest.raises(ValueError, match="backends must include eager"):
        run_timing(results=tmp_path, backends=("tensorrt",))
