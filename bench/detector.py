"""Teacher(s) + student(s) as one nn.Module: features, loss (Eq. 2-8), anomaly maps (Eq. 9-10),
MixedTeacher fusion (Eq. 11) and image score (Eq. 12)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Teacher
from bench.students import build_student

FUSIONS = ("minmax", "l2rows")
BRANCH_NAMES = ("main", "aux")
SCORES = ("sum", "max")
# How Eq. 9-10 weigh the levels: `plain` sums them (the paper); `area` divides each level's map by
# its h*w first (the official MixedTeacher code, so a coarse level outweighs a fine one).
MAP_WEIGHTINGS = ("plain", "area")


def layer_distance(ft: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (as STPM): 1/2 squared L2 distance of channel-normalised features, per position -> (B,H,W)."""
    if ft.shape != fs.shape:
        raise ValueError(f"teacher features {tuple(ft.shape)} and student features {tuple(fs.shape)} differ")
    return 0.5 * (F.normalize(ft, dim=1) - F.normalize(fs, dim=1)).pow(2).sum(1)


def features_loss(fts: list[torch.Tensor], fss: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3-4 / 6-7 for each image: mean over positions, sum over layers -> (B,). How the batch is
    reduced is the recipe's choice (`train.reduce_batch`)."""
    return sum(layer_distance(t, s).mean(dim=(1, 2)) for t, s in zip(fts, fss))


def features_map(fts: list[torch.Tensor], fss: list[torch.Tensor], size: tuple[int, int],
                 weighting: str = "plain") -> torch.Tensor:
    """Eq. 9-10: per-layer distance maps upsampled (bilinear) to the input size and summed -> (B,H,W)."""
    if weighting not in MAP_WEIGHTINGS:
        raise ValueError(f"unknown map weighting {weighting!r}; choose one of {MAP_WEIGHTINGS}")
    maps = []
    for t, s in zip(fts, fss):
        d = layer_distance(t, s)
        if weighting == "area":
            d = d / (d.shape[-2] * d.shape[-1])
        maps.append(F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False))
    return torch.stack(maps).sum(0).squeeze(1)


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
    """Separable Gaussian, radius round(4 sigma) as scipy's default truncate, mirrored borders
    (scipy's mode='mirror'). Done in torch so maps stay on the device when timing."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
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
        if self.pooling:  # Eq. 1: adaptive average pooling to the student's half resolution
            stem = self.teacher.trunk.names[0]  # the stride-2 level stays at full resolution
            fts = [f if tap == stem else
                   F.adaptive_avg_pool2d(f, (math.ceil(f.shape[-2] / 2), math.ceil(f.shape[-1] / 2)))
                   for tap, f in zip(self.teacher.taps, fts)]
        return fts

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.student(self.teacher.normalize(x))


@dataclass
class Prediction:
    scores: torch.Tensor          # (B,)
    maps: torch.Tensor            # (B,H,W), blurred
    parts: dict[str, torch.Tensor]  # per-branch maps before fusion and blur, for figures


class Detector(nn.Module):
    """Reduced student and STPM have one branch; MixedTeacher has two, the second weighted by alpha."""

    def __init__(self, branches: list[Branch], alpha: float = 0.1, fusion: str = "minmax",
                 score: str = "sum", blur_sigma: float = 4.0, map_weighting: str = "plain"):
        super().__init__()
        if not 1 <= len(branches) <= 2:
            raise ValueError("a detector has one branch, or two for MixedTeacher")
        self.branches = nn.ModuleList(branches)
        self.weights = [1.0, alpha][: len(branches)]
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
                   for w, b, ft in zip(self.weights, self.branches, fts))

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 9-10 for each branch, before fusion and blur."""
        size = tuple(x.shape[-2:])
        return [features_map(b.teacher_features(x), b.student_features(x), size, self.map_weighting)
                for b in self.branches]

    def finish(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 11 (two branches), blur, Eq. 12: branch maps -> (scores, final maps)."""
        fused = parts[0] if len(parts) == 1 else fuse(parts[0], parts[1], self.fusion)
        maps = gaussian_blur(fused, self.blur_sigma)
        return image_score(maps, self.score), maps

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> Prediction:
        parts = self.branch_maps(x)
        scores, maps = self.finish(parts)
        return Prediction(scores, maps, dict(zip(BRANCH_NAMES, parts)))
