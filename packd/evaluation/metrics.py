"""Anomaly-detection metrics: image AUROC and F1-max (scikit-learn), and pixel AUROC, pixel F1-max
and the standard dataset-level AUPRO (FPR limit 0.3, normalised) from streamed histograms.

The pixel metrics visit one image at a time and keep only per-threshold counts, so thousands of
256 px maps (even a memory-mapped array) never need a sort over every pixel. Scores are binned
on `bins` equal-width thresholds between the global min and max; ties inside a bin are credited
half, as for tied scores, so the results match the exact ones to about 1/bins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from packd.errors import PackdError

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC of image scores; needs normal and anomalous images."""
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        raise PackdError("AUROC needs both normal and anomalous images")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds of the image scores."""
    p, r, _ = precision_recall_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64))
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    return float(f1.max())


def _auc_from_cumulative(fp: np.ndarray, tp: np.ndarray) -> float:
    """Trapezoid area under (fp, tp) points given from the highest threshold down (both increasing)."""
    x = np.concatenate([[0.0], fp])
    y = np.concatenate([[0.0], tp])
    return float(np.trapezoid(y, x))


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, bins: int = 16384) -> dict[str, float]:
    """pixel_auroc, pixel_f1_max and aupro of anomaly maps (N,H,W) against boolean masks (N,H,W)."""
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise PackdError(f"maps {maps.shape} and masks {masks.shape} must both be (N,H,W)")
    lo, hi = float(np.min(maps)), float(np.max(maps))
    width = (hi - lo) / bins if hi > lo else 1.0
    normal = np.zeros(bins, np.float64)
    anomalous = np.zeros(bins, np.float64)
    overlap = np.zeros(bins, np.float64)  # sum over regions of (region pixels in bin / region size)
    n_regions = 0
    for score_map, mask in zip(maps, masks):
        b = np.clip(((score_map - lo) / width).astype(np.int64), 0, bins - 1)
        mask = mask.astype(bool)
        normal += np.bincount(b[~mask], minlength=bins)
        if not mask.any():
            continue
        anomalous += np.bincount(b[mask], minlength=bins)
        labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if n:
            lab = labels[mask]
            per_region = np.bincount(lab * bins + b[mask], minlength=(n + 1) * bins).reshape(n + 1, bins)[1:]
            overlap += (per_region / per_region.sum(axis=1, keepdims=True)).sum(axis=0)
            n_regions += n
    if anomalous.sum() == 0 or normal.sum() == 0:
        raise PackdError("pixel metrics need both anomalous and normal pixels")
    # cumulative counts from the highest bin down: threshold j keeps every pixel in bins >= j
    tp = np.cumsum(anomalous[::-1])
    fp = np.cumsum(normal[::-1])
    fpr, tpr = fp / fp[-1], tp / tp[-1]
    pro = np.cumsum(overlap[::-1]) / n_regions
    precision = tp / np.maximum(tp + fp, 1)
    f1 = 2 * precision * tpr / np.maximum(precision + tpr, 1e-12)
    # AUPRO: integrate PRO over FPR up to the limit (interpolating at the limit), normalised
    x = np.concatenate([[0.0], fpr])
    y = np.concatenate([[0.0], pro])
    keep = x <= fpr_limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < fpr_limit and keep.sum() < len(x):
        j = keep.sum()
        t = (fpr_limit - x[j - 1]) / max(x[j] - x[j - 1], 1e-12)
        xs = np.append(xs, fpr_limit)
        ys = np.append(ys, y[j - 1] + t * (y[j] - y[j - 1]))
    return {
        "pixel_auroc": _auc_from_cumulative(fpr, tpr),
        "pixel_f1_max": float(f1.max()),
        "aupro": float(np.trapezoid(ys, xs) / fpr_limit),
    }
