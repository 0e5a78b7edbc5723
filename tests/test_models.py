import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bench.backbones import Teacher
from bench.detector import (Branch, Detector, features_loss, features_map, fuse, gaussian_blur,
                            image_score, layer_distance)

# (backbone, levels, channels, strides) at 256 px
TEACHERS = {
    "resnet18": ((0, 1, 2, 3), [64, 64, 128, 256], [2, 4, 8, 16]),
    "efficientnet_b0": ((0, 1, 2, 3, 4), [16, 24, 40, 112, 320], [2, 4, 8, 16, 32]),
    "tf_efficientnet_lite0": ((0, 1, 2, 3), [16, 24, 40, 112], [2, 4, 8, 16]),
}


@pytest.fixture(scope="module")
def teachers():
    return {name: Teacher(name, spec[0], init="random") for name, spec in TEACHERS.items()}


@pytest.mark.parametrize("backbone", TEACHERS)
@pytest.mark.parametrize("student", ["full", "reduced", "conv", "copy"])
@pytest.mark.parametrize("pooling", [True, False])
def test_feature_shapes_at_256(teachers, backbone, student, pooling):
    levels, chans, strides = TEACHERS[backbone]
    branch = Branch(teachers[backbone], student, pooling)
    x = torch.rand(2, 3, 256, 256)
    ft, fs = branch.teacher_features(x), branch.student_features(x)
    expected = [(2, c, 256 // s // (2 if pooling and i > 0 else 1), 256 // s // (2 if pooling and i > 0 else 1))
                for i, (c, s) in enumerate(zip(chans, strides))]
    assert [tuple(f.shape) for f in ft] == expected
    assert [tuple(f.shape) for f in fs] == expected


def test_reduced_student_has_one_block_per_stage(teachers):
    full = Branch(teachers["resnet18"], "full", False).student
    reduced = Branch(teachers["resnet18"], "reduced", True).student
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(reduced) < 0.5 * n(full)
    assert len(reduced.stages[2]) == 1  # layer2: one BasicBlock


def test_teacher_is_frozen_and_stays_in_eval(teachers):
    t = teachers["resnet18"]
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())


def test_layer_distance_by_hand():
    ft = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)    # normalised (0.6, 0.8)
    fs = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)    # normalised (1, 0)
    expected = 0.5 * ((0.6 - 1) ** 2 + 0.8 ** 2)       # = 0.4
    assert layer_distance(ft, fs).item() == pytest.approx(expected)


def test_loss_mean_over_positions_sum_over_layers_by_hand():
    ft1 = torch.ones(1, 2, 2, 2)
    fs1 = ft1.clone()
    fs1[0, :, 0, 0] = torch.tensor([1.0, -1.0])        # one position orthogonal: distance 0.5*2 = 1
    ft2 = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    fs2 = torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1)   # opposite: 0.5*4 = 2
    assert features_loss([ft1, ft2], [fs1, fs2]).item() == pytest.approx(1 / 4 + 2)


def test_loss_is_per_image():
    ft = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    fs = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).view(2, 2, 1, 1)   # image 0 equal, image 1 opposite
    assert features_loss([ft], [fs]).tolist() == pytest.approx([0.0, 2.0])


def test_area_weighting_divides_each_level_by_its_size_as_the_official_code():
    ft = [torch.ones(1, 1, 1, 1), torch.ones(1, 1, 2, 2)]
    fs = [-torch.ones(1, 1, 1, 1), -torch.ones(1, 1, 2, 2)]          # distance 2 at every position
    m = features_map(ft, fs, (4, 4), weighting="area")
    assert torch.allclose(m, torch.full((1, 4, 4), 2 / 1 + 2 / 4))
    with pytest.raises(ValueError, match="map weighting"):
        features_map(ft, fs, (4, 4), weighting="nope")


