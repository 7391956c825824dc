"""A bundle's default threshold, from its OWN graphs (so fp16 / int8 bundles get theirs) driven by the runtime's
graph pipeline: mean + 3 std of the scores of normal training images, few-shot kinds with prototypes from
THRESHOLD_SHOTS of each category's images. (A product's own threshold is the runtime's `Detector.calibrate`.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from packd.errors import PackdError
from packd_runtime.manifest import Graph, Limits, NormalScores, TilingSpec
from packd_runtime.onnxruntime.backend import OnnxRuntimeBackend
from packd_runtime.pipeline import Pipeline
from packd_runtime.threshold import MIN_NORMAL_IMAGES, score_range, threshold_from_normal_scores

THRESHOLD_SHOTS = 2  # few-shot kinds: supports per category when scoring the normal images


def check_threshold_images(frames: dict[str, np.ndarray], few_shot: bool) -> None:
    """Before the long work: the default threshold needs normal images to score, which few-shot kinds do not
    take as supports; one line when the categories have none left."""
    spare = sum(max(0, len(f) - THRESHOLD_SHOTS) if few_shot else len(f) for f in frames.values())
    if spare < MIN_NORMAL_IMAGES:
        counts = ", ".join(f"{c}: {len(f)}" for c, f in frames.items())
        taken = f" beside the {THRESHOLD_SHOTS} each category's supports take" if few_shot else ""
        raise PackdError(f"the bundle's default threshold needs at least {MIN_NORMAL_IMAGES} normal images to score"
                         f"{taken}, and the training categories have too few ({counts}): pass --calibration-data DIR "
                         "with more normal images of them")


def normal_scores(pipeline: Pipeline, frames: dict[str, np.ndarray],
                  progress: Callable[[str], None] = lambda _: None) -> np.ndarray:
    """Scores of normal frames as the runtime computes them; few-shot kinds take each category's first
    THRESHOLD_SHOTS frames as supports and score the rest."""
    scores = []
    tiles = f", {pipeline.tiling.tiling.count} tiles each" if pipeline.tiling else ""
    for i, (category, images) in enumerate(frames.items()):
        progress(f"default threshold: {category} ({i + 1} of {len(frames)}), {len(images)} frames{tiles}")
        prototypes, queries = None, images
        if pipeline.prototype_names:
            prototypes, queries = pipeline.prototypes(images[:THRESHOLD_SHOTS]), images[THRESHOLD_SHOTS:]
        if len(queries):
            scores.append(pipeline.score(queries, prototypes)[0])
    return np.concatenate(scores)


def bundle_threshold(folder: Path, graphs: dict[str, Graph], frames: dict[str, np.ndarray], *, limits: Limits,
                     prototype_names: tuple[str, ...], max_count: int,
                     tiling: TilingSpec | None,
                     progress: Callable[[str], None] = lambda _: None) -> tuple[float, NormalScores]:
    """The default threshold of the graphs written in `folder` and the range of the normal scores it came from
    (which the manifest records, so that a threshold far outside it is refused)."""
    backend = OnnxRuntimeBackend.open(folder, graphs, device=None)
    try:
        scores = normal_scores(Pipeline(backend.run, limits, prototype_names, max_count, tiling), frames,
                               progress)
    finally:
        backend.close()
    return threshold_from_normal_scores(scores), NormalScores(**score_range(scores))

