"""Image AUROC, pixel AUROC, AUPRO (integrated up to FPR 0.3, normalised) and F1-max.

AUPRO's defect regions are connected components of the mask. MVTec's reference joins pixels that
share an edge (4-connectivity, our default, used by every table); anomalib also joins diagonal
neighbours (8-connectivity: fewer, larger regions). Records carry both, named."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def descending(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of scores from highest to lowest, and a flag on the last element of each tie group
    (a threshold admits every pixel of equal score). One sort serves pixel AUROC and AUPRO."""
    order = np.argsort(scores, kind="quicksort")[::-1]
    s = scores[order]
    return order, np.r_[s[1:] != s[:-1], True]


def pixel_auroc(masks: np.ndarray, maps: np.ndarray, sorted_=None) -> float:
    """ROC AUC over all pixels (as sklearn's roc_auc_score, without its cost on ~10^7 pixels)."""
    pos = masks.reshape(-1).astype(bool)
    order, last = sorted_ or descending(maps.reshape(-1))
    tp = np.r_[0, np.cumsum(pos[order])[last]]
    fp = np.r_[0, np.cumsum(~pos[order])[last]]
    if tp[-1] == 0 or fp[-1] == 0:
        raise ValueError("pixel AUROC needs both defect and defect-free pixels")
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


AUPRO_CONNECTIVITY = 4
AUPRO_FPR_LIMIT = 0.3
# what every run record states about how its metrics were computed
METRIC_SETTINGS = {"aupro_fpr_limit": AUPRO_FPR_LIMIT, "aupro_connectivity": AUPRO_CONNECTIVITY,
                   "aupro_conn8_connectivity": 8}
CONNECTIVITIES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def pro_curve(masks: np.ndarray, maps: np.ndarray, sorted_=None,
              connectivity: int = AUPRO_CONNECTIVITY) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from the highest down. PRO is the mean over all
    connected defect regions (4- or 8-connectivity) of the fraction of the region
    above the threshold; FPR is over all defect-free pixels of all images. One sort, so it scales
    to whole test sets: each pixel carries 1/(area * n_regions) toward PRO or 1/n_ok toward FPR."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"AUPRO connectivity must be 4 or 8, got {connectivity!r}")
    masks = masks.astype(bool)
    pro_w = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, m in enumerate(masks):
        labelled, n = ndimage.label(m, structure=CONNECTIVITIES[connectivity])
        if n:
            areas = np.bincount(labelled.ravel())
            w = np.zeros_like(areas, dtype=np.float64)
            w[1:] = 1.0 / areas[1:]
            pro_w[i] = w[labelled]
            n_regions += n
    if n_regions == 0 or masks.all():
        raise ValueError("AUPRO needs at least one defect region and one defect-free pixel")
    pro_w = pro_w.ravel() / n_regions
    fpr_w = (~masks).ravel() / float((~masks).sum())
    order, last = sorted_ or descending(maps.reshape(-1))
    pro = np.cumsum(pro_w[order])
    fpr = np.cumsum(fpr_w[order])
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def integrate_until(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], y interpolated linearly at x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs[-1] < x_max and keep.sum() < len(x):
        j = keep.sum()
        y_at = y[j - 1] + (y[j] - y[j - 1]) * (x_max - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT, sorted_=None,
          connectivity: int = AUPRO_CONNECTIVITY) -> float:
    fpr, pro = pro_curve(masks, maps, sorted_, connectivity)
    return integrate_until(fpr, pro, fpr_limit) / fpr_limit


def all_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> dict:
    """`aupro` at MVTec's 4-connectivity (what the tables show), `aupro_conn8` at anomalib's."""
    sorted_ = descending(maps.reshape(-1))
    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps, sorted_),
            "aupro": aupro(masks, maps, sorted_=sorted_, connectivity=METRIC_SETTINGS["aupro_connectivity"]),
            "aupro_conn8": aupro(masks, maps, sorted_=sorted_,
                                 connectivity=METRIC_SETTINGS["aupro_conn8_connectivity"]),
            "f1_max": f1_max(labels, scores)}