def test_map_upsamples_each_layer_and_sums():
    ft = [torch.ones(1, 1, 1, 1), torch.ones(1, 1, 2, 2)]
    fs = [-torch.ones(1, 1, 1, 1), torch.ones(1, 1, 2, 2)]
    m = features_map(ft, fs, (4, 4))
    assert m.shape == (1, 4, 4) and torch.allclose(m, torch.full((1, 4, 4), 2.0))


def test_fusion_minmax_by_hand():
    main = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    aux = torch.tensor([[[1.0, 3.0], [5.0, 1.0]]])       # min 1, extent 4
    # norm = (aux-1)/4, times extent 4 -> aux - 1
    assert torch.allclose(fuse(main, aux, "minmax"), torch.tensor([[[0.0, 4.0], [12.0, 0.0]]]))


def test_fusion_l2rows_as_official_code():
    main = torch.ones(1, 2, 2)
    aux = torch.tensor([[[3.0, 1.0], [4.0, 1.0]]])       # columns (3,4) and (1,1); extent 3
    expected = 3 * torch.tensor([[[3 / 5, 1 / 2 ** 0.5], [4 / 5, 1 / 2 ** 0.5]]])
    assert torch.allclose(fuse(main, aux, "l2rows"), expected)


def test_fusion_is_per_image():
    main, aux = torch.ones(2, 2, 2), torch.rand(2, 2, 2)
    both = fuse(main, aux, "l2rows")
    assert torch.allclose(both[1:], fuse(main[1:], aux[1:], "l2rows"))


def test_scores():
    m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert image_score(m, "sum").item() == 10 and image_score(m, "max").item() == 4
    with pytest.raises(ValueError):
        image_score(m, "mean")


def test_blur_matches_scipy_mirror():
    x = torch.rand(2, 40, 40, dtype=torch.float64)
    ours = gaussian_blur(x, 4.0).numpy()
    ref = np.stack([gaussian_filter(a, 4.0, mode="mirror", truncate=4.0) for a in x.numpy()])
    assert np.allclose(ours, ref, atol=1e-10)


def test_mixed_detector_end_to_end_shapes(teachers):
    det = Detector([Branch(teachers["resnet18"], "reduced", True),
                    Branch(teachers["efficientnet_b0"], "conv", False)], alpha=0.1)
    x = torch.rand(2, 3, 64, 64)
    loss = det.loss(x)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert all(p.grad is None for p in det.branches[0].teacher.parameters())
    pred = det.predict(x)
    assert pred.maps.shape == (2, 64, 64) and pred.scores.shape == (2,) and set(pred.levels) == {"main", "aux"}


def test_alpha_weights_the_second_teacher(teachers):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    b1, b2 = Branch(teachers["resnet18"], "conv", True), Branch(teachers["efficientnet_b0"], "conv", False)
    l1 = features_loss(b1.teacher_features(x), b1.student_features(x))
    l2 = features_loss(b2.teacher_features(x), b2.student_features(x))
    for alpha in (0.0, 0.5):
        det = Detector([b1, b2], alpha=alpha)
        assert det.loss(x).item() == pytest.approx((l1 + alpha * l2).item(), rel=1e-5)


def test_map_weighting_reaches_the_detector(teachers):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    b = Branch(teachers["resnet18"], "conv", True)
    plain = Detector([b]).branch_maps(x)[0]
    area = Detector([b], map_weighting="area").branch_maps(x)[0]
    for p, a in zip(plain, area):   # each level's map divided by its own area
        assert torch.allclose(a, p / (p.shape[-2] * p.shape[-1]))


def test_pooled_stem_level_matches_teacher_and_student_at_half_resolution():
    from bench.build import build_detector
    from bench.variants import create_variant
    x = torch.rand(1, 3, 64, 64)
    for pool_stem, stem_size in ((False, 32), (True, 16)):
        b = build_detector(create_variant("reduced", teacher_init="random", pool_stem=pool_stem)).branches[0]
        ft, fs = b.teacher_features(x), b.student_features(x)
        assert [f.shape for f in ft] == [f.shape for f in fs]
        assert ft[0].shape[-1] == stem_size and ft[1].shape[-1] == 8     # the other levels are unchanged
