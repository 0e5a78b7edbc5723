"""Inference latency and throughput, measured so that comparisons hold, and recorded.

Subjects are timed side by side: for each cell (scope, batch, precision, options) every subject runs
in R interleaved rounds (round-robin, the order rotated each round) of N iterations, in one process,
after warm-up. Every round is recorded; ratios between subjects are taken per round (bench.intervals).

Subjects: our detectors (one per architecture and map path), each detector's teachers alone (the
floor a KD detector cannot beat), and anomalib's STFPM where installed.
Scopes:
- `network`:    teacher(s) + student(s) forward, features only (for a teacher subject: its forward);
- `map`:        network + anomaly maps (Detector.predict: fusion, blur, score, full-size map);
- `end_to_end`: a uint8 image batch on the host (as decoded from disk) -> conversion to [0, 1],
                transfer (pinned buffers on CUDA), the detector, and the score and the full-size map
                copied back to the host in fp16.
Precisions are deployed ones: weights and inputs cast once (`cast`); `autocast` is the named
alternative. CUDA: CUDA events around each iteration; CPU: wall clock and process CPU time, with
the thread count set, not only recorded. Weights do not change speed, so teachers are random-
initialised here (recorded as such).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bench.build import build_detector
from bench.data import to_unit_float
from bench.detector import MAP_PATH
from bench.env import check_device, git_revision, hardware, software
from bench.errors import UsageError
from bench.store import write_json_atomic
from bench.variants import PEERS, Variant, create_variant

TIMING_SCHEMA = 2
SCOPES = ("network", "map", "end_to_end")
DEFAULT_VARIANTS = ("reduced", "stpm", "mixed")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_MODES = ("cast", "autocast")
BACKENDS = ("eager", "onnxruntime")
E2E_MAP_DTYPE = torch.float16
CPU_ROUND_S = 0.4          # a CPU round runs at least this long (iterations chosen per subject)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Subject:
    name: str
    role: str                  # "detector", "teacher" or "peer"
    model: nn.Module
    variant: Variant | None = None
    floor: str | None = None   # a detector's teacher-alone subject
    map_path: str | None = None
    backend: str = "eager"     # "eager" (PyTorch), "onnxruntime", or "inferencer" (anomalib's TorchInferencer)
    export_check: dict | None = None   # exported model against PyTorch (max abs difference)


def _teacher_name(det) -> str:
    return "teacher:" + "+".join(f"{b.teacher.backbone}[..{b.teacher.trunk.names[-1]}]" for b in det.branches)


class _Teachers(nn.Module):
    """A detector's teachers alone, each to the deepest level it uses."""

    def __init__(self, det):
        super().__init__()
        self.teachers = nn.ModuleList(b.teacher for b in det.branches)

    def forward(self, x):
        return [t(x) for t in self.teachers]


def build_subjects(named: list[tuple[str, Variant]], peers: bool = True,
                   device: torch.device = torch.device("cpu"), backends=("eager",), threads: int | None = None,
                   image_size: int = 256, export_dir: Path | None = None) -> list[Subject]:
    subjects, seen = [], set()
    for name, v in named:
        v = dataclasses.replace(v, teacher_init="random", teacher2_init="random")
        if v.method in PEERS:  # anomalib's own models, timed as peers (model scope)
            from bench.peers import timing_model
            if v.arch_key not in seen:
                seen.add(v.arch_key)
                subjects.append(Subject(name, "peer", timing_model(v, device, image_size), v))
            continue
        det = build_detector(v).eval().to(device)
        floor = _teacher_name(det)
        if floor not in seen:
            seen.add(floor)
            subjects.append(Subject(floor, "teacher", _Teachers(det)))
            if "onnxruntime" in backends:  # an exported detector's floor is its teachers exported alike
                subjects.append(onnx_subject(subjects[-1], image_size, threads, export_dir))
        if v.arch_key in seen:  # same architecture, same cost: time it once
            continue
        seen.add(v.arch_key)
        subjects.append(Subject(name, "detector", det, v, floor, MAP_PATH))
        if "onnxruntime" in backends:
            subjects.append(onnx_subject(subjects[-1], image_size, threads, export_dir, f"{floor}[ort]"))
    if peers:
        peer = _peer_stfpm(device)
        if peer is not None:
            subjects.append(Subject("anomalib-stfpm", "peer", peer))
            inferencer = _peer_inferencer(device, export_dir)
            subjects.append(Subject("anomalib-stfpm[inferencer]", "peer", inferencer, backend="inferencer"))
    return subjects


