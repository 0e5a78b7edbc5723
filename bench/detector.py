"""Teacher(s) + student(s) as one nn.Module: features, loss (Eq. 2-8), anomaly maps (Eq. 9-10),
MixedTeacher fusion (Eq. 11) and image score (Eq. 12). Eq. 1 (pooling) lives with the students."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Teacher
from bench.students import build_student, pool_teacher_features

FUSIONS = ("minmax", "l2rows")
BRANCH_NAMES = ("main", "aux")
SCORES = ("sum", "max")
# How Eq. 9-10 weigh the layers: `plain` sums them (the paper); `area` divides each layer's map by
# its h*w first (the official MixedTeacher code, so a coarse level outweighs a fine one).
MAP_WEIGHTINGS = ("plain", "area")


def layer_distance(ft: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (as STPM; Eq. 5 is the same for the EfficientNet branch): 1/2 squared L2 distance of
    channel-normalised features, per position -> (B,H,W).

    Computed as 1 - cos from three channel reductions (0.5 * |ft/|ft| - fs/|fs||^2 expands to
    0.5 * (|f^t|^2 + |f^s|^2) - cos), accumulated in fp32 whatever the input's dtype, instead of two
    normalised copies of both tensors. The squared unit norms keep F.normalize's behaviour on a zero
    vector (eps 1e-12), so the value equals the textbook form, not only its common case."""
    if ft.shape != fs.shape:
        raise ValueError(f"teacher features {tuple(ft.shape)} and student features {tuple(fs.shape)} differ")
    acc = torch.promote_types(ft.dtype, torch.float32)
    if ft.dtype != acc:  # squares of half-precision features overflow fp16 (|f|^2 > 65504)
        ft, fs = ft.to(acc), fs.to(acc)
    # square-sums, not torch.linalg.vector_norm: on CPU the latter took 3.1 ms for the reduced
    # student's 64 x 128^2 stem level where a square-sum takes 0.24 ms
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


def features_map(fts: list[torch.Tensor], fss: list[torch.Tensor], size: tuple[int, int],
                 weighting: str = "plain") -> torch.Tensor:
    """Eq. 9-10: per-layer distance maps upsampled (bilinear) to SIZE and summed -> (B,*SIZE).
    A level already at SIZE is added as it is."""
    if weighting not in MAP_WEIGHTINGS:
        raise ValueError(f"unknown map weighting {weighting!r}; choose one of {MAP_WEIGHTINGS}")
    total = None
    for t, s in zip(fts, fss):
        d = layer_distance(t, s)
        if weighting == "area":
            d = d / (d.shape[-2] * d.shape[-1])
        if tuple(d.shape[-2:]) != tuple(size):
            d = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        total = d if total is None else total + d
    return total


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


