"""The threshold rule shared by export (a bundle's default threshold) and the runtime (`Detector.calibrate`)."""

from __future__ import annotations

import numpy as np

from packd_runtime.errors import PackdError

# Fewer normal images give a threshold that swings too far (docs/runtime.md, "How many images": from 3 frames about
# 6-10 % false alarms on average and over 20 % for one product in ten; from 5 about 2-4 %; from 8 about 1 %).
MIN_NORMAL_IMAGES = 5


def check_normal_count(count: int) -> None:
    """Before scoring them: enough normal images for a threshold (one line saying what is needed and why)."""
    if count < MIN_NORMAL_IMAGES:
        raise PackdError(f"a threshold needs at least {MIN_NORMAL_IMAGES} normal images, got {count}: from fewer, "
                         "mean + 3 std swings too far (from 3 frames about 1 product in 10 gets over 20 % false "
                         "alarms; 8 or more give about 1 %; see 'How many images' in the runtime docs)")


def threshold_from_normal_scores(scores: np.ndarray) -> float:
    """Decision threshold from normal images only (few-shot has no anomalous validation set):
    mean + 3 std of their scores, from at least MIN_NORMAL_IMAGES. Non-finite scores (a broken model) are refused."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    check_normal_count(scores.size)
    if not np.isfinite(scores).all():
        raise PackdError("the model gives non-finite scores on normal images: it is broken (diverged training?)")
    return float(scores.mean() + 3.0 * scores.std())


def score_range(scores: np.ndarray) -> dict[str, float | int]:
    """How many normal images a threshold came from and their lowest and highest score (a bundle records it)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return {"images": int(scores.size), "min": float(scores.min()), "max": float(scores.max())}


NEAR = 0.10  # a score within 10 % below the threshold is an OK "near the threshold"


def margin(score: float, threshold: float) -> float:
    """How far a score is from the threshold, as a fraction of it: -0.25 is a quarter below, 0.1 a tenth above."""
    return (score - threshold) / abs(threshold) if threshold else float("inf")


def verdict_text(score: float, threshold: float | None) -> str:
    """One line an operator reads at a glance: a clear OK, an OK near the threshold, or a defect, with six digits
    and the margin in per cent (scores that print alike to four digits still differ here)."""
    if threshold is None:
        return f"UNCALIBRATED  score {score:.6g}"
    m = margin(score, threshold)
    word = "DEFECT" if score > threshold else ("OK (near threshold)" if -m < NEAR else "OK")
    return f"{word}  score {score:.6g}  threshold {threshold:.6g}  ({m:+.1%})"