class _MapModule(nn.Module):
    """A detector's map scope as a plain forward (scores, full-size maps), for export."""

    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, x):
        pred = self.det.predict(x)
        return pred.scores, pred.maps


class _FeaturesModule(nn.Module):
    """Teachers alone as a plain forward (their features, flattened into one tuple), for export."""

    def __init__(self, teachers):
        super().__init__()
        self.teachers = teachers

    def forward(self, x):
        return tuple(f for fs in self.teachers(x) for f in fs)


def onnx_subject(s: Subject, image_size: int, threads: int | None, export_dir: Path | None,
                 floor: str | None = None) -> Subject:
    """A detector's map scope (or a floor's teachers) exported to ONNX and run by ONNX Runtime (CPU),
    as inspection engineers deploy it; its outputs checked against PyTorch's on one random batch."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise UsageError("the onnxruntime backend needs onnxruntime and onnx: pip install 'bench[deploy]'") from err
    import tempfile
    folder = Path(export_dir or tempfile.mkdtemp(prefix="bench-onnx-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_slug(s.name)}.onnx"
    teacher = s.role == "teacher"
    module = (_FeaturesModule(s.model) if teacher else _MapModule(s.model)).eval()
    x = torch.rand(2, 3, image_size, image_size)
    with torch.inference_mode(False), torch.no_grad():
        n_out = len(module(x))
        names = [f"f{i}" for i in range(n_out)] if teacher else ["scores", "maps"]
        torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["x", *names]}, dynamo=False, opset_version=17)
        module.eval()   # export restores the wrapper's mode; keep the model in eval
        ref = [t.numpy() for t in module(x)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": x.numpy()})
    if teacher:
        check = {"max_abs_diff_features": float(max(np.abs(o - r).max() for o, r in zip(out, ref)))}
    else:
        check = {"max_abs_diff_maps": float(np.abs(out[1] - ref[1]).max()),
                 "max_rel_diff_scores": float(np.abs(out[0] - ref[0]).max() / np.abs(ref[0]).max())}
    check.update(opset=17, onnxruntime=ort.__version__, file_mb=round(path.stat().st_size / 2 ** 20, 1))
    return Subject(f"{s.name}[ort]", s.role, session, s.variant, floor or s.floor, s.map_path, "onnxruntime", check)


def _e2e_input(bs: int, size: int, device: torch.device) -> torch.Tensor:
    x = torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8)
    return x.pin_memory() if device.type == "cuda" else x


def subject_fn(s: Subject, scope: str, device: torch.device, dtype: torch.dtype):
    """A callable taking the batch: a uint8 host tensor for end_to_end, a device tensor otherwise."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose from {SCOPES}")
    m = s.model
    if s.backend == "onnxruntime":
        if scope == "network":
            raise ValueError("the ONNX export covers the map scope (and end_to_end), not network alone")

        def run(x):
            return m.run(None, {"x": x.numpy()})
        if scope == "map":
            return run
        return lambda x_u8: run(to_unit_float(x_u8, "cpu"))   # results are already on the host

    if s.backend == "inferencer":
        if scope == "network":
            raise ValueError("anomalib's inferencer covers the map scope (and end_to_end), not network alone")
        core = m.predict
        back = lambda out: (out.pred_score.cpu(), out.anomaly_map.to(E2E_MAP_DTYPE).cpu())  # noqa: E731
    elif s.role == "teacher":
        core = m
        back = lambda out: None  # noqa: E731 - a floor returns nothing to the host
    elif s.role == "peer":
        core = (lambda x: (m.teacher_model(x), m.student_model(x))) if scope == "network" else m
        back = lambda out: (out.pred_score.cpu(), out.anomaly_map.to(E2E_MAP_DTYPE).cpu())  # noqa: E731
    else:
        core = ((lambda x: [(b.teacher_features(x), b.student_features(x)) for b in m.branches])
                if scope == "network" else m.predict)
        back = lambda out: (out.scores.cpu(), out.maps.to(E2E_MAP_DTYPE).cpu())  # noqa: E731
    if scope != "end_to_end":
        return core
    return lambda x_u8: back(core(to_unit_float(x_u8, device, dtype)))


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


