"""Few-shot accuracy of an exported bundle in the torch-free runtime: the k-shot protocol's support
sets (same seed, same draws as `packd eval`), changeover and detection through `Detector`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames, mask_at
from packd.evaluation.fewshot import FEWSHOT_KEYS, draw_support_sets
from packd.evaluation.metrics import image_auroc, pixel_metrics
from packd_runtime import Detector


def category_test_frames(data: Path, category: str, hw: tuple[int, int], map_hw: tuple[int, int]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A category's test frames at the bundle's frame size, masks at its maps' size, labels."""
    test = list_split(data, category, "test")
    frames = load_frames([s.path for s in test], hw)
    masks = np.stack([mask_at(s.mask, s.path, map_hw) for s in test])
    return frames, masks, np.array([s.label for s in test])


def bundle_fewshot_runs(det: Detector, data: Path, categories: list[str], shots: int, runs: int, seed: int = 0
                        ) -> dict[str, list[dict[str, float]]]:
    """Per category the metrics of each support set (FEWSHOT_KEYS), computed by the runtime."""
    out = {}
    for cat in categories:
        frames, masks, labels = category_test_frames(data, cat, det.frame_hw, det.manifest.map_hw)
        out[cat] = []
        for support in draw_support_sets(data, cat, shots, runs, seed):
            det.prototypes(load_frames([s.path for s in support], det.frame_hw))
            r = det.detect(frames)
            m = {"image_auroc": image_auroc(labels, r.scores), **pixel_metrics(r.maps, masks)}
            out[cat].append({k: m[k] for k in FEWSHOT_KEYS})
    return out
