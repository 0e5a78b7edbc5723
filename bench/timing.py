"""Inference latency and throughput, measured so that comparisons hold, and recorded.

Subjects (bench.timing_subjects) are timed side by side: for each cell (scope, batch, precision,
options) every subject runs in R interleaved rounds (round-robin, the order rotated each round) of N
iterations, in one process, after warm-up (bench.timing_measure). Every round is recorded; ratios
between subjects are taken per round (bench.intervals). A run is described by a TimingPlan; each
(cell, subject) becomes one TimingRecord, written as its cell finishes.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import resource
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from bench.env import check_device, git_revision, hardware, software
from bench.errors import UsageError
from bench.grids import Grid
from bench.intervals import run_ratios
from bench.records import TimingRecord, jsonable, subject_backbones, timing_teachers, write
from bench.timing_measure import (PRECISION_MODES, PRECISIONS, Cell, Protocol, allocator, gpu_activity, is_oom,
                                  keep_freed_memory, latency_stats, runs_in, time_cell)
from bench.timing_subjects import E2E_MAP_DTYPE, SCOPES, Subject, build_subjects, count_gmacs, params, slug
from bench.variants import Variant, create_variant

DEFAULT_VARIANTS = ("reduced", "stpm", "mixed")
BACKENDS = ("eager", "onnxruntime")


@dataclass
class TimingPlan:
    """What one timing run times and how; None means the device's default (see `resolved`)."""
    device: str = "cpu"
    variants: list[str] | None = None      # registered names; none and no grid: DEFAULT_VARIANTS
    grid: str | None = None                # also every distinct architecture of this grid file
    overrides: dict | None = None          # Variant fields set on every variant (--set)
    batch_sizes: list[int] | None = None   # CPU 1, 8; CUDA 1, 8, 32, 64
    precisions: list[str] | None = None    # CPU fp32; CUDA fp32, fp16, bf16
    scopes: list[str] | None = None        # all of SCOPES
    compile: bool = False                  # also time torch.compile
    channels_last: bool = False            # also time channels_last
    cuda_graphs: bool | None = None        # None: beside eager at batch <= 8 on CUDA; False: never
    peers: bool = True                     # anomalib's STFPM, where installed
    rounds: int = 7
    iters: int | None = None
    warmup: int | None = None              # CPU 3, CUDA 20
    threads: int | None = None             # CPU threads, set (default: every core)
    precision_mode: str = "cast"
    backends: tuple[str, ...] = ("eager",)
    image_size: int = 256
    keep_freed_memory: bool = True         # glibc malloc keeps freed memory (timing_measure.KEEP_FREED)

    def check(self) -> None:
        """Every option checked before anything is built: a bad one is an error, never a record."""
        problems = []
        cuda = torch.device(check_device(self.device)).type == "cuda"
        if self.batch_sizes is not None and (not self.batch_sizes or
                                             any(not isinstance(b, int) or b < 1 for b in self.batch_sizes)):
            problems.append(f"batch sizes must be whole numbers >= 1, got {list(self.batch_sizes)}")
        bad = [p for p in self.precisions or () if p not in PRECISIONS]
        if bad:
            problems.append(f"unknown precisions {bad}; choose from {list(PRECISIONS)}")
        bad = [x for x in self.scopes or () if x not in SCOPES]
        if bad or (self.scopes is not None and not self.scopes):
            problems.append(f"unknown scopes {bad}; choose from {list(SCOPES)}")
        for name, value, least in (("iters", self.iters, 1), ("warmup", self.warmup, 0), ("threads", self.threads, 1)):
            if value is not None and (not isinstance(value, int) or value < least):
                problems.append(f"{name} must be a whole number >= {least}, got {value!r}")
        if self.image_size < 32 or self.image_size % 32:
            problems.append(f"image size must be a positive multiple of 32, got {self.image_size}")
        if not isinstance(self.rounds, int) or self.rounds < 2:
            problems.append(f"rounds must be at least 2 (ratios and their intervals come from rounds), got {self.rounds!r}")
        if self.precision_mode not in PRECISION_MODES:
            problems.append(f"unknown precision mode {self.precision_mode!r}; choose one of {list(PRECISION_MODES)}")
        bad = [b for b in self.backends or () if b not in BACKENDS]
        if bad or "eager" not in (self.backends or ()):
            problems.append(f"backends must include eager, from {list(BACKENDS)}; got {list(self.backends or ())}")
        elif "onnxruntime" in self.backends and cuda:
            problems.append("the onnxruntime backend is timed on CPU (--device cpu)")
        if problems:
            raise UsageError("timing: " + "; ".join(problems))

    def named_variants(self) -> list[tuple[str, Variant]]:
        names = self.variants or ([] if self.grid else DEFAULT_VARIANTS)
        named = [(n, create_variant(n, **(self.overrides or {}))) for n in names]
        if self.grid:
            named += [(gv.label, gv.variant) for gv in Grid.load(self.grid).variants(self.overrides)]
        return named

    def cells(self, cuda: bool) -> list[Cell]:
        """Scopes x batch sizes x precisions x the options asked for. On CUDA at batch <= 8 eager
        timing measures the host issuing kernels: CUDA graphs are the default comparison there,
        eager stays (labelled) beside them."""
        batch_sizes = sorted(self.batch_sizes or ((1, 8, 32, 64) if cuda else (1, 8)))
        precisions = list(self.precisions or (("fp32", "fp16", "bf16") if cuda else ("fp32",)))
        graphs = [False, True] if cuda and self.cuda_graphs is not False else [False]
        return [Cell(sc, bs, pr, cl, comp, g)
                for sc, bs, pr in itertools.product(list(self.scopes or SCOPES), batch_sizes, precisions)
                for cl in ([False, True] if self.channels_last else [False])
                for comp in ([False, True] if self.compile else [False])
                for g in graphs
                if not (g and (sc == "end_to_end" or (self.cuda_graphs is None and bs > 8)))]

    def protocol(self, device: torch.device) -> Protocol:
        warmup = self.warmup if self.warmup is not None else (20 if device.type == "cuda" else 3)
        return Protocol(device, self.rounds, self.iters, warmup, self.precision_mode, self.image_size)


