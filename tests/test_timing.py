import json

import numpy as np
import pytest
import torch

from bench.build import build_detector
from bench.timing import count_gmacs, latency_stats, measure, run_timing
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


def test_reduced_costs_fewer_macs_than_stpm():
    red = build_detector(create_variant("reduced", teacher_init="random"))
    stpm = build_detector(create_variant("stpm", teacher_init="random"))
    assert 0 < count_gmacs(red, 64, torch.device("cpu")) < count_gmacs(stpm, 64, torch.device("cpu"))


def test_cpu_run_records_every_scope(tmp_path):
    recs = run_timing(device="cpu", variants=["reduced", "stpm"], batch_sizes=[1, 2], iters=2, warmup=1,
                      results=tmp_path, image_size=64, peers=False)
    assert {(r["name"], r["scope"]) for r in recs} == {(n, s) for n in ("reduced", "stpm")
                                                       for s in ("network", "map", "end_to_end")}
    files = list((tmp_path / "timing").rglob("*.json"))
    assert len(files) == len(recs) == 12
    r = json.loads(files[0].read_text())
    for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "images_per_s", "iters", "warmup",
                "gmacs", "student_params_m", "peak_rss_mb"):
        assert key in r
    assert r["env"]["cpu_threads"] >= 1 and r["env"]["software"]["torch"] and r["env"]["git_revision"]


def test_cuda_requested_without_cuda_is_an_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        run_timing(device="cuda", results=tmp_path)


@cuda
def test_cuda_run_uses_events_and_records_memory(tmp_path):
    recs = run_timing(device="cuda", variants=["reduced"], batch_sizes=[1, 4], precisions=["fp32", "fp16"],
                      iters=5, warmup=2, results=tmp_path, cuda_graphs=True, peers=False)
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(r["peak_device_mem_mb"] > 0 for r in ok)
    assert all(r["env"]["cudnn_benchmark"] is True and r["env"]["cuda"] for r in ok)
    assert any(r["cuda_graphs"] for r in ok)


@cuda
def test_cuda_measure_with_events():
    x = torch.rand(256, 256, device="cuda")
    ms = measure(lambda a: a @ a, x, torch.device("cuda"), iters=5, warmup=2)
    assert len(ms) == 5 and (ms > 0).all()


def test_grid_architectures_are_timed_once_each(tmp_path):
    recs = run_timing(device="cpu", grid="readings", batch_sizes=[1], scopes=["network"], iters=1, warmup=1,
                      results=tmp_path, image_size=64, peers=False)
    # readings: score and fusion do not change the architecture, the EfficientNet student does
    assert len(recs) == 2 and {r["variant"]["student2"] for r in recs} == {"conv", "copy"}
    pooling = run_timing(device="cpu", grid="pooling", batch_sizes=[1], scopes=["network"], iters=1, warmup=1,
                         results=tmp_path, image_size=64, peers=False)
    assert {r["variant"]["pooling"] for r in pooling} == {True, False}
