"""What a timing run times: our detectors (one per architecture), each detector's teachers alone
(the floor a KD detector cannot beat), their ONNX Runtime exports, and anomalib's STFPM
(bench.timing_peers); and what each runs at each scope:
- `network`:    teacher(s) + student(s) forward, features only (for a teacher subject: its forward);
- `map`:        network + anomaly maps (Detector.predict: fusion, blur, score, full-size map);
- `end_to_end`: a uint8 image batch on the host (as decoded from disk) -> conversion to [0, 1],
                transfer (pinned buffers on CUDA), the detector, and the score and the full-size map
                copied back to the host in fp16.
Weights do not change speed, so teachers are random-initialised here (recorded as such)."""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench import peers as peer_models, timing_peers
from bench.build import build_detector
from bench.data import to_unit_float
from bench.detector import MAP_PATH
from bench.errors import UsageError
from bench.peers import PeerError
from bench.variants import PEERS, PRESETS, Variant

SCOPES = ("network", "map", "end_to_end")
E2E_MAP_DTYPE = torch.float16


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
    """A detector's teachers alone, each to the deepest layer it uses."""

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
        if v.method in PEERS:  # a grid's peers: anomalib's own models, timed at model scope
            if v.arch_key not in seen:
                seen.add(v.arch_key)
                subjects.append(Subject(name, "peer", peer_models.timing_model(v, device, image_size), v))
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
            try:
                subjects.append(onnx_subject(subjects[-1], image_size, threads, export_dir, f"{floor}[ort]"))
            except torch.onnx.errors.OnnxExporterError as err:  # one model's exporter gap: time the others
                print(f"{name}: not exported to ONNX ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                      "timed in PyTorch only", file=sys.stderr)
    stfpm = dataclasses.replace(PRESETS["anomalib-stfpm"], teacher_init="random")
    if peers and stfpm.arch_key not in seen:   # anomalib's STFPM as it ships, unless a grid timed it already
        try:
            model = peer_models.timing_model(stfpm, device, image_size)
        except PeerError as err:  # absent or broken anomalib: our timings go on
            print(f"{err}: peer not timed", file=sys.stderr)
        else:
            subjects.append(Subject("anomalib-stfpm", "peer", model))
            inferencer = timing_peers.stfpm_inferencer(device, export_dir)
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
    folder = Path(export_dir or tempfile.mkdtemp(prefix="bench-onnx-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(s.name)}.onnx"
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


def e2e_input(bs: int, size: int, device: torch.device) -> torch.Tensor:
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


def count_gmacs(det, image_size: int, device: torch.device) -> float:
    """Multiply-accumulates of the network scope at batch 1, from torch's FLOP counter (FLOPs / 2)."""
    x = torch.rand(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        for b in det.branches:
            b.teacher_features(x), b.student_features(x)
    return counter.get_total_flops() / 2 / 1e9


def params(s: Subject) -> dict:
    """Teacher and student parameters in millions (eager subjects)."""
    if s.backend != "eager":
        return {}
    n = lambda mods: sum(p.numel() for m in mods for p in m.parameters()) / 1e6  # noqa: E731
    if s.role == "detector":
        return {"teacher_params_m": n([b.teacher for b in s.model.branches]),
                "student_params_m": n([b.student for b in s.model.branches])}
    if s.role == "peer":
        return {"teacher_params_m": n([s.model.teacher_model]), "student_params_m": n([s.model.student_model])}
    return {"teacher_params_m": n([s.model]), "student_params_m": 0.0}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@:-]+", "-", text).replace(":", "-").strip("-")
