"""The lean map path against the textbook computation (issue: one lean inference path)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from bench.build import build_detector
from bench.detector import (MAP_PATHS, Detector, fuse, gaussian_blur, gaussian_kernel, image_score,
                            layer_distance)
from bench.variants import OURS, PRESETS, create_variant, list_variants

RANDOM = dict(teacher_init="random", teacher2_init="random")
# the peers' maps are anomalib's (tests/test_peers.py)
OUR_PRESETS = [n for n in list_variants() if PRESETS[n].method in OURS]


def textbook_distance(ft, fs):
    """Eq. 2 as written: two normalised copies and a squared difference."""
    return 0.5 * (F.normalize(ft, dim=1) - F.normalize(fs, dim=1)).pow(2).sum(1)


def textbook_predict(det: Detector, x):
    """Before the lean path: every level to the image size, stacked, summed, blurred there, scored."""
    size = x.shape[-2:]
    parts = []
    for b in det.branches:
        maps = [F.interpolate(textbook_distance(t, s).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
                for t, s in zip(b.teacher_features(x), b.student_features(x))]
        parts.append(torch.stack(maps).sum(0).squeeze(1))
    fused = parts[0] if len(parts) == 1 else fuse(parts[0], parts[1], det.fusion)
    maps = gaussian_blur(fused, det.blur_sigma)
    return image_score(maps, det.score), maps


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_lean_distance_equals_eq2(dtype, tol):
    g = torch.Generator().manual_seed(0)
    ft, fs = torch.randn(3, 64, 9, 7, generator=g, dtype=dtype), torch.randn(3, 64, 9, 7, generator=g, dtype=dtype)
    ft[0, :, 0, 0] = 0          # a zero vector (ReLU features have them): F.normalize's eps behaviour
    fs[1, :, 2, 3] = 0
    ft[2, :, 4, 4] = fs[2, :, 4, 4] = 0
    assert torch.allclose(layer_distance(ft, fs).double(), textbook_distance(ft, fs).double(), atol=tol, rtol=0)


def test_lean_distance_accumulates_half_precision_in_fp32():
    ft, fs = torch.randn(2, 512, 4, 4) * 20, torch.randn(2, 512, 4, 4) * 20   # |f|^2 ~ 2e5 > fp16's max
    lean = layer_distance(ft.half(), fs.half())
    assert lean.dtype == torch.float32 and torch.isfinite(lean).all()
    assert torch.allclose(lean, textbook_distance(ft, fs), atol=2e-3)


def test_gaussian_kernel_is_built_once():
    a = gaussian_kernel(2.0, torch.float32, torch.device("cpu"))
    assert gaussian_kernel(2.0, torch.float32, torch.device("cpu"))[0] is a[0] and a[1] == 8


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.rand(6, 3, 128, 128)


@pytest.mark.parametrize("name", OUR_PRESETS)
def test_exact_path_is_the_textbook_computation(name, batch):
    det = build_detector(create_variant(name, **RANDOM)).eval()
    det.map_path = "exact"
    scores, maps = textbook_predict(det, batch)
    pred = det.predict(batch)
    # fp32 rounding of 1 - cos is ~1e-7 per pixel: visible only where the map is ~0 (a copy student)
    assert torch.allclose(pred.maps, maps, rtol=1e-4, atol=1e-6)
    assert torch.allclose(pred.scores, scores, rtol=1e-4, atol=1e-6 * maps[0].numel())


# Stated tolerance of the lean map against the exact one (max |difference| / max |exact map|, on
# untrained students whose maps are noisier than trained ones): bilinear-of-bilinear upsampling and
# a blur at the finest level's resolution. Scores move far less (Eq. 12 averages the differences out).
# A max is one pixel, so it moves more than a sum.
LEAN_MAP_TOL, LEAN_SCORE_TOL = 0.05, {"sum": 2e-3, "max": 5e-2}


@pytest.mark.parametrize("name", OUR_PRESETS)
def test_lean_map_within_tolerance_of_exact_for_every_preset(name, batch):
    det = build_detector(create_variant(name, **RANDOM)).eval()
    out = {}
    for path in MAP_PATHS:
        det.map_path = path
        parts = det.branch_maps(batch)
        for score in LEAN_SCORE_TOL:
            det.score = score
            out[path, score] = det.score_maps(parts, tuple(batch.shape[-2:]))
    det.map_path = "lean"
    assert det.effective_map_path == ("exact" if len(det.branches) == 2 else "lean")
    for score, tol in LEAN_SCORE_TOL.items():
        (lean_s, lean_m), (exact_s, exact_m) = out["lean", score], out["exact", score]
        assert lean_m.shape == exact_m.shape
        assert ((lean_m - exact_m).abs().max() / exact_m.abs().max()).item() < LEAN_MAP_TOL
        assert ((lean_s - exact_s).abs() / exact_s.abs()).max().item() < tol, score


def test_lean_map_resolution_is_the_finest_level_and_full_size_is_one_upsample(batch):
    det = build_detector(create_variant("stpm", **RANDOM)).eval()
    low = det.predict(batch, full_size=False)
    assert low.maps.shape[-1] == 128 // 4 and low.parts["main"].shape[-1] == 128 // 4   # STPM's layer1
    full = det.predict(batch)
    assert full.maps.shape[-1] == 128 and torch.equal(full.scores, low.scores)


def test_unknown_map_path_is_refused():
    branches = build_detector(create_variant("reduced", **RANDOM)).branches
    with pytest.raises(ValueError, match="map path"):
        Detector(list(branches), map_path="fast")
    assert MAP_PATHS == ("lean", "exact")


@pytest.mark.slow
@pytest.mark.shared
def test_lean_scores_rank_as_exact_on_a_real_checkpoint(shared):
    """A reduced student trained briefly on KolektorSDD (real Lite0 teacher): its test scores rank
    the same way on both paths."""
    from bench.data import load_images, load_split, to_unit_float
    from bench.train import fit, get_recipe
    from conftest import LITE0
    split = load_split(shared / "data" / "kolektorsdd")
    train = load_images(split.train[:48], 256)
    test = load_images(split.test[::4], 256)
    for name in ("reduced-lite0", "stpm-lite0"):
        det = build_detector(create_variant(name), weights={"tf_efficientnet_lite0": str(LITE0)})
        fit(det, train[:40], train[40:], get_recipe("quick"), 1, 0, progress=False)
        scores = {}
        for path in MAP_PATHS:
            det.map_path = path
            scores[path] = torch.cat([det.predict(to_unit_float(test[i:i + 16], "cpu")).scores
                                      for i in range(0, len(test), 16)]).numpy()
        assert spearmanr(scores["lean"], scores["exact"]).statistic >= 0.999, name
        assert np.allclose(scores["lean"], scores["exact"], rtol=LEAN_SCORE_TOL["sum"])