_KERNELS: dict[tuple, tuple[torch.Tensor, int]] = {}


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int]:
    """1-D Gaussian, radius round(4 sigma) as scipy's default truncate; built once per (sigma, dtype, device)."""
    key = (float(sigma), dtype, torch.device(device))
    if key not in _KERNELS:
        radius = int(4 * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        _KERNELS[key] = ((k / k.sum()).to(dtype=dtype, device=device), radius)
    return _KERNELS[key]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian with mirrored borders (scipy's mode='mirror'). Done in torch so maps stay
    on the device when timing."""
    if sigma <= 0:
        return maps
    k, radius = gaussian_kernel(sigma, maps.dtype, maps.device)
    m = maps.unsqueeze(1)
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return m.squeeze(1)


def image_score(maps: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "sum":  # Eq. 12
        return maps.flatten(1).sum(1)
    if rule == "max":
        return maps.flatten(1).max(1).values
    raise ValueError(f"unknown score {rule!r}; choose one of {SCORES}")


class Branch(nn.Module):
    """One frozen teacher and the student that imitates it."""

    def __init__(self, teacher: Teacher, student_kind: str, pooling: bool):
        super().__init__()
        self.teacher = teacher
        self.student = build_student(student_kind, teacher, pooling)
        self.pooling = pooling

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        fts = self.teacher(x)
        if self.pooling:  # Eq. 1
            fts = pool_teacher_features(fts, self.teacher.layer_names, self.teacher.trunk.names[0])
        return fts

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.student(self.teacher.normalize(x))


# How maps are computed (recorded with every evaluation; not part of a variant's key):
# `exact`: every level upsampled to the image size, summed, fused, blurred at the image size.
# `lean`:  a one-branch detector sums its layers at the finest layer's resolution; its image score
#          comes from that map blurred there with sigma scaled by the resolution ratio (Eq. 12's sum
#          scaled by the area ratio); a full-size map, when asked for, is one upsample of the summed
#          map blurred at full size. MixedTeacher keeps `exact`: its Eq. 11 product is not the same
#          at low resolution.
MAP_PATHS = ("lean", "exact")


@dataclass
class Prediction:
    scores: torch.Tensor          # (B,)
    maps: torch.Tensor            # (B,H,W), blurred, at the image size (or the map resolution if asked)
    branch_maps: dict[str, torch.Tensor]  # per branch (BRANCH_NAMES), before fusion and blur, at the map resolution


class Detector(nn.Module):
    """Reduced student and STPM have one branch; MixedTeacher has two, the second weighted by alpha."""

    def __init__(self, branches: list[Branch], alpha: float = 0.1, fusion: str = "minmax",
                 score: str = "sum", blur_sigma: float = 4.0, map_weighting: str = "plain",
                 map_path: str = "lean"):
        super().__init__()
        if not 1 <= len(branches) <= 2:
            raise ValueError("a detector has one branch, or two for MixedTeacher")
        self.branches = nn.ModuleList(branches)
        self.loss_weights = [1.0, alpha][: len(branches)]   # Eq. 8
        self.fusion, self.score, self.blur_sigma = fusion, score, blur_sigma
        self.map_weighting = map_weighting
        if map_path not in MAP_PATHS:
            raise ValueError(f"unknown map path {map_path!r}; choose one of {MAP_PATHS}")
        self.map_path = map_path

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

    @property
    def effective_map_path(self) -> str:
        return "lean" if self.map_path == "lean" and len(self.branches) == 1 else "exact"

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 9-10 for each branch, before fusion and blur, at the map resolution (see MAP_PATHS)."""
        out = []
        for b in self.branches:
            fts, fss = b.teacher_features(x), b.student_features(x)
            size = (max(fts, key=lambda f: f.shape[-1]).shape[-2:] if self.effective_map_path == "lean"
                    else x.shape[-2:])
            out.append(features_map(fts, fss, tuple(size), self.map_weighting))
        return out

    def score_maps(self, branch_maps: list[torch.Tensor], size: tuple[int, int],
                   full_size: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 11 (two branches), blur, Eq. 12: branch maps -> (scores, final maps at SIZE, or at the
        map resolution when not FULL_SIZE)."""
        fused = branch_maps[0] if len(branch_maps) == 1 else fuse(branch_maps[0], branch_maps[1], self.fusion)
        ratio = size[-1] / fused.shape[-1]
        low = gaussian_blur(fused, self.blur_sigma / ratio)
        scores = image_score(low, self.score)
        if self.score == "sum":  # Eq. 12 sums over the image's pixels: each map pixel stands for ratio^2
            scores = scores * (size[-2] * size[-1] / (low.shape[-2] * low.shape[-1]))
        if not full_size or ratio == 1:
            return scores, low
        # The full-size map is blurred at full size: blurring at the map resolution and upsampling
        # moved AUPRO by up to 0.003 on KolektorSDD (reduced student), over the 0.002 we allow.
        full = F.interpolate(fused.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        return scores, gaussian_blur(full, self.blur_sigma)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, full_size: bool = True) -> Prediction:
        """The one inference path: evaluation, figures and timing all come through here (evaluation
        calls its two halves so that variants differing only in evaluation share the branch maps)."""
        per_branch = self.branch_maps(x)
        scores, maps = self.score_maps(per_branch, tuple(x.shape[-2:]), full_size)
        return Prediction(scores, maps, dict(zip(BRANCH_NAMES, per_branch)))
