"""Teacher(s) + student(s) as one nn.Module: features, loss (Eq. 2-8), anomaly maps (Eq. 9-10),
MixedTeacher fusion (Eq. 11) and image score (Eq. 12). Eq. 1 (pooling) lives with the students."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Teacher
from bench.students import build_student, pool_teacher_features

FUSIONS = ("minmax", "l2rows")
BRANCH_NAMES = ("main", "aux")
SCORES = ("sum", "max")
# How Eq. 9-10 weigh the layers: `plain` sums them (the paper); `area` divides each layer's map by
# its h*w first (the official MixedTeacher code, so a coarse layer outweighs a fine one).
MAP_WEIGHTINGS = ("plain", "area")


DISTANCE_CHUNK_BYTES = 2 ** 21


def layer_distance(ft: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (as STPM; Eq. 5 is the same for the EfficientNet branch): 1/2 squared L2 distance of
    channel-normalised features, per position -> (B,H,W).

    Computed as 1 - cos from three channel reductions (0.5 * |ft/|ft| - fs/|fs||^2 expands to
    0.5 * (|f^t|^2 + |f^s|^2) - cos), accumulated in fp32 whatever the input's dtype, instead of two
    normalised copies of both tensors. The squared unit norms keep F.normalize's behaviour on a zero
    vector (eps 1e-12), so the value equals the textbook form, not only its common case."""
    if ft.shape != fs.shape:
        raise ValueError(f"teacher features {tuple(ft.shape)} and student features {tuple(fs.shape)} differ")
    # A few images at a time, so the temporaries stay in cache: for the reduced student's stem layer
    # (64 x 128^2, 4 MiB an image) at batch 8 on CPU this took the map scope from 196 to 171 ms.
    # (Not while traced for an export: a traced loop would fix the batch size.)
    step = max(1, DISTANCE_CHUNK_BYTES // max(1, ft[0].numel() * ft.element_size())) if len(ft) else 1
    if step < len(ft) and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        return torch.cat([_distance(ft[i:i + step], fs[i:i + step]) for i in range(0, len(ft), step)])
    return _distance(ft, fs)


def _distance(ft: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    acc = torch.promote_types(ft.dtype, torch.float32)
    if ft.dtype != acc:  # squares of half-precision features overflow fp16 (|f|^2 > 65504)
        ft, fs = ft.to(acc), fs.to(acc)
    # square-sums, not torch.linalg.vector_norm: on CPU the latter took 3.1 ms for the reduced
    # student's 64 x 128^2 stem layer where a square-sum takes 0.24 ms
    nt = ft.square().sum(1).sqrt()
    ns = fs.square().sum(1).sqrt()
    dot = (ft * fs).sum(1)
    rt, rs = nt.clamp_min(1e-12), ns.clamp_min(1e-12)
    # rounding can take identical vectors a hair below 0, where the textbook form cannot go
    return (0.5 * ((nt / rt).square() + (ns / rs).square()) - dot / (rt * rs)).clamp_min(0)


def features_loss(fts: list[torch.Tensor], fss: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3-4 (Eq. 6-7 for the EfficientNet branch) for each image: mean over positions, sum over
    layers -> (B,). How the batch is reduced is the recipe's choice (`train.reduce_batch`)."""
    return sum(layer_distance(t, s).mean(dim=(1, 2)) for t, s in zip(fts, fss))


def layer_maps(fts: list[torch.Tensor], fss: list[torch.Tensor], weighting: str = "plain") -> list[torch.Tensor]:
    """Eq. 2 at every layer, each at its own resolution: the terms of Eq. 9-10 before upsampling."""
    if weighting not in MAP_WEIGHTINGS:
        raise ValueError(f"unknown map weighting {weighting!r}; choose one of {MAP_WEIGHTINGS}")
    maps = [layer_distance(t, s) for t, s in zip(fts, fss)]
    return [d / (d.shape[-2] * d.shape[-1]) for d in maps] if weighting == "area" else maps


# Upsampling and blurring are linear and act on rows and columns separately, so each is a matrix:
# map -> R @ map @ C.T. Built once per shape, sigma, dtype and device. On CPU at batch 8 the
# convolution form of the 256^2 blur took 70 ms where the two matrix products take 1 ms.
_OPERATORS: dict[tuple, torch.Tensor] = {}


def _operator(key: tuple, build) -> torch.Tensor:
    # built in numpy: an operator first needed while torch traces a model (ONNX export) must enter
    # the graph as a constant, not as the float64 ops that built it; and never as an inference
    # tensor (one first needed under inference_mode, e.g. by a timing run), which autograd refuses later
    if key not in _OPERATORS:
        with torch.inference_mode(False):
            _OPERATORS[key] = torch.from_numpy(build()).to(dtype=key[-2], device=key[-1])
    return _OPERATORS[key]


def resize_operator(n_out: int, n_in: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(n_out, n_in): F.interpolate's bilinear resize (align_corners=False) along one axis."""
    n_out, n_in = int(n_out), int(n_in)   # shapes are tensors while torch traces

    def build():
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi, frac = np.minimum(lo + 1, n_in - 1), src - lo
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - frac)
        np.add.at(m, (np.arange(n_out), hi), frac)
        return m
    return _operator(("resize", n_out, n_in, dtype, torch.device(device)), build)


def blur_operator(n: int, sigma: float, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(n, n): a 1-D Gaussian of radius round(4 sigma) (scipy's default truncate) with mirrored borders
    (scipy's mode='mirror'); the identity when sigma is 0."""
    n = int(n)   # shapes are tensors while torch traces

    def build():
        if sigma <= 0:
            return np.eye(n)
        radius = int(4 * sigma + 0.5)
        if radius >= n:
            raise ValueError(f"a blur of sigma {sigma:g} (radius {radius}) needs maps wider than {n} pixels")
        offsets = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * (offsets / sigma) ** 2)
        rows = np.arange(n)[:, None]
        cols = np.abs(rows + offsets)                      # mirrored at 0 ...
        cols = np.where(cols > n - 1, 2 * (n - 1) - cols, cols)   # ... and at n - 1
        m = np.zeros((n, n))
        np.add.at(m, (np.broadcast_to(rows, cols.shape), cols), np.broadcast_to(k / k.sum(), cols.shape))
        return m
    return _operator(("blur", n, float(sigma), dtype, torch.device(device)), build)


def separable(maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ maps @ cols.T for a batch of maps (B,h,w) -> (B, rows.shape[0], cols.shape[0])."""
    return rows @ maps.to(rows.dtype) @ cols.T


def upsample_sum(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Eq. 9-10: every layer's map upsampled (bilinear) to SIZE and summed -> (B,*SIZE)."""
    return sum(separable(d, resize_operator(size[0], d.shape[-2], d.dtype, d.device),
                         resize_operator(size[1], d.shape[-1], d.dtype, d.device)) for d in maps)


def features_map(fts: list[torch.Tensor], fss: list[torch.Tensor], size: tuple[int, int],
                 weighting: str = "plain") -> torch.Tensor:
    """Eq. 9-10 from features: per-layer distance maps upsampled to SIZE and summed -> (B,*SIZE)."""
    return upsample_sum(layer_maps(fts, fss, weighting), size)


def fuse(a_main: torch.Tensor, a_aux: torch.Tensor, rule: str) -> torch.Tensor:
    """Eq. 11, per image: main map times the auxiliary map's normalisation times its extent.
    `minmax`: min-max normalisation, so norm(A)*(max-min) = A - min(A).
    `l2rows`: the official code's F.normalize(A, dim=2) (L2 along each column of rows) times (max-min);
    the official code takes max-min over the whole batch, we take it per image so a score never
    depends on which images share a batch."""
    flat = a_aux.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    extent = flat.max(1).values.view(-1, 1, 1) - lo
    if rule == "minmax":
        return a_main * (a_aux - lo)
    if rule == "l2rows":
        return a_main * extent * F.normalize(a_aux, dim=1)
    raise ValueError(f"unknown fusion {rule!r}; choose one of {FUSIONS}")


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian with mirrored borders (scipy's gaussian_filter, mode='mirror'), in torch so
    that maps stay on the device when timing."""
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    return separable(maps, blur_operator(h, sigma, maps.dtype, maps.device),
                     blur_operator(w, sigma, maps.dtype, maps.device))


def image_score(maps: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "sum":  # Eq. 12
        return maps.flatten(1).sum(1)
    if rule == "max":
        return maps.flatten(1).max(1).values
    raise ValueError(f"unknown score {rule!r}; choose one of {SCORES}")


class Branch(nn.Module):
    """One frozen teacher and the student that imitates it."""

    def __init__(self, teacher: Teacher, student_kind: str, pooling: bool, pool_stem: bool = False):
        super().__init__()
        self.teacher = teacher
        self.student = build_student(student_kind, teacher, pooling, pool_stem)
        self.pooling, self.pool_stem = pooling, pool_stem

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        fts = self.teacher(x)
        if self.pooling:  # Eq. 1
            fts = pool_teacher_features(fts, self.teacher.layer_names, self.teacher.trunk.names[0], self.pool_stem)
        return fts

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.student(self.teacher.normalize(x))


# How maps are computed, recorded with every evaluation. `exact`: Eq. 9-12 as written (every layer
# upsampled to the image size and summed, Eq. 11, the blur, Eq. 12), whatever the arithmetic's order.
# (A `lean` approximation, one-branch maps summed at the finest layer's resolution, existed for one
# session; no committed accuracy record used it.)
MAP_PATH = "exact"


@dataclass
class Prediction:
    scores: torch.Tensor                    # (B,)
    maps: torch.Tensor | None               # (B,H,W) blurred, at the image size; None when not asked for
    layer_maps: dict[str, list[torch.Tensor]]   # per branch (BRANCH_NAMES): Eq. 2 maps, each at its layer's resolution


class Detector(nn.Module):
    """Reduced student and STPM have one branch; MixedTeacher has two, the second weighted by alpha."""

    part_names = BRANCH_NAMES     # what branch_maps' parts are called (a peer's further parts are no maps)
    map_path = MAP_PATH           # how the maps were computed, as a record says it
    implementation = None         # a peer's package and classes; ours: None
    fit_fn = None                 # a detector that learns without gradients brings its own (train.fit otherwise)

    def __init__(self, branches: list[Branch], alpha: float = 0.1, fusion: str = "minmax",
                 score: str = "sum", blur_sigma: float = 4.0, map_weighting: str = "plain"):
        super().__init__()
        if not 1 <= len(branches) <= 2:
            raise ValueError("a detector has one branch, or two for MixedTeacher")
        self.branches = nn.ModuleList(branches)
        self.loss_weights = [1.0, alpha][: len(branches)]   # Eq. 8
        self.fusion, self.score, self.blur_sigma = fusion, score, blur_sigma
        self.map_weighting = map_weighting

    def student_parameters(self):
        return [p for b in self.branches for p in b.student.parameters()]

    def teacher_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        with torch.no_grad():
            return [b.teacher_features(x) for b in self.branches]

    def loss(self, x: torch.Tensor, fts: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Eq. 8 for each image -> (B,). `fts` may be cached teacher features (the teacher is frozen)."""
        fts = fts if fts is not None else self.teacher_features(x)
        return sum(w * features_loss([t.float() for t in ft], b.student_features(x))
                   for w, b, ft in zip(self.loss_weights, self.branches, fts))

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Eq. 2 maps of every layer of every branch, each at its layer's resolution: all that the
        evaluation-only fields (fusion, blur, score) need, so variants differing only in those share it."""
        return [layer_maps(b.teacher_features(x), b.student_features(x), self.map_weighting) for b in self.branches]

    def score_maps(self, per_branch: list[list[torch.Tensor]], size: tuple[int, int],
                   full_size: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 9-10 (upsample, sum), Eq. 11 (two branches), blur, Eq. 12 -> (scores, maps at SIZE, or
        None when not FULL_SIZE and the score does not need them).

        One branch: upsampling and blurring are linear, so the blurred full-size map is
        sum_l A_l D_l B_l^T with A = blur @ upsample per axis, and Eq. 12's sum over its pixels is
        sum_l a_l^T D_l b_l with a = A^T 1: the score needs no full-size map. Two branches: Eq. 11
        multiplies the upsampled branch maps, so they are built at full size first."""
        h, w = size
        if len(per_branch) == 1:
            ops = []
            for d in per_branch[0]:
                kh = blur_operator(h, self.blur_sigma, d.dtype, d.device)
                kw = blur_operator(w, self.blur_sigma, d.dtype, d.device)
                ops.append((kh @ resize_operator(h, d.shape[-2], d.dtype, d.device),
                            kw @ resize_operator(w, d.shape[-1], d.dtype, d.device)))
            maps = (sum(separable(d, a, b) for d, (a, b) in zip(per_branch[0], ops))
                    if full_size or self.score != "sum" else None)
            if self.score == "sum":
                scores = sum((d @ b.sum(0)) @ a.sum(0) for d, (a, b) in zip(per_branch[0], ops))
            else:
                scores = image_score(maps, self.score)
        else:
            main, aux = (upsample_sum(maps, size) for maps in per_branch)
            maps = gaussian_blur(fuse(main, aux, self.fusion), self.blur_sigma)
            scores = image_score(maps, self.score)
        return scores, maps if full_size else None

    @torch.no_grad()
    def predict(self, x: torch.Tensor, full_size: bool = True) -> Prediction:
        """The one inference path: evaluation, figures and timing all come through here (evaluation
        calls its two halves so that variants differing only in evaluation share the branch maps)."""
        per_branch = self.branch_maps(x)
        scores, maps = self.score_maps(per_branch, tuple(x.shape[-2:]), full_size)
        return Prediction(scores, maps, dict(zip(self.part_names, per_branch)))
