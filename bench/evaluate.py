"""Run a trained detector over a test split and score it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.data import to_unit_float
from bench.detector import Detector
from bench.metrics import all_metrics


@dataclass
class Evaluation:
    metrics: dict
    scores: np.ndarray       # (N,)
    maps: np.ndarray         # (N,H,W) float32, final blurred maps
    layer_maps: dict         # branch name -> its Eq. 2 maps, one (N,h,w) tensor per layer


@torch.no_grad()
def branch_maps(detector: Detector, images: torch.Tensor, device="cpu", batch_size: int = 16) -> list[list[torch.Tensor]]:
    """Each branch's layer maps (Detector.branch_maps) over the whole test set, on the host. Everything
    after this point depends only on evaluation-time fields (fusion, blur, score), so sibling variants
    can share it."""
    detector.eval().to(device)
    chunks = [detector.branch_maps(to_unit_float(images[i:i + batch_size], device))
              for i in range(0, len(images), batch_size)]
    return [[torch.cat([c[b][i].cpu() for c in chunks]) for i in range(len(chunks[0][b]))]
            for b in range(len(chunks[0]))]


def score_and_measure(detector: Detector, per_branch: list[list[torch.Tensor]], labels: np.ndarray, masks: np.ndarray,
                      batch_size: int = 64) -> Evaluation:
    """Each branch's layer maps -> scores and full-size maps (Detector.score_maps, as predict) -> metrics."""
    scores, maps = [], []
    size = tuple(masks.shape[-2:])
    for i in range(0, len(masks), batch_size):
        s, m = detector.score_maps([[d[i:i + batch_size] for d in maps] for maps in per_branch], size)
        scores.append(s.numpy())
        maps.append(m.numpy())
    scores = np.concatenate(scores).astype(np.float64)
    maps = np.concatenate(maps).astype(np.float32)
    if not np.isfinite(scores).all():
        raise FloatingPointError("the detector produced non-finite anomaly scores")
    return Evaluation(all_metrics(labels, scores, masks, maps), scores, maps, dict(zip(detector.part_names, per_branch)))
