"""The one inference path against the textbook computation (issue: one lean inference path): the
distance as 1 - cos, and upsampling and blur as separable matrices, give Eq. 2-12 as written."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from bench.build import build_detector
from bench.detector import (SCORES, Detector, blur_operator, fuse, gaussian_blur, image_score, layer_distance,
                            resize_operator)
from bench.variants import OURS, PRESETS, create_variant, list_variants

# the peers' maps are anomalib's (tests/test_peers.py)
OUR_PRESETS = [n for n in list_variants() if PRESETS[n].method in OURS]

RANDOM = dict(teacher_init="random", teacher2_init="random")


def textbook_distance(ft, fs):
    """Eq. 2 as written: two normalised copies and a squared difference."""
    return 0.5 * (F.normalize(ft, dim=1) - F.normalize(fs, dim=1)).pow(2).sum(1)


def textbook_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy's Gaussian filter, mirrored borders, radius 4 sigma: an implementation nobody here wrote."""
    return torch.from_numpy(np.stack([gaussian_filter(m, sigma, mode="mirror", truncate=4.0)
                                      for m in maps.double().numpy()])).float()


@torch.no_grad()
def textbook_predict(det: Detector, x):
    """Eq. 9-12 as written: every layer upsampled to the image size by F.interpolate, stacked, summed,
    fused (Eq. 11), blurred at the image size by scipy, scored."""
    size = x.shape[-2:]
    per_branch = []
    for b in det.branches:
        maps = [F.interpolate(textbook_distance(t, s).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
                for t, s in zip(b.teacher_features(x), b.student_features(x))]
        per_branch.append(torch.stack(maps).sum(0).squeeze(1))
    fused = per_branch[0] if len(per_branch) == 1 else fuse(per_branch[0], per_branch[1], det.fusion)
    maps = textbook_blur(fused, det.blur_sigma)
    return image_score(maps, det.score), maps


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_distance_as_one_minus_cos_equals_eq2(dtype, tol):
    g = torch.Generator().manual_seed(0)
    ft, fs = torch.randn(3, 64, 9, 7, generator=g, dtype=dtype), torch.randn(3, 64, 9, 7, generator=g, dtype=dtype)
    ft[0, :, 0, 0] = 0          # a zero vector (ReLU features have them): F.normalize's eps behaviour
    fs[1, :, 2, 3] = 0
    ft[2, :, 4, 4] = fs[2, :, 4, 4] = 0
    assert torch.allclose(layer_distance(ft, fs).double(), textbook_distance(ft, fs).double(), atol=tol, rtol=0)


def test_distance_a_few_images_at_a_time_is_the_whole_batch_at_once(monkeypatch):
    """The cache-sized chunks change no value, with or without gradients, and not in an export."""
    from bench import detector
    g = torch.Generator().manual_seed(1)
    ft, fs = torch.randn(5, 64, 16, 16, generator=g), torch.randn(5, 64, 16, 16, generator=g, requires_grad=True)
    whole = layer_distance(ft, fs)
    monkeypatch.setattr(detector, "DISTANCE_CHUNK_BYTES", 2 * 64 * 16 * 16 * 4)   # two images a chunk
    chunked = layer_distance(ft, fs)
    assert torch.allclose(chunked, whole, atol=1e-7, rtol=0)
    assert torch.allclose(torch.autograd.grad(chunked.sum(), fs)[0], torch.autograd.grad(whole.sum(), fs)[0], atol=1e-7)
    traced = torch.jit.trace(lambda a, b: layer_distance(a, b), (ft[:2], fs[:2].detach()))
    assert torch.allclose(traced(ft, fs.detach()), whole, atol=1e-7)   # the batch size stays free when traced


def test_distance_accumulates_half_precision_in_fp32():
    ft, fs = torch.randn(2, 512, 4, 4) * 20, torch.randn(2, 512, 4, 4) * 20   # |f|^2 ~ 2e5 > fp16's max
    d = layer_distance(ft.half(), fs.half())
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    assert torch.allclose(d, textbook_distance(ft, fs), atol=2e-3)


def test_an_operator_first_built_under_inference_mode_serves_autograd_later():
    from bench.detector import upsample_sum
    with torch.inference_mode():
        resize_operator(37, 11)   # a shape nothing else asks for: first built here
    x = torch.rand(2, 11, 11, requires_grad=True)
    upsample_sum([x], (37, 37)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("n_in,n_out", [(16, 64), (32, 128), (7, 20), (64, 64), (64, 32)])
def test_resize_operator_is_f_interpolate(n_in, n_out):
    m = torch.rand(3, n_in, n_in + 3)
    ref = F.interpolate(m.unsqueeze(1), size=(n_out, n_out + 5), mode="bilinear", align_corners=False).squeeze(1)
    out = resize_operator(n_out, n_in) @ m @ resize_operator(n_out + 5, n_in + 3).T
    assert torch.allclose(out, ref, atol=1e-5)   # F.interpolate computes its weights in fp32


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_blur_is_scipy_gaussian_filter_with_mirrored_borders(sigma):
    m = torch.rand(2, 40, 33)
    assert torch.allclose(gaussian_blur(m, sigma), textbook_blur(m, sigma), atol=1e-6)
    assert torch.equal(gaussian_blur(m, 0), m)


def test_operators_are_built_once_and_refuse_a_blur_wider_than_the_map():
    assert blur_operator(64, 2.0) is blur_operator(64, 2.0) and resize_operator(64, 16) is resize_operator(64, 16)
    with pytest.raises(ValueError, match="wider than 8 pixels"):
        blur_operator(8, 4.0)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.rand(6, 3, 128, 128)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("name", OUR_PRESETS)
def test_predict_is_the_textbook_computation_for_every_preset(name, score, batch):
    det = build_detector(create_variant(name, score=score, **RANDOM)).eval()
    scores, maps = textbook_predict(det, batch)
    pred = det.predict(batch)
    # fp32 rounding of 1 - cos is ~1e-7 per pixel: visible only where the map is ~0 (a copy student)
    assert pred.maps.shape == maps.shape
    assert torch.allclose(pred.maps, maps, rtol=1e-4, atol=1e-6)
    assert torch.allclose(pred.scores, scores, rtol=1e-4, atol=1e-6 * maps[0].numel())


def test_sum_score_needs_no_full_size_map(batch):
    """Eq. 12's sum of the blurred full-size map, from the layer maps alone: the same scores."""
    det = build_detector(create_variant("reduced", **RANDOM)).eval()
    full, scores_only = det.predict(batch), det.predict(batch, full_size=False)
    assert scores_only.maps is None
    assert torch.allclose(scores_only.scores, full.scores, rtol=1e-5)
    assert torch.allclose(full.scores, image_score(full.maps, "sum"), rtol=1e-5)
    # the layer maps stay at their own resolutions: the reduced student's stem at half the image size
    assert [lv.shape[-1] for lv in full.layer_maps["main"]] == [64, 16, 8, 4]


@pytest.mark.slow
@pytest.mark.shared
def test_scores_rank_as_the_textbook_computation_on_a_real_checkpoint(shared):
    """A reduced student and STPM trained briefly on KolektorSDD (real Lite0 teacher): their test
    scores equal the textbook computation's and rank the same way."""
    from bench.data import load_images, load_split, to_unit_float
    from bench.train import fit, get_recipe
    from conftest import LITE0
    split = load_split(shared / "data" / "kolektorsdd")
    train = load_images(split.train[:48], 256)
    test = load_images(split.test[::4], 256)
    for name in ("reduced-lite0", "stpm-lite0"):
        det = build_detector(create_variant(name), weights={"tf_efficientnet_lite0": str(LITE0)})
        fit(det, train[:40], train[40:], get_recipe("quick"), 1, 0, progress=False)
        det.eval()
        ours, textbook = [], []
        with torch.no_grad():
            for i in range(0, len(test), 16):
                x = to_unit_float(test[i:i + 16], "cpu")
                ours.append(det.predict(x).scores)
                textbook.append(textbook_predict(det, x)[0])
        ours, textbook = torch.cat(ours).numpy(), torch.cat(textbook).numpy()
        assert spearmanr(ours, textbook).statistic >= 0.999, name
        assert np.allclose(ours, textbook, rtol=1e-4), name