def count_gmacs(det, image_size: int, device: torch.device) -> float:
    """Multiply-accumulates of the network scope at batch 1, from torch's FLOP counter (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for b in det.branches:
            b.teacher_features(x), b.student_features(x)
    return counter.get_total_flops() / 2 / 1e9


def _params(s: Subject) -> dict:
    if s.backend != "eager":
        return {}
    n = lambda mods: sum(p.numel() for m in mods for p in m.parameters()) / 1e6  # noqa: E731
    if s.role == "detector":
        return {"teacher_params_m": n([b.teacher for b in s.model.branches]),
                "student_params_m": n([b.student for b in s.model.branches])}
    if s.role == "peer":
        return {"teacher_params_m": n([s.model.teacher_model]), "student_params_m": n([s.model.student_model])}
    return {"teacher_params_m": n([s.model]), "student_params_m": 0.0}


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
    return re.sub(r"[^A-Za-z0-9._@:-]+", "-", text).replace(":", "-").strip("-")


def _anomalib_stfpm():
    """anomalib's STFPM modules, or None with a message when anomalib is absent or broken."""
    try:
        from anomalib.models.image.stfpm import lightning_model, torch_model
    except Exception as err:  # noqa: BLE001 - absent or broken (a missing dependency), our timings go on
        print(f"anomalib's STFPM is not available ({type(err).__name__}: {err}): peer not timed "
              "(pip install 'bench[peers]')", file=sys.stderr)
        return None
    return torch_model, lightning_model


@contextlib.contextmanager
def _teacher_weights_off(torch_model):
    """Its teacher insists on pre_trained=True (a download); weights do not change speed."""
    real = torch_model.TimmFeatureExtractor

    def no_download(*args, **kwargs):
        kwargs["pre_trained"] = False
        return real(*args, **kwargs)
    torch_model.TimmFeatureExtractor = no_download
    try:
        yield
    finally:
        torch_model.TimmFeatureExtractor = real


PEER_LAYERS = ["layer1", "layer2", "layer3"]


def _peer_stfpm(device: torch.device):
    """anomalib's STFPM torch model (resnet18, layer1..3): the model scope, as our detectors."""
    modules = _anomalib_stfpm()
    if modules is None:
        return None
    with _teacher_weights_off(modules[0]):
        model = modules[0].STFPMModel(layers=PEER_LAYERS, backbone="resnet18")
    return model.eval().to(device)


def _peer_inferencer(device: torch.device, export_dir: Path | None):
    """anomalib's inference as its users run it: the Lightning module (its pre-processor, STFPM and
    post-processor) exported with `to_torch` and loaded by `anomalib.deploy.TorchInferencer`, called
    on a float batch. (Engine.predict wraps the same forward in a Lightning predict loop.)"""
    modules = _anomalib_stfpm()
    if modules is None:
        return None
    from anomalib.deploy import TorchInferencer
    with _teacher_weights_off(modules[0]):
        module = modules[1].Stfpm(backbone="resnet18", layers=PEER_LAYERS, evaluator=False, visualizer=False)
    import tempfile
    path = module.eval().to_torch(Path(export_dir or tempfile.mkdtemp(prefix="bench-anomalib-")) / "anomalib-stfpm")
    # the file is the one written on the line above: trusting it is trusting this process
    trust = os.environ.get("TRUST_REMOTE_CODE")
    os.environ["TRUST_REMOTE_CODE"] = "1"
    try:
        return TorchInferencer(path=path, device=device.type)
    finally:
        if trust is None:
            del os.environ["TRUST_REMOTE_CODE"]
        else:
            os.environ["TRUST_REMOTE_CODE"] = trust


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


