"""The line-resolution options `packd-export` and `packd eval --tile` share: one set of names, help texts, parsers
and checks, so a tiled evaluation describes exactly the tiling a bundle exported with the same options runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from packd.errors import PackdError
from packd_runtime.bundle_format import MEMORIES
from packd_runtime.manifest import TilingSpec
from packd_runtime.tiling import Box, Tiling

DEFAULT_MAX_SHOTS = 8  # export's --max-shots default: the support batch and prototype limit of a default bundle
FRAME_SIZE_HELP = "Camera frame size HxW the graphs take (resized inside)."
TILE_HELP = ("Line-resolution frames: cut each --frame-size frame into tiles of this many pixels (the model sees each "
             "tile at its input size) and stitch their maps into one map per frame.")
OVERLAP_HELP = "Pixels by which neighbouring tiles overlap (less than --tile)."
ROI_HELP = ("Region of interest Y,X,H,W in frame pixels (repeat for several): only these are inspected, nothing "
            "outside is ever flagged.")
MEMORY_HELP = ("Few-shot kinds' memory of tiled frames: shared (every tile's prototypes pooled: textures, parts at any "
               "position) or position (each tile position its own, from the same position of the support frames: "
               "aligned parts; a smaller search per tile).")
MAP_SCALE_HELP = ("Stitched maps at this fraction of the frame's resolution (tile maps max-pooled, so no defect's peak "
                  "is lost): less to copy back per frame.")


def parse_frame_size(text: str | None) -> tuple[int, int] | None:
    """'480x640' -> (480, 640); None stays None."""
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PackdError(f"--frame-size must look like 480x640 (height x width), got {text!r}") from None
    if h < 1 or w < 1:
        raise PackdError(f"--frame-size must be positive, got {text!r}")
    return h, w


def parse_roi(text: str) -> Box:
    """'Y,X,H,W' -> (y, x, h, w) in frame pixels."""
    try:
        if not text.isascii():
            raise ValueError
        y, x, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise PackdError(f"--roi must look like Y,X,H,W (four whole numbers of frame pixels), got {text!r}") from None
    return y, x, h, w


def map_side(tile: int, map_scale: float | None, image_size: int) -> int:
    """The side at which a tile's map is stitched: `map_scale` of the tile, a divisor of the model's input size
    (tile maps are max-pooled to it); default the model's input size."""
    if map_scale is None:
        return image_size
    side = round(tile * map_scale) if math.isfinite(map_scale) else 0
    if not 0 < map_scale <= 1 or abs(tile * map_scale - side) > 1e-6 or side < 1 or image_size % side:
        valid = sorted({f"{d / tile:g}" for d in range(1, image_size + 1) if image_size % d == 0 and d <= tile})
        raise PackdError(f"--map-scale {map_scale:g} must give a whole map side per {tile}-px tile that divides the "
                         f"model's input size {image_size}: one of {', '.join(valid)}")
    return side


@dataclass(frozen=True)
class TileOptions:
    """The tiling options of `packd-export` and `packd eval --tile`, checked when made (before any work). The frame
    size: export's --frame-size; eval's defaults to each category's own image size."""

    tile: int
    overlap: int = 0
    rois: tuple[Box, ...] = ()
    map_scale: float | None = None
    frame_size: tuple[int, int] | None = None
    memory: str = "shared"  # few-shot kinds: one memory pooled over every tile position, or one per position

    def __post_init__(self) -> None:
        if self.map_scale is not None and not math.isfinite(self.map_scale):
            raise PackdError(f"--map-scale must be a finite fraction such as 0.5, got {self.map_scale}")
        if self.frame_size is not None:
            Tiling(tuple(self.frame_size), tile=self.tile, overlap=self.overlap, rois=tuple(self.rois))
        if self.memory not in MEMORIES:
            raise PackdError(f"--memory must be one of {', '.join(MEMORIES)}, got {self.memory!r}")

    def spec(self, image_size: int, few_shot: bool, native_hw: tuple[int, int] | None = None) -> TilingSpec:
        """The tiling a model of `image_size` px runs on frames of `frame_size` (else of `native_hw`), and its
        memory (few-shot kinds only)."""
        if self.memory == "position" and not few_shot:
            raise PackdError("--memory position is a few-shot kind's memory; this model keeps none")
        frame_hw = tuple(self.frame_size or native_hw)
        tiling = Tiling(frame_hw, tile=self.tile, overlap=self.overlap, rois=tuple(self.rois),
                        map_side=map_side(self.tile, self.map_scale, image_size))
        return TilingSpec(tiling, self.memory if few_shot else None)

    def to_dict(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap, "rois": [list(r) for r in self.rois],
                "map_scale": self.map_scale, "frame_size": list(self.frame_size) if self.frame_size else None,
                "memory": self.memory}


def tile_options(tile: int | None, overlap: int = 0, rois: tuple[Box, ...] = (), map_scale: float | None = None,
                 frame_size: tuple[int, int] | None = None, memory: str = "shared") -> TileOptions | None:
    """The command line's tiling options, checked once where they enter: None without --tile, when none of the
    options that describe a tiling may be given."""
    if tile is None:
        if overlap or rois or map_scale is not None:
            raise PackdError("--overlap, --roi and --map-scale need --tile S")
        if memory != "shared":
            raise PackdError("--memory position describes a tiled export or evaluation: add --tile S")
        return None
    return TileOptions(tile, overlap, tuple(rois), map_scale, frame_size, memory)


def untiled_warning(config: dict, tiles: TileOptions | None) -> str | None:
    """A checkpoint trained on tiles (`packd train --tile`), used without --tile: its model learned tiles at its
    input size, and a whole frame resized to that size looks nothing like one (the line to print, or None)."""
    trained = config.get("train", {}).get("tile")
    if tiles is not None or not trained:
        return None
    return (f"warning: this checkpoint was trained on {trained} px tiles (packd train --tile {trained}) but is used "
            f"on whole frames resized to its input: add --tile {trained} and --frame-size HxW (the camera's frame)")
