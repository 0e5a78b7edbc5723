"""Measuring: per-iteration latency (CUDA events on GPU; wall clock with synchronisation on CPU),
interleaved rounds, and one cell (scope, batch, precision, options) of subjects timed side by side.

Precisions are deployed ones: weights and inputs cast once (`cast`); `autocast` is the named
alternative. On CPU the thread count is set, not only recorded."""
from __future__ import annotations

import copy
import ctypes
import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.timing_subjects import Subject, e2e_input, subject_fn

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_MODES = ("cast", "autocast")
CPU_ROUND_S = 0.4          # a CPU round runs at least this long (iterations chosen per subject)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, x, device: torch.device, iters: int, warmup: int = 0) -> np.ndarray:
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


def interleaved_rounds(fns: dict, inputs: dict, device: torch.device, rounds: int, iters: dict) -> dict:
    """Round r runs every subject for its ITERS, in an order rotated by r (no subject is always
    first after a pause, or always after the heaviest). -> name: [{ms, cpu_s} per round]."""
    names = list(fns)
    out = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            cpu0 = time.process_time()
            ms = measure(fns[n], inputs[n], device, iters[n])
            out[n].append({"ms": ms.tolist(), "cpu_s": time.process_time() - cpu0})
    return out


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


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def gpu_activity(device: torch.device) -> dict | None:
    """Other processes and utilisation of the GPU, from nvidia-smi (None off CUDA or without it)."""
    if device.type != "cuda":
        return None
    def query(what: str) -> list[str]:
        return subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()
    try:
        apps = [line.split(", ") for line in query("compute-apps=pid,used_memory") if line.strip()]
        util = query("gpu=utilization.gpu")
    except (OSError, subprocess.CalledProcessError):
        return {"available": False}
    others = [{"pid": int(p), "used_mb": float(m)} for p, m in apps if int(p) != os.getpid()]
    return {"available": True, "other_processes": others,
            "utilization_pct": float(util[device.index or 0]) if util else None}


