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

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

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
        if self.map_side is not None:  # a region thinner than a map pixel would never be scored: nothing flagged
            scale = self.map_side / s
            for y, x, rh, rw in rois:
                if round(y * scale) >= round((y + rh) * scale) or round(x * scale) >= round((x + rw) * scale):
                    raise PackdError(f"--roi {y},{x},{rh},{rw} covers no pixel of the stitched map at {scale:g} of the "
                                     "frame's resolution: nothing in it could ever be flagged; use a larger "
                                     "--map-scale or region")
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