def _allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
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


def _runs_in(s: Subject, cell: Cell) -> bool:
    """An exported or deployed subject (ONNX Runtime, anomalib's inferencer) runs as it was exported:
    fp32, whole map scope, no PyTorch options."""
    return s.backend == "eager" or (cell.scope != "network" and cell.precision == "fp32" and not
                                    (cell.channels_last or cell.compile or cell.cuda_graphs))


def _prepare(s: Subject, cell: Cell, mode: str, device: torch.device, image_size: int):
    """(callable, input) for one subject in one cell: the model cast once to the cell's precision
    (mode `cast`), or left in fp32 with autocast entered at every call (mode `autocast`)."""
    dtype = PRECISIONS[cell.precision]
    model = s.model
    if s.backend != "eager":
        if not _runs_in(s, cell):
            raise ValueError(f"the {s.backend} subject is timed in fp32 at the map and end_to_end scopes, "
                             "without PyTorch options")
        fn = subject_fn(s, cell.scope, device, torch.float32)
        x = (_e2e_input(cell.batch_size, image_size, device) if cell.scope == "end_to_end"
             else torch.rand(cell.batch_size, 3, image_size, image_size,
                             device=device if s.backend == "inferencer" else "cpu"))
        return fn, x
    if mode == "cast" and dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
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
        x = _e2e_input(cell.batch_size, image_size, device)
    else:
        x = torch.rand(cell.batch_size, 3, image_size, image_size, device=device)
        x = x.to(dtype) if mode == "cast" else x
        if cell.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return fn, x


def time_cell(subjects: list[Subject], cell: Cell, device: torch.device, rounds: int, iters: int | None,
              warmup: int, mode: str, image_size: int) -> dict:
    """Every subject of one cell in interleaved rounds -> name: result (or error)."""
    if cell.cuda_graphs and cell.scope == "end_to_end":
        raise ValueError("CUDA graphs apply to device-side scopes only")
    fns, inputs, failed = {}, {}, {}
    with torch.inference_mode():
        for s in subjects:
            try:
                fn, x = _prepare(s, cell, mode, device, image_size)
                if cell.cuda_graphs:
                    fn = _Graphed(fn, x)
                measure(fn, x, device, 0, warmup)
                fns[s.name], inputs[s.name] = fn, x
            except Exception as err:  # noqa: BLE001 - a subject that cannot run is recorded, the others go on
                if _is_oom(err):
                    torch.cuda.empty_cache()
                failed[s.name] = err
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            n_iters = {n: iters or 50 for n in fns}
        else:  # enough iterations for a round of CPU_ROUND_S, whatever the subject's speed
            n_iters = {}
            for n, fn in fns.items():
                one = float(np.median(measure(fn, inputs[n], device, 2)))
                n_iters[n] = iters or int(np.clip(np.ceil(CPU_ROUND_S * 1e3 / max(one, 1e-3)), 3, 200))
        rounds_out = interleaved_rounds(fns, inputs, device, rounds, n_iters) if fns else {}
    out = {n: {"error": err} for n, err in failed.items()}
    for n, rs in rounds_out.items():
        out[n] = {"rounds": rs}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        for n in rounds_out:
            out[n]["peak_device_mem_mb_cell"] = peak
    return out


