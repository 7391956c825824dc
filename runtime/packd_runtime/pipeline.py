"""The one graph pipeline: frames -> prototypes (support graph over whole frames, their tiles or each tile position;
the bank bound) and frames + prototypes -> scores and maps (query graph over frames or tiles, `tile_index` for a
per-position memory, batches at the bundle's limit, stitched maps).

Everything that runs a bundle's graphs on frames drives this: the `Detector` (with its backend's `run`), export's
default threshold and int8 calibration feeds (ONNX Runtime on the graphs being exported), int8's validation, and
`packd eval --tile` (a small PyTorch adapter in `run`'s place). So evaluation computes what the bundle computes by
construction, not because parity tests chase it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from packd_runtime.bundle_format import IMAGES, MAPS, QUERY, SCORES, SUPPORT, TILE_INDEX
from packd_runtime.coreset import bound_prototypes
from packd_runtime.manifest import Limits, Manifest, TilingSpec

Run = Callable[[str, Mapping[str, Any]], Mapping[str, np.ndarray]]  # (graph, feeds) -> outputs by name


def shared_memory_bound(max_count: int, prototype_limit: int) -> int:
    """The most prototypes a changeover keeps: the kind's own bank bound, else the most its query graph takes (every
    tile of every support frame pooled would grow with the frame: bounded, changeover and query time stay bounded
    whatever the frame size)."""
    return max_count or prototype_limit


def max_pool(maps: np.ndarray, side: int) -> np.ndarray:
    """(n, s, s) maps -> (n, side, side) by the max over s/side x s/side blocks (side divides s)."""
    n, s, _ = maps.shape
    if s == side:
        return maps
    f = s // side
    return maps.reshape(n, side, f, side, f).max(axis=(2, 4))


def batch_size(images: Any) -> int:
    """Frames in a batch: a numpy array's first axis, or what a device array's interface says."""
    cai = getattr(images, "__cuda_array_interface__", None)
    return int(cai["shape"][0]) if cai is not None else images.shape[0]


def _chunks(images: Any, limit: int) -> list[Any]:
    n = batch_size(images)
    return [images] if n <= limit else [images[i:i + limit] for i in range(0, n, limit)]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True)
class Pipeline:
    """A bundle's graphs on frames. `run(graph, feeds)` runs one graph on at most the bundle's batch (query) or
    shots (support) of what the graphs take; `prototype_names` are the support graph's outputs (none: no support
    graph); `max_count` is the kind's bank bound (0: none); `tiling`: the graphs take tiles of the frames."""

    run: Run
    limits: Limits
    prototype_names: tuple[str, ...] = ()
    max_count: int = 0
    tiling: TilingSpec | None = None

    @classmethod
    def of(cls, manifest: Manifest, run: Run) -> Pipeline:
        """The pipeline of a bundle's manifest, its graphs run by `run` (a backend's)."""
        return cls(run, manifest.limits, manifest.prototype_names if manifest.few_shot else (), manifest.max_count,
                   manifest.tiling)

    @property
    def bound(self) -> int:
        """The most prototypes a changeover keeps (see `shared_memory_bound`)."""
        return shared_memory_bound(self.max_count, self.limits.prototypes)

    def _support(self, images: Any) -> list[np.ndarray]:
        parts = [self.run(SUPPORT, {IMAGES: chunk}) for chunk in _chunks(images, self.limits.shots)]
        return bound_prototypes([_joined([p[name] for p in parts]) for name in self.prototype_names], self.bound)

    def prototypes(self, frames: Any) -> list[np.ndarray]:
        """The memory of k normal frames: (n, C_i) per prototype tensor, or per position (P, n, C_i), position p's
        from the k frames' tiles at p (one support call per position); bounded to `bound` rows."""
        if self.tiling is None:
            return self._support(frames)
        tiling = self.tiling.tiling
        tiles = tiling.cut(frames)
        if not self.tiling.per_position:
            return self._support(tiles)
        s = tiling.tile
        by_position = tiles.reshape(len(frames), tiling.count, s, s, frames.shape[-1])
        banks = [self._support(np.ascontiguousarray(by_position[:, i])) for i in range(tiling.count)]
        return [np.stack(stage) for stage in zip(*banks)]

    def score(self, frames: Any, prototypes: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and anomaly maps of N frames: the query graph's, or over a tiled bundle's tiles with maps
        stitched per frame (tile maps max-pooled to the map side first, so a coarser map never loses a defect's
        peak) and a frame's score the max of its stitched map (nothing outside the regions of interest counts)."""
        feeds = dict(zip(self.prototype_names, prototypes)) if self.prototype_names else {}
        if self.tiling is None:
            out = [self.run(QUERY, {IMAGES: chunk, **feeds}) for chunk in _chunks(frames, self.limits.batch)]
            return _joined([o[SCORES] for o in out]), _joined([o[MAPS] for o in out])
        tiling, limit = self.tiling.tiling, self.limits.batch
        tiles = tiling.cut(frames)
        positions = np.tile(np.arange(tiling.count, dtype=np.int64), len(frames))
        maps = []
        for i in range(0, len(tiles), limit):
            index = {TILE_INDEX: positions[i:i + limit]} if self.tiling.per_position else {}
            maps.append(self.run(QUERY, {IMAGES: tiles[i:i + limit], **feeds, **index})[MAPS])
        stitched = tiling.stitch(max_pool(_joined(maps), tiling.map_side or tiling.tile))
        return stitched.max(axis=(1, 2)), stitched