def _record(s: Subject, cell: Cell, result: dict, base: dict, gmacs: dict) -> TimingRecord:
    size, origin = base["image_size"], "anomalib" if s.role == "peer" else "ours"
    variant = jsonable(s.variant.fields()) if s.variant else None
    rec = TimingRecord(
        **base, status="ok", name=s.name, role=s.role, origin=origin,
        method=s.variant.method if s.variant else ("stpm" if s.role == "peer" else None),
        variant_key=s.variant.key if s.variant else None, variant=variant,
        teachers=timing_teachers(subject_backbones(variant, s.name, origin)),
        floor=s.floor, map_path=s.map_path, backend=s.backend, export_check=s.export_check,
        **dataclasses.asdict(cell),
        e2e_output=(f"score fp32 + map {str(E2E_MAP_DTYPE).split('.')[-1]} {size}x{size} to host"
                    if cell.scope == "end_to_end" else None))
    if "error" in result:
        err = result["error"]
        return dataclasses.replace(rec, status="oom" if is_oom(err) else "failed",
                                   error=f"{type(err).__name__}: {err}"[:500])
    rounds = [{"median_ms": float(np.median(r["ms"])), "iters": len(r["ms"]), "cpu_s": r["cpu_s"], "ms": r["ms"]}
              for r in result["rounds"]]
    return dataclasses.replace(
        rec, rounds=rounds, **latency_stats(np.concatenate([r["ms"] for r in rounds]), cell.batch_size),
        **params(s), gmacs=gmacs.get(s.name) if s.role == "detector" and s.backend == "eager" else None,
        peak_device_mem_mb_cell=result.get("peak_device_mem_mb_cell"))


def run_timing(results: str | Path = "results", plan: TimingPlan | None = None, **options) -> list[TimingRecord]:
    """Time a plan's subjects (PLAN, or a TimingPlan of OPTIONS) in interleaved rounds; one record
    per (cell, subject) under RESULTS/timing/<run>/, written as its cell finishes."""
    plan = plan or TimingPlan(**options)
    plan.check()
    dev = torch.device(plan.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(plan.threads or os.cpu_count() or 1)
    if plan.keep_freed_memory:
        keep_freed_memory()
    cells, protocol = plan.cells(cuda), plan.protocol(dev)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(results) / "timing" / f"{run_id}_{dev.type}"
    subjects = build_subjects(plan.named_variants(), plan.peers, dev, tuple(plan.backends),
                              plan.threads or os.cpu_count(), plan.image_size, Path(results) / "cache" / "onnx")
    gmacs = {s.name: count_gmacs(s.model, plan.image_size, dev) for s in subjects
             if s.role == "detector" and s.backend == "eager"}
    env = {**hardware(dev), "software": software(), "git_revision": git_revision(),
           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
           "allocator": allocator(), "threads_set": None if cuda else torch.get_num_threads()}
    base = {"run_id": run_id, "env": env, "rounds_asked": plan.rounds, "warmup": protocol.warmup,
            "precision_mode": plan.precision_mode, "image_size": plan.image_size}
    records, oom_at = [], {}
    bar = tqdm(cells, desc=f"timing {dev.type} ({len(subjects)} subjects x {plan.rounds} rounds)", unit="cell",
               file=sys.stdout)
    for cell in bar:
        bar.set_postfix_str(cell.tag)
        todo = [s for s in subjects if oom_at.get((s.name, cell.scope, cell.precision), 1 << 30) > cell.batch_size
                and runs_in(s, cell)]
        before = gpu_activity(dev)
        measured = time_cell(todo, cell, protocol)
        after = gpu_activity(dev)
        shared = bool(before and after and (before.get("other_processes") or after.get("other_processes")))
        if shared:
            print(f"warning: the GPU ran other processes while timing {cell.tag}; the records say so",
                  file=sys.stderr)
        for s in todo:
            rec = _record(s, cell, measured[s.name], base, gmacs)
            rec.gpu_activity = {"before": before, "after": after, "shared": shared} if cuda else None
            if rec.status == "oom":
                oom_at[(s.name, cell.scope, cell.precision)] = cell.batch_size
            if not cuda:
                rec.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            records.append(rec)
            _write(out_dir, rec)
    bar.close()
    _print_summary(records)
    print(f"{len(records)} timing records in {out_dir}")
    return records


def _write(out_dir: Path, rec: TimingRecord) -> None:
    """Each record as its cell finishes: an interrupted sweep keeps what it measured."""
    tag = Cell(**{f.name: getattr(rec, f.name) for f in dataclasses.fields(Cell)}).tag
    write(rec, out_dir / f"{slug(rec.name + '_' + tag)}.json")


def _print_summary(records: list[TimingRecord]) -> None:
    rows = [[r.name, r.scope, r.batch_size, r.precision, r.median_ms, r.images_per_s] for r in records if r.ok]
    print(tabulate(rows, headers=["subject", "scope", "batch", "precision", "median ms", "img/s"], floatfmt=".2f"))
    ratios = run_ratios(records)
    if len(ratios):
        print("\nthroughput ratios within this run, median over rounds [bootstrap 95 % interval]:")
        print(tabulate(ratios[["scope", "batch_size", "precision", "ratio", "value"]], headers="keys",
                       showindex=False, tablefmt="github"))
