"""Normal images for what export computes from data: int8 calibration feeds, int8's held-out validation sets, and a
bundle's default threshold (from its own graphs, so fp16 / int8 bundles get theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from packd.data import list_split
from packd.errors import PackdError
from packd.preprocess import Preprocess, load_frames
from packd.scoring import Scorer
from packd.synth import paint_defects
from packd_export.int8 import Validation
from packd_runtime.bundle_format import (
    BATCH,
    IMAGES,
    MAPS,
    PROTOTYPES,
    QUERY,
    SCORES,
    SHOTS,
    SUPPORT,
    TILE_INDEX,
    read_manifest,
)
from packd_runtime.coreset import bound_prototypes
from packd_runtime.onnxruntime.backend import OnnxRuntimeBackend
from packd_runtime.threshold import score_range, threshold_from_normal_scores
from packd_runtime.tiling import Tiling, position_support, shared_memory_bound, tiled_query, tiled_support

CALIBRATION_IMAGES = 32  # normal training images per training category: int8 calibration and the default threshold
VALIDATION_IMAGES = 16  # the next ones per category: int8's sensitivity analysis and checks (never calibrated on)
THRESHOLD_SHOTS = 2  # few-shot kinds: supports per category when scoring the normal images


def calibration_frames(config: dict[str, Any], frame_hw: tuple[int, int], per_category: int,
                       data: Path | None = None) -> dict[str, np.ndarray]:
    """Normal training images of the checkpoint's categories as uint8 camera frames (N,H,W,3)."""
    root = Path(data or config["train"]["data"])
    frames = {}
    for cat in config["train"]["categories"]:
        try:
            samples = list_split(root, cat, "train")[:per_category]
        except PackdError as e:
            raise PackdError(f"calibration images: {e} (pass --calibration-data DIR with the training "
                             "dataset)") from None
        frames[cat] = load_frames([s.path for s in samples], frame_hw)
    return frames


