"""Line-resolution frames: where the tiles of a camera frame lie, how a batch of frames is cut into them, and how
the tiles' anomaly maps are stitched back into one map per frame.

Everything that depends only on the geometry (tile origins, the stitching index and weights) is computed once, when
a `Tiling` is made (at export or when a bundle opens); cutting is one strided gather and stitching one weighted
`bincount`, with no Python loop over tiles. Tiles cover each region of interest (the whole frame when none is
given); along each axis they start every `tile - overlap` pixels and the last one is aligned to the region's far
edge (never padded), so every tile holds real pixels only. Overlaps are blended with weights that ramp up over
the overlap width, so a tile's border, where its features see the least context, counts less than a neighbour's
centre, and a defect on a tile border is seen whole by the neighbour that holds it. Outside the regions of
interest the stitched map is 0: nothing there is ever flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from packd_runtime.coreset import bound_prototypes
from packd_runtime.errors import PackdError

MAX_TILES = 4096  # tiles of one frame: a bound on the batch a frame needs, checked before any work

Box = tuple[int, int, int, int]  # (y, x, height, width) in frame pixels


def _starts(lo: int, length: int, tile: int, stride: int, frame: int) -> list[int]:
    """Tile origins along one axis covering [lo, lo + length): every `stride`, the last aligned to the far edge;
    a region shorter than a tile gets one tile centred on it, kept inside the frame."""
    if length <= tile:
        return [min(max(lo + (length - tile) // 2, 0), frame - tile)]
    starts = list(range(lo, lo + length - tile, stride))
    return starts + [lo + length - tile]


def _ramp(side: int, ramp: int) -> np.ndarray:
    """Blending weights along one tile axis: rising linearly over `ramp` pixels at each end, 1 in between, never 0
    (a frame border covered by one tile alone keeps its values)."""
    u = np.arange(side, dtype=np.float64)
    return np.minimum(np.minimum(u + 1, side - u) / (ramp + 1), 1.0) if ramp > 0 else np.ones(side)


@dataclass(frozen=True)
class Tiling:
    """Tiles of `tile` x `tile` frame pixels over a (height, width) frame, overlapping by `overlap` pixels, covering
    the regions of interest `rois` ((y, x, h, w) boxes; none: the whole frame); maps stitched at `map_side` pixels
    per tile (the tile maps' own side) and so at `map_side / tile` of the frame's resolution."""

    frame_hw: tuple[int, int]
    tile: int
    overlap: int = 0
    rois: tuple[Box, ...] = ()
    map_side: int | None = None
    origins: np.ndarray = field(init=False, repr=False, compare=False)  # (N, 2) tile origins (y, x)

    def __post_init__(self) -> None:
        (h, w), s, p = self.frame_hw, self.tile, self.overlap
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w, s, p)):
            raise PackdError("frame size, tile and overlap must be whole numbers of pixels")
        if h < 1 or w < 1:
            raise PackdError(f"the frame size must be at least 1x1 pixels, got {h}x{w}")
        if not 1 <= s <= min(h, w):
            raise PackdError(f"--tile {s} must be at least 1 and fit in the {h}x{w} frame")
        if not 0 <= p < s:
            raise PackdError(f"--overlap {p} must be at least 0 and less than the tile ({s})")
        rois = self.rois or ((0, 0, h, w),)
        for y, x, rh, rw in rois:
            if rh < 1 or rw < 1 or y < 0 or x < 0 or y + rh > h or x + rw > w:
                raise PackdError(f"--roi {y},{x},{rh},{rw} must lie inside the {h}x{w} frame with a size of at least "
                                 "1x1 (Y,X,H,W in frame pixels)")
        for i, a in enumerate(rois):
            for b in rois[i + 1:]:
                if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]:
                    raise PackdError(f"--roi {','.join(map(str, a))} and {','.join(map(str, b))} overlap: give one "
                                     "region covering both")
        stride = s - p
        counts = [len(_starts(y, rh, s, stride, h)) * len(_starts(x, rw, s, stride, w)) for y, x, rh, rw in rois]
        if sum(counts) > MAX_TILES:
            raise PackdError(f"a {h}x{w} frame in tiles of {s} overlapping by {p} makes {sum(counts)} tiles, more "
                             f"than {MAX_TILES}: use larger tiles, less overlap or smaller regions of interest")
        origins = np.array([(ty, tx) for y, x, rh, rw in rois for ty in _starts(y, rh, s, stride, h)
                            for tx in _starts(x, rw, s, stride, w)], dtype=np.int64)
        object.__setattr__(self, "origins", origins)

    @cached_property
    def stitch_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The flat map index of every tile-map pixel, its blending weight, and 1 / the weight each map pixel
        gathers (0 outside the regions of interest, so nothing there is ever flagged). Built once, on first use
        (a Detector builds it when it opens; checking a manifest never needs it)."""
        m = self.map_side or self.tile
        scale = m / self.tile
        mh, mw = self.map_hw
        ys = np.clip(np.round(self.origins[:, 0] * scale).astype(np.int64), 0, mh - m)
        xs = np.clip(np.round(self.origins[:, 1] * scale).astype(np.int64), 0, mw - m)
        r = np.arange(m)
        index = (ys[:, None, None] + r[None, :, None]) * mw + (xs[:, None, None] + r[None, None, :])
        ramp = _ramp(m, round(self.overlap * scale))
        weights = np.outer(ramp, ramp)
        gathered = np.bincount(index.ravel(), weights=np.broadcast_to(weights, index.shape).ravel(),
                               minlength=mh * mw)
        inside = np.zeros((mh, mw), bool)
        for y, x, rh, rw in self.rois or ((0, 0, *self.frame_hw),):
            inside[round(y * scale):round((y + rh) * scale), round(x * scale):round((x + rw) * scale)] = True
        norm = np.where(inside.ravel() & (gathered > 0), 1.0 / np.maximum(gathered, 1e-12), 0.0)
        return index, weights, norm

    @property
    def count(self) -> int:
        """Tiles per frame."""
        return len(self.origins)

    @property
    def map_hw(self) -> tuple[int, int]:
        """The stitched map's size: the frame's, scaled by map_side / tile."""
        scale = (self.map_side or self.tile) / self.tile
        return max(1, round(self.frame_hw[0] * scale)), max(1, round(self.frame_hw[1] * scale))

    def cut(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, C) frames -> (B * N, tile, tile, C) tiles, frame by frame, in one gather (one copy)."""
        b, h, w, c = frames.shape
        if (h, w) != self.frame_hw:
            raise PackdError(f"frames must be {self.frame_hw[0]}x{self.frame_hw[1]} (this tiling's frame size), got "
                             f"{h}x{w}")
        s = self.tile
        sb, sh, sw, sc = frames.strides
        windows = np.lib.stride_tricks.as_strided(frames, shape=(b, h - s + 1, w - s + 1, s, s, c),
                                                  strides=(sb, sh, sw, sh, sw, sc), writeable=False)
        return windows[:, self.origins[:, 0], self.origins[:, 1]].reshape(b * self.count, s, s, c)

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """(B * N, m, m) tile maps (m = map_side) -> (B, *map_hw) frame maps: overlaps blended, 0 outside the
        regions of interest."""
        n, m = self.count, self.map_side or self.tile
        if maps.ndim != 3 or maps.shape[1:] != (m, m) or maps.shape[0] % n:
            raise PackdError(f"tile maps must be (B*{n}, {m}, {m}), got {maps.shape}")
        index, weights, norm = self.stitch_plan
        b, size = maps.shape[0] // n, norm.size
        offsets = np.arange(b, dtype=np.int64)[:, None, None, None] * size
        summed = np.bincount((index[None] + offsets).ravel(), minlength=b * size,
                             weights=(maps.reshape(b, n, m, m) * weights).ravel())
        return (summed.reshape(b, size) * norm).reshape(b, *self.map_hw).astype(np.float32)


def tiling_from_manifest(manifest: dict, where: str = "") -> Tiling | None:
    """The Tiling a manifest records (None when it records none); tile maps are stitched at its `map_side` (default:
    the query graph's own map side, the model's input size), which must divide the graph's."""
    spec = manifest.get("tiling")
    if spec is None:
        return None
    try:
        rois = tuple(tuple(r) for r in spec.get("rois", ()))
        if not all(len(r) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in r) for r in rois):
            raise PackdError("every region of interest must be four whole numbers Y,X,H,W")
        side, size = spec.get("map_side", manifest["image_size"]), manifest["image_size"]
        if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= size or size % side:
            raise PackdError(f"the map side {side!r} must divide the model's input size {size}")
        return Tiling((manifest["input"]["height"], manifest["input"]["width"]), tile=spec["tile"],
                      overlap=spec.get("overlap", 0), rois=rois, map_side=side)
    except (KeyError, TypeError, AttributeError) as e:
        raise PackdError(f"invalid manifest {where}: its tiling is malformed ({type(e).__name__}: {e})") from None
    except PackdError as e:
        raise PackdError(f"invalid manifest {where}: its tiling is unusable: {e}") from None



