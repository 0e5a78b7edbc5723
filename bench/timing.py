"""Inference latency and throughput, measured the way a careful engineer would, and recorded.

Scopes (each recorded under its own name):
- `network`:    teacher(s) + student(s) forward, features only;
- `map`:        network + anomaly maps, upsampling, fusion, blur and score;
- `end_to_end`: a host tensor in -> score and map back on the host, copies included.
CUDA: CUDA events around each iteration, after warm-up; CPU: a monotonic clock. Weights do not
change speed, so teachers are random-initialised here (recorded as such).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.build import build_detector
from bench.detector import Detector
from bench.env import check_device, git_revision, hardware, software
from bench.errors import UsageError
from bench.store import write_json_atomic
from bench.variants import create_variant

SCOPES = ("network", "map", "end_to_end")
DEFAULT_VARIANTS = ("reduced", "stpm", "mixed")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network(det: Detector, x: torch.Tensor):
    return [(b.teacher_features(x), b.student_features(x)) for b in det.branches]


def scope_fn(det: Detector, scope: str, device: torch.device):
    """A callable taking the batch (host tensor for end_to_end, device tensor otherwise)."""
    if scope == "network":
        return lambda x: _network(det, x)
    if scope == "map":
        return lambda x: det.predict(x)
    if scope == "end_to_end":
        def e2e(x_host):
            pred = det.predict(x_host.to(device, non_blocking=True))
            return pred.scores.cpu(), pred.maps.cpu()
        return e2e
    raise ValueError(f"unknown scope {scope!r}; choose from {SCOPES}")


def measure(fn, x, device: torch.device, iters: int, warmup: int) -> np.ndarray:
    """Per-iteration latency in ms: CUDA events on GPU, perf_counter with synchronisation on CPU."""
    for _ in range(warmup):
        fn(x)
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(times)


def latency_stats(ms: np.ndarray, batch: int) -> dict:
    median = float(np.median(ms))
    return {"median_ms": median, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            "min_ms": float(ms.min()), "images_per_s": batch / (median / 1e3), "iters": int(len(ms))}


def count_gmacs(det: Detector, image_size: int, device: torch.device) -> float:
    """Multiply-accumulates of the network scope at batch 1, from torch's FLOP counter (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _network(det, x)
    return counter.get_total_flops() / 2 / 1e9


def _params(det: Detector) -> dict:
    n = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    return {"teacher_params_m": n([b.teacher.trunk for b in det.branches]) / 1e6,
            "student_params_m": n([b.student for b in det.branches]) / 1e6}


class _Graphed:
    """CUDA graph capture of a device-side callable with a static input buffer."""

    def __init__(self, fn, example: torch.Tensor):
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x):
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _peer_stfpm(device: torch.device):
    """anomalib's STFPM torch model (resnet18, layer1..3), teacher weights off: speed only."""
    try:
        from anomalib.models.image.stfpm import torch_model as stfpm
    except Exception as err:  # noqa: BLE001 - absent or broken (a missing dependency), our timings go on
        print(f"anomalib's STFPM is not available ({type(err).__name__}: {err}): peer not timed "
              "(pip install 'bench[peers]')", file=sys.stderr)
        return None
    real = stfpm.TimmFeatureExtractor

    def no_download(*args, **kwargs):
        kwargs["pre_trained"] = False
        return real(*args, **kwargs)
    stfpm.TimmFeatureExtractor = no_download  # its teacher insists on pre_trained=True
    try:
        model = stfpm.STFPMModel(layers=["layer1", "layer2", "layer3"], backbone="resnet18")
    finally:
        stfpm.TimmFeatureExtractor = real
    return model.eval().to(device)


def _peer_fn(model, scope: str, device: torch.device):
    if scope == "network":
        return lambda x: (model.teacher_model(x), model.student_model(x))
    if scope == "map":
        return lambda x: model(x)
    return lambda x_host: model(x_host.to(device, non_blocking=True)).anomaly_map.cpu()


