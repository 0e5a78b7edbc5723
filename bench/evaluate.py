"""Run a trained detector over a test split and score it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.detector import Detector
from bench.metrics import all_metrics


@dataclass
class Evaluation:
    metrics: dict
    scores: np.ndarray       # (N,)
    maps: np.ndarray         # (N,H,W) float32, blurred final maps
    parts: dict              # branch name -> (N,H,W) float16 maps before fusion


@torch.no_grad()
def evaluate(detector: Detector, images: torch.Tensor, labels: np.ndarray, masks: np.ndarray,
             device="cpu", batch_size: int = 16) -> Evaluation:
    detector.eval().to(device)
    scores, maps, parts = [], [], {}
    for i in range(0, len(images), batch_size):
        pred = detector.predict(images[i:i + batch_size].to(device).float().div_(255))
        scores.append(pred.scores.cpu().numpy())
        maps.append(pred.maps.cpu().numpy())
        for name, m in pred.parts.items():
            parts.setdefault(name, []).append(m.cpu().half().numpy())
    scores = np.concatenate(scores).astype(np.float64)
    maps = np.concatenate(maps).astype(np.float32)
    if not np.isfinite(scores).all():
        raise FloatingPointError("the detector produced non-finite anomaly scores")
    parts = {k: np.concatenate(v) for k, v in parts.items()}
    return Evaluation(all_metrics(labels, scores, masks, maps), scores, maps, parts)