def map_hw(manifest: dict) -> tuple[int, int]:
    """The size of the anomaly map the runtime returns per frame: a tiled bundle's stitched map, else the model's
    input size."""
    tiling = tiling_from_manifest(manifest)
    return tiling.map_hw if tiling is not None else (manifest["image_size"], manifest["image_size"])


def max_pool(maps: np.ndarray, side: int) -> np.ndarray:
    """(n, s, s) maps -> (n, side, side) by the max over s/side x s/side blocks (side divides s)."""
    n, s = maps.shape[0], maps.shape[1]
    if s == side:
        return maps
    f = s // side
    return maps.reshape(n, side, f, side, f).max(axis=(2, 4))


def tiled_query(tiling: Tiling, run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                frames: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Score whole frames with a query graph that takes tiles: `run(tiles, positions) -> (scores, maps)` over every
    frame's tiles in batches of at most `limit` (`positions`: each tile's index in its frame's tiling, what a
    per-position memory looks its prototypes up by); maps stitched; a frame's score is the max of its stitched map
    (so the score rule sees the frame, and nothing outside the regions of interest counts). Tile maps larger than
    the tiling's map side are max-pooled to it first: a coarser map never loses a defect's peak."""
    tiles = tiling.cut(frames)
    positions = np.tile(np.arange(tiling.count), len(frames))
    maps = np.concatenate([run(tiles[i:i + limit], positions[i:i + limit])[1] for i in range(0, len(tiles), limit)])
    stitched = tiling.stitch(max_pool(maps, tiling.map_side or tiling.tile))
    return stitched.reshape(len(stitched), -1).max(axis=1), stitched


def shared_memory_bound(max_count: int, prototype_limit: int) -> int:
    """The most prototypes a tiled changeover keeps: the kind's own bank bound, else the most its query graph takes
    (every tile of every support frame pooled would grow with the frame: bounded, changeover and query time stay
    bounded whatever the frame size). One rule for the runtime, export's threshold and `packd eval --tile`."""
    return max_count or prototype_limit


