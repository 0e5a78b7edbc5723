import numpy as np
import pytest
from scipy import ndimage

from bench.metrics import aupro, f1_max, image_auroc, integrate_until, pixel_auroc


def reference_aupro(masks, maps, limit=0.3):
    """Plain, independent reference: one threshold at a time, every region's overlap counted."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m)
        regions += [(i, lab == k) for k in range(1, n + 1)]
    ok = ~masks.astype(bool)
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = (above & ok).sum() / ok.sum()
        pro = np.mean([(above[i] & r).sum() / r.sum() for i, r in regions])
        pts.append((fpr, pro))
    fpr, pro = map(np.array, zip(*pts))
    area, prev = 0.0, (0.0, 0.0)
    for f, p in zip(fpr[1:], pro[1:]):
        if f > limit:  # interpolate the segment that crosses the limit, then stop
            p_at = prev[1] + (p - prev[1]) * (limit - prev[0]) / (f - prev[0])
            area += (limit - prev[0]) * (p_at + prev[1]) / 2
            prev = (limit, p_at)
            break
        area += (f - prev[0]) * (p + prev[1]) / 2
        prev = (f, p)
    return area / limit


def random_case(rng, n=4, size=12, quantise=None):
    masks = np.zeros((n, size, size), bool)
    masks[0, 1:4, 1:4] = True          # two regions in image 0
    masks[0, 7:11, 6:9] = True
    masks[1, 5:7, 2:10] = True         # one region in image 1; images 2, 3 are defect-free
    maps = rng.random((n, size, size)) + 0.6 * masks
    if quantise:                        # many exact ties
        maps = np.round(maps * quantise) / quantise
    return masks, maps


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantise", [None, 4, 10])
def test_aupro_matches_reference(seed, quantise):
    masks, maps = random_case(np.random.default_rng(seed), quantise=quantise)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


def test_aupro_perfect_and_inverted():
    masks, maps = random_case(np.random.default_rng(0))
    assert aupro(masks, masks.astype(float) + 0.01 * maps) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0, abs=1e-9)


def test_aupro_weights_regions_equally_not_by_area():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0:6, 0:6] = True            # large region, found
    masks[0, 9, 9] = True                # one-pixel region, missed
    maps = masks.astype(float)
    maps[0, 9, 9] = -1.0                # below every background pixel
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-9)


def test_aupro_needs_a_region():
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros((2, 4, 4), bool), np.random.default_rng(0).random((2, 4, 4)))


def test_integrate_until_interpolates_at_the_limit():
    x, y = np.array([0.0, 0.2, 0.4]), np.array([0.0, 1.0, 1.0])
    assert integrate_until(x, y, 0.3) == pytest.approx(0.1 + 0.1)


@pytest.mark.parametrize("quantise", [None, 3])
def test_pixel_auroc_matches_sklearn_with_ties(quantise):
    from sklearn.metrics import roc_auc_score
    masks, maps = random_case(np.random.default_rng(1), quantise=quantise)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_auroc_and_f1():
    labels = np.array([0, 0, 1, 1])
    assert image_auroc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(labels, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert f1_max(labels, np.array([0.1, 0.35, 0.3, 0.4])) == pytest.approx(0.8)
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0, 0] = True
    assert pixel_auroc(masks, masks.astype(float)) == 1.0


def test_aupro_connectivity_joins_diagonal_pixels_only_at_8():
    """Two pixels touching at a corner: two regions for MVTec's 4-connectivity, one for anomalib's 8.
    The map finds one pixel of the pair and the whole block, and puts the other pixel below every
    background pixel, so PRO stays flat over FPR in [0, 1): 4-conn (1 + 0 + 1)/3, 8-conn (1/2 + 1)/2."""
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True             # diagonal pair
    masks[0, 4:6, 4:6] = True                           # a 2x2 block
    maps = np.full((1, 6, 6), 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = -1.0
    maps[0, 4:6, 4:6] = 1.0
    four, eight = aupro(masks, maps, connectivity=4), aupro(masks, maps, connectivity=8)
    assert four == pytest.approx(2 / 3, abs=1e-9) and eight == pytest.approx(3 / 4, abs=1e-9)
    with pytest.raises(ValueError, match="connectivity"):
        aupro(masks, maps, connectivity=6)
