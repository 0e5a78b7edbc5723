"""Datasets in the MVTec AD layout, BTAD's official layout, and any folder in the MVTec layout.

MVTec AD:  ROOT/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}
BTAD:      ROOT/<01|02|03>/{train/ok, test/ok, test/ko, ground_truth/ko/<stem>.png|.bmp}
Folder:    a single category in the MVTec layout (ROOT/train/good ...), or ROOT/<category>/... as MVTec.

Images are resized to the variant's size (bilinear, antialiased), masks with nearest neighbour.
Good test images have no mask (all zero). Every problem raises DataError naming the file.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.errors import BenchError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD_NAMES = ("good", "ok")


class DataError(BenchError, ValueError):
    """A dataset problem, always naming the file or folder at fault."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int                 # 0 good, 1 defective
    defect: str                # "good" or the defect class folder name
    mask: Path | None = None


@dataclass
class Split:
    dataset: str
    category: str
    layout: str
    train: list[Sample]
    test: list[Sample]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def detect_layout(root: Path) -> tuple[str, list[str]]:
    """('folder', [root name]) for a single category, else ('mvtec'|'btad', categories)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    if (root / "train").is_dir():
        return "folder", [root.name]
    cats = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    if not cats:
        raise DataError(f"{root}: no train/ folder, neither here nor in any sub-folder "
                        "(expected the MVTec AD or BTAD layout)")
    btad = all((root / c / "train" / "ok").is_dir() for c in cats)
    return ("btad" if btad else "mvtec"), cats


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_EXTS:
            if (p := gt_dir / f"{name}{ext}").is_file():
                return p
    return None


def load_split(root: str | Path, category: str | None = None) -> Split:
    root = Path(root)
    layout, cats = detect_layout(root)
    if layout == "folder":
        if category not in (None, cats[0]):
            raise DataError(f"unknown category {category!r} in {root}: it holds the single category {cats[0]!r}")
        base, category = root, cats[0]
    else:
        if category is None:
            raise DataError(f"{root} holds several categories {cats}: choose one")
        if category not in cats:
            raise DataError(f"unknown category {category!r} in {root}: available are {cats}")
        base = root / category
    train_dir = next((base / "train" / g for g in GOOD_NAMES if (base / "train" / g).is_dir()), None)
    if train_dir is None:
        raise DataError(f"{base / 'train'}: no good/ (MVTec) or ok/ (BTAD) folder of training images")
    train = [Sample(p, 0, "good") for p in _images_in(train_dir)]
    if not train:
        raise DataError(f"{train_dir}: empty train folder, no images ({', '.join(IMAGE_EXTS)})")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: missing test folder")
    test = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        good = defect_dir.name in GOOD_NAMES
        for img in _images_in(defect_dir):
            mask = None
            if not good:
                mask = _find_mask(base / "ground_truth" / defect_dir.name, img.stem)
                if mask is None:
                    raise DataError(f"{img}: defective test image without a ground-truth mask "
                                    f"(looked for {base / 'ground_truth' / defect_dir.name / (img.stem + '_mask.png')} "
                                    f"or {img.stem}.png)")
            test.append(Sample(img, 0 if good else 1, "good" if good else defect_dir.name, mask))
    if not test:
        raise DataError(f"{test_dir}: empty test split, no images")
    if not any(s.label for s in test) or all(s.label for s in test):
        raise DataError(f"{test_dir}: the test split needs both good and defective images")
    return Split(root.name, category, layout, train, test)


# Modes that hold more than 8 bits per pixel: industrial cameras write 12/16-bit grey images.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _open(path: Path, mode: str | None) -> Image.Image:
    """The image in MODE (None: as stored), or DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if mode else im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: corrupt or unreadable image ({err})") from err


def _to_rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB. A 16-bit (or 32-bit integer) grey image is scaled from its full 16-bit range:
    Pillow's own convert("RGB") saturates at 255, which turns a 16-bit image nearly all white."""
    if im.mode not in _WIDE_MODES:
        return im.convert("RGB")
    arr = np.asarray(im).astype(np.float64)
    top = 1.0 if im.mode == "F" and arr.max() <= 1.0 else 65535.0
    grey = np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_unit_float(images: torch.Tensor, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images from load_images as floats (float32 unless DTYPE) in [0, 1] on DEVICE."""
    return images.to(device, non_blocking=True).to(dtype).div_(255)


def load_images(samples: list[Sample], size: int) -> torch.Tensor:
    """uint8 tensor (N, 3, size, size); grayscale images are repeated over three channels."""
    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, s in enumerate(samples):
        im = _to_rgb8(_open(s.path, None)).resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out


def binary_mask(mask: Image.Image) -> np.ndarray:
    """Defect pixels of a ground-truth mask. A mask of two values (0/255, 0/1 as many tools export,
    0/65535) marks the higher one; a soft mask, what lies above half its type's range."""
    if mask.mode not in _WIDE_MODES:
        mask = mask.convert("L")
    arr = np.asarray(mask)
    values = np.unique(arr)
    if len(values) == 2:
        return arr == values[1]
    half = 127 if arr.dtype == np.uint8 else (0.5 if mask.mode == "F" else 32767)
    return arr > half


def load_masks(samples: list[Sample], size: int) -> torch.Tensor:
    """bool tensor (N, size, size); all False for good images."""
    out = torch.zeros(len(samples), size, size, dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.mask is None:
            continue
        mask = _open(s.mask, None)
        with Image.open(s.path) as im:
            img_size = im.size
        if mask.size != img_size:
            raise DataError(f"{s.mask}: mask of the wrong size {mask.size[0]}x{mask.size[1]}, "
                            f"its image {s.path.name} is {img_size[0]}x{img_size[1]}")
        binary = Image.fromarray(binary_mask(mask).astype(np.uint8) * 255)
        out[i] = torch.from_numpy(np.asarray(binary.resize((size, size), Image.NEAREST)) > 127)
    return out


def train_val_indices(n: int, seed: int, val_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """The paper's seeded 80/20 split of the *training* images (the test set is never touched)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])