def tiled_support(tiling: Tiling, run: Callable[[np.ndarray], list[np.ndarray]], frames: np.ndarray,
                  limit: int, bound: int) -> list[np.ndarray]:
    """The shared memory of k normal frames: `run(tiles) -> prototype arrays` over every frame's tiles in batches
    of at most `limit`, pooled and bounded to `bound` rows by greedy coreset (see `shared_memory_bound`)."""
    tiles = tiling.cut(frames)
    parts = [run(tiles[i:i + limit]) for i in range(0, len(tiles), limit)]
    return bound_prototypes([np.concatenate(arrays) for arrays in zip(*parts)], bound)


def position_support(tiling: Tiling, run: Callable[[np.ndarray], list[np.ndarray]], frames: np.ndarray,
                     limit: int, bound: int) -> list[np.ndarray]:
    """A per-position memory of k normal frames: for each tile position, `run(tiles) -> prototype arrays` on the
    k frames' tiles at that position (in batches of at most `limit`), bounded to `bound` rows by greedy coreset;
    stacked, (positions, n, C_i) per prototype tensor. A changeover runs one support call per position."""
    s = tiling.tile
    tiles = tiling.cut(frames).reshape(len(frames), tiling.count, s, s, frames.shape[-1])
    banks = []
    for i in range(tiling.count):
        parts = [run(np.ascontiguousarray(tiles[j:j + limit, i])) for j in range(0, len(frames), limit)]
        banks.append(bound_prototypes([np.concatenate(arrays) for arrays in zip(*parts)], bound))
    return [np.stack(stage) for stage in zip(*banks)]
