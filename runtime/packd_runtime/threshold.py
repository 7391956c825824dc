"""The threshold rule shared by export (a bundle's default threshold) and the runtime (`Detector.calibrate`)."""

from __future__ import annotations

import numpy as np

from packd_runtime.errors import PackdError


def threshold_from_normal_scores(scores: np.ndarray) -> float:
    """Decision threshold from normal images only (few-shot has no anomalous validation set):
    mean + 3 std of their scores. Non-finite scores (a broken model) are refused."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise PackdError("a threshold needs scores of at least one normal image")
    if not np.isfinite(scores).all():
        raise PackdError("the model gives non-finite scores on normal images: it is broken (diverged training?)")
    return float(scores.mean() + 3.0 * scores.std())


def score_range(scores: np.ndarray) -> dict[str, float | int]:
    """How many normal images a threshold came from and their lowest and highest score (a bundle records it)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return {"images": int(scores.size), "min": float(scores.min()), "max": float(scores.max())}
