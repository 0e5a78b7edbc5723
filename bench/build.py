"""Variant -> Detector."""
from __future__ import annotations

from bench.backbones import Teacher
from bench.detector import Branch, Detector
from bench.variants import PEERS, Variant


def build_detector(variant: Variant, weights: dict[str, str] | None = None) -> Detector:
    if variant.method in PEERS:  # anomalib's models behind the same interface (bench.peers)
        from bench.peers import build_peer
        return build_peer(variant, weights)
    branches = [Branch(Teacher(variant.teacher, variant.layers, variant.teacher_init, weights),
                       variant.student, variant.pooling, variant.pool_stem)]
    if variant.teacher2:
        # The second teacher's deep, coarse layers are matched at their own resolution (§4.2: "without pooling").
        branches.append(Branch(Teacher(variant.teacher2, variant.layers2, variant.teacher2_init, weights),
                               variant.student2, pooling=False))
    return Detector(branches, alpha=variant.alpha, fusion=variant.fusion, score=variant.score,
                    blur_sigma=variant.blur_sigma, map_weighting=variant.map_weighting)


def teacher_sources(detector: Detector) -> list[dict]:
    return [{"backbone": b.teacher.backbone, **b.teacher.source.as_record()} for b in detector.branches]
