"""A generated texture-defect dataset in the MVTec layout, deterministic from its seed.

Two textures: `weave`, a regular woven grating, and `grain`, a stochastic filtered-noise surface.
Defects: `scratch` (a thin line), `hole` (a dark disc), `stain` (a soft colour blob), each with its
pixel mask. Used by the demo and the tests, so nothing has to be downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

CATEGORIES = ("weave", "grain")
DEFECTS = ("scratch", "hole", "stain")


def _texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "weave":
        period = 12.0
        phase = rng.uniform(0, period, 2)
        a = np.sin(2 * np.pi * (xx + phase[0]) / period)
        b = np.sin(2 * np.pi * (yy + phase[1]) / period)
        base = 0.5 + 0.25 * np.where((np.floor((xx + phase[0]) / period) + np.floor((yy + phase[1]) / period)) % 2 == 0, a, b)
        base += rng.normal(0, 0.03, base.shape)
        tint = np.array([0.75, 0.6, 0.45])
    elif kind == "grain":
        base = gaussian_filter(rng.normal(0, 1, (size, size)), 2.0)
        base = 0.5 + 0.15 * base / base.std()
        base += rng.normal(0, 0.02, base.shape)
        tint = np.array([0.55, 0.6, 0.65])
    else:
        raise ValueError(f"unknown texture {kind!r}; choose one of {CATEGORIES}")
    return np.clip(base[..., None] * tint * 1.4, 0, 1)


def _defect(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length, width = rng.uniform(0.2, 0.4) * size, rng.uniform(2.0, 3.5)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask = (np.abs(u) < length / 2) & (np.abs(v) < width)
        img[mask] = rng.choice([0.05, 0.95])
    elif kind == "hole":
        r = rng.uniform(0.04, 0.08) * size
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        img[mask] = img[mask] * 0.15
    elif kind == "stain":
        r = rng.uniform(0.06, 0.12) * size
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r ** 2))
        colour = rng.uniform(0, 1, 3)
        img[:] = img * (1 - 0.8 * blob[..., None]) + 0.8 * blob[..., None] * colour
        mask = blob > 0.3
    else:
        raise ValueError(f"unknown defect {kind!r}; choose one of {DEFECTS}")
    return mask


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)


def make_dataset(root: str | Path, seed: int = 0, categories=CATEGORIES, n_train: int = 40,
                 n_test_good: int = 10, n_test_defect: int = 12, size: int = 256) -> Path:
    """Write the dataset under ROOT (skipped when the same parameters were already written)."""
    root = Path(root)
    params = dict(seed=seed, categories=list(categories), n_train=n_train, n_test_good=n_test_good,
                  n_test_defect=n_test_defect, size=size, version=1)
    stamp = root / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    for c, cat in enumerate(categories):
        rng = np.random.default_rng([seed, c])
        for i in range(n_train):
            _save(_texture(cat, rng, size), root / cat / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            _save(_texture(cat, rng, size), root / cat / "test" / "good" / f"{i:03d}.png")
        for i in range(n_test_defect):
            kind = DEFECTS[i % len(DEFECTS)]
            img = _texture(cat, rng, size)
            mask = _defect(kind, img, rng)
            _save(img, root / cat / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float32), root / cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    stamp.write_text(json.dumps(params))
    return root