def _record(s: Subject, cell: Cell, result: dict, base: dict, gmacs: dict, image_size: int) -> dict:
    rec = {**base, "name": s.name, "role": s.role, "origin": "anomalib" if s.role == "peer" else "ours",
           "method": s.variant.method if s.variant else ("stpm" if s.role == "peer" else None),
           "variant_key": s.variant.key if s.variant else None,
           "variant": s.variant.fields() if s.variant else None, "floor": s.floor, "map_path": s.map_path,
           "backend": s.backend, "export_check": s.export_check,
           **dataclasses.asdict(cell), "image_size": image_size,
           "e2e_output": f"score fp32 + map {str(E2E_MAP_DTYPE).split('.')[-1]} {image_size}x{image_size} to host"
           if cell.scope == "end_to_end" else None}
    if "error" in result:
        err = result["error"]
        return {**rec, "status": "oom" if _is_oom(err) else "failed", "error": f"{type(err).__name__}: {err}"[:500]}
    rounds = result["rounds"]
    all_ms = np.concatenate([r["ms"] for r in rounds])
    rec.update(status="ok", rounds=[{"median_ms": float(np.median(r["ms"])), "iters": len(r["ms"]),
                                     "cpu_s": r["cpu_s"], "ms": r["ms"]} for r in rounds],
               **latency_stats(all_ms, cell.batch_size), **_params(s))
    rec["round_images_per_s"] = [cell.batch_size / (r["median_ms"] / 1e3) for r in rec["rounds"]]
    if s.role == "detector" and s.backend == "eager":
        rec["gmacs"] = gmacs.get(s.name)
    if "peak_device_mem_mb_cell" in result:
        rec["peak_device_mem_mb_cell"] = result["peak_device_mem_mb_cell"]
    return rec