# glibc returns every freed block above its mmap threshold (128 KiB, rising to at most 32 MiB) to
# the kernel and trims its heap, so each large tensor of a CPU forward (the reduced student's stem
# features: 4 MiB an image) comes back as fresh pages, faulted in one by one. On the 2-core CPU
# (scope map, batch 8, five runs each) that put the reduced detector at 203 ms against 118 ms with
# freed memory kept, and its runs spread over 159-213 ms against 116-128. A deployment keeps freed memory
# (PyTorch's CPU tuning guide: jemalloc or tcmalloc); the timing process does so with glibc's own knobs.
KEEP_FREED = {"mmap_threshold": 256 << 20, "trim_threshold": 1 << 30}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_kept_freed = False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory in this process (KEEP_FREED); False where the C library
    is not glibc or an allocator is preloaded (it keeps memory its own way)."""
    global _kept_freed
    if _kept_freed:
        return True
    if os.environ.get("LD_PRELOAD") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _kept_freed = bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED["mmap_threshold"])
                           and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED["trim_threshold"]))
    except (OSError, AttributeError):
        return False
    return _kept_freed


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    if _kept_freed:
        return (f"glibc malloc, freed memory kept (mmap threshold {KEEP_FREED['mmap_threshold'] >> 20} MiB, "
                f"trim threshold {KEEP_FREED['trim_threshold'] >> 20} MiB)")
    return "glibc malloc (default)"


@dataclass(frozen=True)
class Cell:
    scope: str
    batch_size: int
    precision: str
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def tag(self) -> str:
        return "_".join([self.scope, f"b{self.batch_size}", self.precision,
                         *(["cl"] if self.channels_last else []), *(["compile"] if self.compile else []),
                         *(["graphs"] if self.cuda_graphs else [])])


@dataclass(frozen=True)
class Protocol:
    """How every cell of a run is measured."""
    device: torch.device
    rounds: int = 7
    iters: int | None = None       # per round; None: 50 on CUDA, on CPU enough for CPU_ROUND_S
    warmup: int = 3
    precision_mode: str = "cast"
    image_size: int = 256


def runs_in(s: Subject, cell: Cell) -> bool:
    """An exported or deployed subject (ONNX Runtime, anomalib's inferencer) runs as it was exported:
    fp32, whole map scope, no PyTorch options."""
    return s.backend == "eager" or (cell.scope != "network" and cell.precision == "fp32" and not
                                    (cell.channels_last or cell.compile or cell.cuda_graphs))


def _prepare(s: Subject, cell: Cell, protocol: Protocol):
    """(callable, input) for one subject in one cell: the model cast once to the cell's precision
    (mode `cast`), or left in fp32 with autocast entered at every call (mode `autocast`)."""
    device, image_size, mode = protocol.device, protocol.image_size, protocol.precision_mode
    dtype = PRECISIONS[cell.precision]
    model = s.model
    if s.backend != "eager":
        if not runs_in(s, cell):
            raise ValueError(f"the {s.backend} subject is timed in fp32 at the map and end_to_end scopes, "
                             "without PyTorch options")
        fn = subject_fn(s, cell.scope, device, torch.float32)
        x = (e2e_input(cell.batch_size, image_size, device) if cell.scope == "end_to_end"
             else torch.rand(cell.batch_size, 3, image_size, image_size,
                             device=device if s.backend == "inferencer" else "cpu"))
        return fn, x
    cast = mode == "cast" and dtype != torch.float32
    if cast or cell.channels_last:
        # a cell's options go on its own copy: Module.to converts in place, and a channels_last model
        # left behind was what every later cell of the run timed, labelled plain
        model = copy.deepcopy(model)
    if cast:
        model = model.to(dtype)
    if cell.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fn = subject_fn(dataclasses.replace(s, model=model), cell.scope, device,
                    dtype if mode == "cast" else torch.float32)
    if mode == "autocast" and dtype != torch.float32:
        plain = fn

        def fn(x):
            with torch.autocast(device.type, dtype=dtype):
                return plain(x)
    if cell.compile:
        fn = torch.compile(fn)
    if cell.scope == "end_to_end":
        x = e2e_input(cell.batch_size, image_size, device)
    else:
        x = torch.rand(cell.batch_size, 3, image_size, image_size, device=device)
        x = x.to(dtype) if mode == "cast" else x
        if cell.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return fn, x


def time_cell(subjects: list[Subject], cell: Cell, protocol: Protocol) -> dict:
    """Every subject of one cell in interleaved rounds -> name: result (or error)."""
    device = protocol.device
    if cell.cuda_graphs and cell.scope == "end_to_end":
        raise ValueError("CUDA graphs apply to device-side scopes only")
    fns, inputs, failed = {}, {}, {}
    with torch.inference_mode():
        for s in subjects:
            try:
                fn, x = _prepare(s, cell, protocol)
                if cell.cuda_graphs:
                    fn = _Graphed(fn, x)
                measure(fn, x, device, 0, protocol.warmup)
                fns[s.name], inputs[s.name] = fn, x
            except Exception as err:  # noqa: BLE001 - a subject that cannot run is recorded, the others go on
                if is_oom(err):
                    torch.cuda.empty_cache()
                failed[s.name] = err
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            n_iters = {n: protocol.iters or 50 for n in fns}
        else:  # enough iterations for a round of CPU_ROUND_S, whatever the subject's speed
            n_iters = {}
            for n, fn in fns.items():
                one = float(np.median(measure(fn, inputs[n], device, 2)))
                n_iters[n] = protocol.iters or int(np.clip(np.ceil(CPU_ROUND_S * 1e3 / max(one, 1e-3)), 3, 200))
        rounds_out = interleaved_rounds(fns, inputs, device, protocol.rounds, n_iters) if fns else {}
    out = {n: {"error": err} for n, err in failed.items()}
    for n, rs in rounds_out.items():
        out[n] = {"rounds": rs}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        for n in rounds_out:
            out[n]["peak_device_mem_mb_cell"] = peak
    return out