def sample_tiles(tiling: Tiling, frames: np.ndarray, count: int) -> np.ndarray:
    """`count` tiles spread evenly over every (frame, tile position) of `frames`, frame-major: what a tiled
    bundle's int8 calibration and validation run on (its graphs take tiles)."""
    n = len(frames) * tiling.count
    picks = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
    s = tiling.tile
    return np.stack([frames[i // tiling.count, y:y + s, x:x + s]
                     for i, (y, x) in zip(picks, tiling.origins[picks % tiling.count])])


def check_threshold_images(frames: dict[str, np.ndarray], few_shot: bool) -> None:
    """Before the long work: the default threshold needs normal images to score, which few-shot kinds do not
    take as supports; one line when the categories have none left."""
    spare = sum(max(0, len(f) - THRESHOLD_SHOTS) if few_shot else len(f) for f in frames.values())
    if spare == 0:
        counts = ", ".join(f"{c}: {len(f)}" for c, f in frames.items())
        need = f"{THRESHOLD_SHOTS + 1} (a few-shot kind takes {THRESHOLD_SHOTS} as supports)" if few_shot else "1"
        raise PackdError(f"the bundle's default threshold needs normal images to score and the training categories "
                         f"have too few ({counts}); at least {need} in one category are needed: pass "
                         "--calibration-data DIR with more normal images of them")


def normal_feeds(frames: dict[str, np.ndarray], few_shot: bool,
                 prototypes) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph the feeds of normal images: few-shot kinds take THRESHOLD_SHOTS supports per category
    (through `prototypes(supports) -> {name: array}`) and score the rest; other kinds score them all."""
    feeds: dict[str, list] = {SUPPORT: [], QUERY: []}
    for images in frames.values():
        queries, extra = images, {}
        if few_shot:
            supports, queries = images[:THRESHOLD_SHOTS], images[THRESHOLD_SHOTS:]
            feeds[SUPPORT].append({IMAGES: supports})
            extra = prototypes(supports)
        feeds[QUERY] += [{IMAGES: queries[i:i + 8], **extra} for i in range(0, len(queries), 8)]
    return feeds


def validation_sets(frames: dict[str, np.ndarray], few_shot: bool, max_prototypes: int) -> Validation:
    """Held-out images per category for int8: the normal images after the calibration images (the last
    calibration images where a category has too few) and copies of them with a painted defect each, so
    that score ranks measure what decisions rest on: defective above normal."""
    overlaps = any(len(f) < CALIBRATION_IMAGES + THRESHOLD_SHOTS + 2 for f in frames.values())
    sets = []
    for images in frames.values():
        held = images[CALIBRATION_IMAGES:] if not overlaps else images[-min(len(images), VALIDATION_IMAGES):]
        supports, queries = (held[:THRESHOLD_SHOTS], held[THRESHOLD_SHOTS:]) if few_shot else (None, held)
        sets.append((supports, np.concatenate([queries, paint_defects(queries, seed=len(sets))])))
    return Validation(sets, max_prototypes, overlaps)


@torch.no_grad()
def torch_prototype_feeds(scorer: Scorer, names: list[str]):
    """The FP32 PyTorch support path (bank bound included) as a feed maker, for int8 calibration."""
    preprocess = Preprocess(scorer.spec)
    return lambda supports: {n: p.numpy() for n, p in
                             zip(names, scorer.prototypes(preprocess(torch.from_numpy(supports))))}


def graph_feeds(backend: OnnxRuntimeBackend, graphs: dict[str, Any], frames: dict[str, np.ndarray],
                max_prototypes: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """`normal_feeds` with prototypes from the bundle's own support graph (bank bound included)."""
    names = [o["name"] for o in graphs.get(SUPPORT, {}).get("outputs", [])]

    def prototypes(supports: np.ndarray) -> dict[str, np.ndarray]:
        out = backend.run(SUPPORT, {IMAGES: supports})
        arrays = [out[n] for n in names]
        return dict(zip(names, bound_prototypes(arrays, max_prototypes) if max_prototypes else arrays))

    return normal_feeds(frames, SUPPORT in graphs, prototypes)


def bundle_feeds(bundle: str | Path, frames: dict[str, np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph the feeds of normal frames for a written bundle, prototypes from its own support graph:
    calibration data for tools that quantize a bundle's graphs (benchmarks, tests)."""
    manifest = read_manifest(bundle)
    backend = OnnxRuntimeBackend(Path(bundle), manifest)
    try:
        return graph_feeds(backend, manifest["graphs"], frames, manifest.get("prototypes", {}).get("max_count", 0))
    finally:
        backend.close()


def tiled_normal_scores(backend: OnnxRuntimeBackend, graphs: dict[str, Any], frames: dict[str, np.ndarray],
                        tiling: Tiling, limits: dict[str, int], bound: int, memory: str = "shared") -> np.ndarray:
    """Scores of whole normal frames through graphs that take tiles, as the runtime computes them (a shared memory
    (tiled_support) or one per position (position_support), bounded to `bound`; tiled_query): few-shot kinds'
    supports are THRESHOLD_SHOTS frames per category."""
    names = [o["name"] for o in graphs.get(SUPPORT, {}).get("outputs", [])]
    make = position_support if memory == "position" else tiled_support
    scores = []
    for images in frames.values():
        feeds, queries = {}, images
        if SUPPORT in graphs:
            supports, queries = images[:THRESHOLD_SHOTS], images[THRESHOLD_SHOTS:]
            arrays = make(tiling, lambda t: [backend.run(SUPPORT, {IMAGES: t})[n] for n in names], supports,
                          limits[SHOTS], bound=bound)
            feeds = dict(zip(names, arrays))

        def run(tiles: np.ndarray, positions: np.ndarray, feeds=feeds) -> tuple[np.ndarray, np.ndarray]:
            index = {TILE_INDEX: positions.astype(np.int64)} if memory == "position" and feeds else {}
            out = backend.run(QUERY, {IMAGES: tiles, **feeds, **index})
            return out[SCORES], out[MAPS]

        if len(queries):
            scores.append(tiled_query(tiling, run, queries, limits[BATCH])[0])
    return np.concatenate(scores)


def bundle_threshold(bundle: Path, graphs: dict[str, Any], frames: dict[str, np.ndarray],
                     max_prototypes: int = 0, tiling: Tiling | None = None,
                     limits: dict[str, int] | None = None, memory: str = "shared") -> dict[str, Any]:
    """The default threshold of a bundle from its OWN graphs (so fp16 / int8 bundles get theirs): mean +
    3 std of the scores of normal training images (whole frames through a `tiling`'s tiles when given, the graphs'
    batch and shot `limits` respected), few-shot kinds with prototypes from 2 of them; with the range
    of those scores, which the manifest records so that a threshold far outside it is refused.
    Returns the manifest's {"threshold", "normal_scores"}."""
    backend = OnnxRuntimeBackend(bundle, {"graphs": graphs})
    try:
        if tiling is not None:
            scores = tiled_normal_scores(backend, graphs, frames, tiling, limits,
                                         shared_memory_bound(max_prototypes, limits[PROTOTYPES]), memory)
        else:
            feeds = graph_feeds(backend, graphs, frames, max_prototypes)
            scores = np.concatenate([backend.run(QUERY, f)[SCORES] for f in feeds[QUERY]])
    finally:
        backend.close()
    return {"threshold": threshold_from_normal_scores(scores), "normal_scores": score_range(scores)}
