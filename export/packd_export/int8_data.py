"""What int8 calibrates and validates on: the feeds the fp32 graphs get while the graph pipeline scores normal
images (the walk of the default threshold, recorded), and held-out images with painted defects. A tiled bundle's
graphs take tiles, so its data are tiles spread over every frame and tile position."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from packd.data.synth import paint_defects
from packd_export.int8 import Feeds, Validation
from packd_export.normal_frames import NORMAL_IMAGES, VALIDATION_IMAGES
from packd_export.threshold import THRESHOLD_SHOTS, normal_scores
from packd_runtime.manifest import read_manifest
from packd_runtime.onnxruntime.backend import OnnxRuntimeBackend
from packd_runtime.pipeline import Pipeline
from packd_runtime.tiling import Tiling


def sample_tiles(tiling: Tiling, frames: np.ndarray, count: int) -> np.ndarray:
    """`count` tiles spread evenly over every (frame, tile position) of `frames`, frame-major: what a tiled
    bundle's int8 calibration and validation run on (its graphs take tiles)."""
    n = len(frames) * tiling.count
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
    s = tiling.tile
    return np.stack([frames[i // tiling.count, y:y + s, x:x + s]
                     for i, (y, x) in zip(picks, tiling.origins[picks % tiling.count])])


def calibration_feeds(pipeline: Pipeline, frames: dict[str, np.ndarray]) -> dict[str, Feeds]:
    """Per graph, the feeds `pipeline` gives it while scoring the normal `frames` (`threshold.normal_scores`):
    int8 calibration data, prototypes included, exactly as the graphs see them."""
    feeds: dict[str, Feeds] = {}

    def recording(graph: str, inputs: Any) -> Any:
        feeds.setdefault(graph, []).append(dict(inputs))
        return pipeline.run(graph, inputs)

    normal_scores(replace(pipeline, run=recording), frames)
    return feeds


def validation_sets(frames: dict[str, np.ndarray], few_shot: bool, max_prototypes: int) -> Validation:
    """Held-out images per category for int8: the normal images after the calibration images (the last
    calibration images where a category has too few) and copies of them with a painted defect each, so
    that score ranks measure what decisions rest on: defective above normal."""
    overlaps = any(len(f) < NORMAL_IMAGES + THRESHOLD_SHOTS + 2 for f in frames.values())
    sets = []
    for images in frames.values():
        held = images[NORMAL_IMAGES:] if not overlaps else images[-min(len(images), VALIDATION_IMAGES):]
        supports, queries = (held[:THRESHOLD_SHOTS], held[THRESHOLD_SHOTS:]) if few_shot else (None, held)
        sets.append((supports, np.concatenate([queries, paint_defects(queries, seed=len(sets))])))
    return Validation(sets, max_prototypes, overlaps)


def bundle_feeds(bundle: str | Path, frames: dict[str, np.ndarray]) -> dict[str, Feeds]:
    """`calibration_feeds` of a written bundle's own graphs: data for tools that quantize a bundle (benchmarks,
    tests)."""
    manifest = read_manifest(bundle)
    backend = OnnxRuntimeBackend.open(Path(bundle), manifest.graphs, device=None)
    try:
        return calibration_feeds(Pipeline.of(manifest, backend.run), frames)
    finally:
        backend.close()