def run_timing(device: str = "cpu", variants=None, batch_sizes=None, precisions=None, scopes=None,
               compile: bool = False, channels_last: bool = False, cuda_graphs: bool | None = None,
               peers: bool = True, iters: int | None = None, warmup: int | None = None,
               rounds: int = 7, threads: int | None = None, precision_mode: str = "cast",
               backends=("eager",), results: str | Path = "results", image_size: int = 256,
               grid: str | None = None, overrides: dict | None = None) -> list[dict]:
    """Time registered variants (by name) and/or every distinct architecture of a grid file, with
    their teachers alone, in interleaved rounds; one record per (cell, subject), written per cell."""
    dev = torch.device(check_device(device))
    cuda = dev.type == "cuda"
    check_options(batch_sizes, precisions, scopes, iters, warmup, image_size, rounds, precision_mode,
                  threads, backends, cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(threads or os.cpu_count() or 1)
    named = [(n, create_variant(n, **(overrides or {}))) for n in (variants or ([] if grid else DEFAULT_VARIANTS))]
    if grid:
        from bench.grid import grid_variants, load_grid
        named += grid_variants(load_grid(grid), overrides)
    batch_sizes = sorted(batch_sizes or ((1, 8, 32, 64) if cuda else (1, 8)))
    precisions = list(precisions or (("fp32", "fp16", "bf16") if cuda else ("fp32",)))
    scopes = list(scopes or SCOPES)
    warmup = warmup if warmup is not None else (20 if cuda else 3)
    # On CUDA at batch <= 8 eager timing measures the host issuing kernels: CUDA graphs are the
    # default comparison there, eager stays (labelled) beside them.
    graphs_opts = [False, True] if cuda and cuda_graphs is not False else [False]
    cells = [Cell(sc, bs, pr, cl, comp, g)
             for sc, bs, pr in itertools.product(scopes, batch_sizes, precisions)
             for cl in ([False, True] if channels_last else [False])
             for comp in ([False, True] if compile else [False])
             for g in graphs_opts
             if not (g and (sc == "end_to_end" or (cuda_graphs is None and bs > 8)))]

    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(results) / "timing" / f"{run_id}_{dev.type}"
    subjects = build_subjects(named, peers, dev, tuple(backends), threads or os.cpu_count(),
                              image_size, Path(results) / "cache" / "onnx")
    gmacs = {s.name: count_gmacs(s.model, image_size, dev) for s in subjects
             if s.role == "detector" and s.backend == "eager"}
    env = {**hardware(dev), "software": software(), "git_revision": git_revision(),
           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
           "allocator": _allocator(), "threads_set": None if cuda else torch.get_num_threads()}
    base = {"schema_version": TIMING_SCHEMA, "run_id": run_id, "env": env, "rounds_asked": rounds,
            "warmup": warmup, "precision_mode": precision_mode,
            "teachers": "random init (weights do not change speed)"}
    records, oom_at = [], {}
    bar = tqdm(cells, desc=f"timing {dev.type} ({len(subjects)} subjects x {rounds} rounds)", unit="cell",
               file=sys.stdout)
    for cell in bar:
        bar.set_postfix_str(cell.tag)
        todo = [s for s in subjects if oom_at.get((s.name, cell.scope, cell.precision), 1 << 30) > cell.batch_size
                and _runs_in(s, cell)]
        before = gpu_activity(dev)
        results_ = time_cell(todo, cell, dev, rounds, iters, warmup, precision_mode, image_size)
        after = gpu_activity(dev)
        shared = bool(before and after and (before.get("other_processes") or after.get("other_processes")))
        if shared:
            print(f"warning: the GPU ran other processes while timing {cell.tag}; the records say so",
                  file=sys.stderr)
        for s in todo:
            rec = _record(s, cell, results_[s.name], base, gmacs, image_size)
            rec["gpu_activity"] = {"before": before, "after": after, "shared": shared} if cuda else None
            if rec["status"] == "oom":
                oom_at[(s.name, cell.scope, cell.precision)] = cell.batch_size
            if not cuda:
                rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            records.append(rec)
            _write(out_dir, rec)
    bar.close()
    _print_summary(records)
    print(f"{len(records)} timing records in {out_dir}")
    return records


def _write(out_dir: Path, rec: dict) -> None:
    """Each record as its cell finishes: an interrupted sweep keeps what it measured."""
    tag = Cell(**{f.name: rec[f.name] for f in dataclasses.fields(Cell)}).tag
    write_json_atomic(out_dir / f"{_slug(rec['name'] + '_' + tag)}.json", rec)


def check_options(batch_sizes, precisions, scopes, iters, warmup, image_size, rounds=7, precision_mode="cast",
                  threads=None, backends=("eager",), cuda: bool = False) -> None:
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
    if not isinstance(rounds, int) or rounds < 2:
        problems.append(f"rounds must be at least 2 (ratios and their intervals come from rounds), got {rounds!r}")
    if precision_mode not in PRECISION_MODES:
        problems.append(f"unknown precision mode {precision_mode!r}; choose one of {list(PRECISION_MODES)}")
    bad = [b for b in backends or () if b not in BACKENDS]
    if bad or "eager" not in (backends or ()):
        problems.append(f"backends must include eager, from {list(BACKENDS)}; got {list(backends or ())}")
    elif "onnxruntime" in backends and cuda:
        problems.append("the onnxruntime backend is timed on CPU (--device cpu)")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        problems.append(f"threads must be a whole number >= 1, got {threads!r}")
    if problems:
        raise UsageError("timing: " + "; ".join(problems))


def _print_summary(records: list[dict]) -> None:
    from tabulate import tabulate

    from bench.intervals import run_ratios
    rows = [[r["name"], r["scope"], r["batch_size"], r["precision"], r["median_ms"], r["images_per_s"]]
            for r in records if r["status"] == "ok"]
    print(tabulate(rows, headers=["subject", "scope", "batch", "precision", "median ms", "img/s"], floatfmt=".2f"))
    ratios = run_ratios(records)
    if len(ratios):
        print("\nthroughput ratios within this run, median over rounds [bootstrap 95 % interval]:")
        print(tabulate(ratios[["scope", "batch_size", "precision", "ratio", "value"]], headers="keys",
                       showindex=False, tablefmt="github"))