def run_timing(device: str = "cpu", variants=None, batch_sizes=None, precisions=None, scopes=None,
               compile: bool = False, channels_last: bool = False, cuda_graphs: bool = False,
               peers: bool = True, iters: int | None = None, warmup: int | None = None,
               results: str | Path = "results", image_size: int = 256, grid: str | None = None,
               overrides: dict | None = None) -> list[dict]:
    """Time registered variants (by name) and/or every distinct architecture of a grid file."""
    dev = torch.device(check_device(device))
    cuda = dev.type == "cuda"
    check_options(batch_sizes, precisions, scopes, iters, warmup, image_size, cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
    named = [(n, create_variant(n, **(overrides or {}))) for n in (variants or ([] if grid else DEFAULT_VARIANTS))]
    if grid:
        from bench.grid import grid_variants, load_grid
        named += grid_variants(load_grid(grid), overrides)
    batch_sizes = sorted(batch_sizes or ((1, 8, 32, 64) if cuda else (1, 8, 32)))
    precisions = list(precisions or (("fp32", "fp16", "bf16") if cuda else ("fp32",)))
    scopes = list(scopes or SCOPES)
    iters = iters if iters is not None else (200 if cuda else 10)
    warmup = warmup if warmup is not None else (20 if cuda else 2)
    options = [(cl, comp, graphs) for cl in ([False, True] if channels_last else [False])
               for comp in ([False, True] if compile else [False])
               for graphs in ([False, True] if cuda_graphs and cuda else [False])]
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(results) / "timing" / f"{run_id}_{dev.type}"
    env = {**hardware(dev), "software": software(), "git_revision": git_revision(),
           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None}

    subjects, seen = [], set()
    for name, v in named:
        if v.arch_key in seen:  # same architecture, same cost: time it once
            continue
        seen.add(v.arch_key)
        v = dataclasses.replace(v, teacher_init="random", teacher2_init="random")
        subjects.append(("ours", name, v, build_detector(v).eval().to(dev)))
    if peers:
        peer = _peer_stfpm(dev)
        if peer is not None:
            subjects.append(("anomalib", "anomalib-stfpm", None, peer))

    plan = list(itertools.product(subjects, scopes, precisions, options, batch_sizes))
    records, oom_at = [], {}
    bar = tqdm(plan, desc=f"timing {dev.type}", unit="case", file=sys.stdout)
    for (origin, name, variant, model), scope, prec, (cl, comp, graphs), bs in bar:
        cell = (name, scope, prec, cl, comp, graphs)
        if oom_at.get(cell, 1 << 30) <= bs:
            continue
        bar.set_postfix_str(f"{name} {scope} b{bs} {prec}")
        rec = {"run_id": run_id, "origin": origin, "name": name, "method": variant.method if variant else "stpm",
               "variant_key": variant.key if variant else None, "variant": variant.fields() if variant else None,
               "scope": scope, "batch_size": bs, "precision": prec, "channels_last": cl, "compile": comp,
               "cuda_graphs": graphs, "image_size": image_size, "warmup": warmup, "env": env,
               "teachers": "random init (weights do not change speed)"}
        try:
            rec.update(_time_case(model, origin, scope, prec, cl, comp, graphs, bs, dev, iters, warmup, image_size))
            rec["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one case failing is recorded, the sweep goes on
            if cuda and _is_oom(err):
                oom_at[cell] = bs  # back off: larger batches of this cell are skipped
                torch.cuda.empty_cache()
            rec.update(status="oom" if _is_oom(err) else "failed", error=f"{type(err).__name__}: {err}"[:500])
        records.append(rec)
        _write(out_dir, rec)  # each case as it finishes: an interrupted sweep keeps what it measured
    bar.close()
    _add_peer_ratios(records)
    for rec in records:
        if any(k.startswith("our_") for k in rec):  # the peer's records gained their ratios
            _write(out_dir, rec)
    _print_table(records)
    print(f"{len(records)} timing records in {out_dir}")
    return records


def _write(out_dir: Path, rec: dict) -> None:
    tag = "_".join([rec["name"], rec["scope"], f"b{rec['batch_size']}", rec["precision"],
                    *(["cl"] if rec["channels_last"] else []), *(["compile"] if rec["compile"] else []),
                    *(["graphs"] if rec["cuda_graphs"] else [])])
    write_json_atomic(out_dir / f"{_slug(tag)}.json", rec)


def check_options(batch_sizes, precisions, scopes, iters, warmup, image_size, cuda: bool) -> None:
    """Every option checked before anything is built: a bad one is an error, never a record."""
    problems = []
    if batch_sizes is not None and (not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes)):
        problems.append(f"batch sizes must be whole numbers >= 1, got {list(batch_sizes)}")
    bad = [p for p in precisions or () if p not in PRECISIONS]
    if bad:
        problems.append(f"unknown precisions {bad}; choose from {list(PRECISIONS)}")
    bad = [x for x in scopes or () if x not in SCOPES]
    if bad or (scopes is not None and not scopes):
        problems.append(f"unknown scopes {bad}; choose from {list(SCOPES)}")
    if iters is not None and (not isinstance(iters, int) or iters < 1):
        problems.append(f"iters must be a whole number >= 1, got {iters!r}")
    if warmup is not None and (not isinstance(warmup, int) or warmup < 0):
        problems.append(f"warmup must be a whole number >= 0, got {warmup!r}")
    if image_size < 32 or image_size % 32:
        problems.append(f"image size must be a positive multiple of 32, got {image_size}")
    if problems:
        raise UsageError("timing: " + "; ".join(problems))


def _time_case(model, origin, scope, prec, cl, comp, graphs, bs, dev, iters, warmup, image_size) -> dict:
    cuda = dev.type == "cuda"
    model = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    fn = scope_fn(model, scope, dev) if origin == "ours" else _peer_fn(model, scope, dev)
    if comp:
        fn = torch.compile(fn)
    x = torch.rand(bs, 3, image_size, image_size)
    x = x.pin_memory() if cuda and scope == "end_to_end" else x
    if scope != "end_to_end":
        x = x.to(dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = (torch.autocast(dev.type, dtype=PRECISIONS[prec]) if PRECISIONS[prec] is not None
           else contextlib.nullcontext())
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), amp:
        if graphs:
            if scope == "end_to_end":
                raise ValueError("CUDA graphs apply to device-side scopes only")
            fn = _Graphed(fn, x)
        ms = measure(fn, x, dev, iters, warmup)
    out = latency_stats(ms, bs)
    if cuda:
        out["peak_device_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    else:
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if origin == "ours":
        out.update(_params(model), gmacs=count_gmacs(model, image_size, dev))
    else:
        out.update(teacher_params_m=sum(p.numel() for p in model.teacher_model.parameters()) / 1e6,
                   student_params_m=sum(p.numel() for p in model.student_model.parameters()) / 1e6)
    return out


def _add_peer_ratios(records: list[dict]) -> None:
    """Within this run: our STPM's and reduced student's throughput over the peer's, same case."""
    ours = {(r["name"], r["scope"], r["batch_size"], r["precision"], r["channels_last"], r["compile"],
             r["cuda_graphs"]): r for r in records if r["status"] == "ok" and r["origin"] == "ours"}
    for r in records:
        if r["origin"] == "ours" or r["status"] != "ok":
            continue
        for mine in ("stpm", "reduced"):
            twin = ours.get((mine, r["scope"], r["batch_size"], r["precision"], r["channels_last"],
                             r["compile"], r["cuda_graphs"]))
            if twin:
                r[f"our_{mine}_speedup"] = twin["images_per_s"] / r["images_per_s"]


def _print_table(records: list[dict]) -> None:
    from tabulate import tabulate
    rows = [[r["name"], r["scope"], r["batch_size"], r["precision"], r["median_ms"], r["p99_ms"], r["images_per_s"]]
            for r in records if r["status"] == "ok"]
    print(tabulate(rows, headers=["subject", "scope", "batch", "precision", "median ms", "p99 ms", "img/s"],
                   floatfmt=".2f"))
