"""PyTorch evaluation of line-resolution frames (`packd eval --tile`): the frames at the camera's size, cut, scored
and stitched by the runtime's own `packd_runtime.tiling` functions, with the model in PyTorch where a bundle runs its
graphs. So a tiled evaluation measures what a bundle exported with the same options computes (tested to equal it),
and the accuracy tables can be made tiled without exporting.

Few-shot memory as in a tiled bundle: shared (every tile of the k support frames, taken as a default bundle's support
graph takes them, `DEFAULT_MAX_SHOTS` tiles at a time, pooled and bounded by `shared_memory_bound`), or per position
(each tile position keeps the prototypes of the k support frames' tiles there, and each query tile is scored against
its own position's only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from packd.data import Sample
from packd.device import pick_device
from packd.errors import PackdError
from packd.preprocess import Preprocess, load_frames, load_mask
from packd.progress import LogProgress
from packd.scoring import Scorer
from packd.tiling_options import DEFAULT_MAX_SHOTS, TileOptions
from packd_runtime.tiling import Tiling, position_support, shared_memory_bound, tiled_query, tiled_support

FRAME_BYTES = 1 << 27  # frames decoded at once: at most about 128 MB of them (a 5 MP frame is 15 MB)


def native_frame_hw(sample: Sample) -> tuple[int, int]:
    """An image's (height, width), from its header."""
    try:
        with Image.open(sample.path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise PackdError(f"cannot read image {sample.path}: {e}") from None


def _resized(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(hw):
        return mask
    return np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))


@dataclass
class TiledScorer:
    """A Scorer run over the tiles of whole frames: `prototypes(samples)` at a changeover, `predict(samples,
    prototypes)` per category, both as a tiled bundle of the same model and tiling computes them."""

    scorer: Scorer
    tiling: Tiling
    batch_size: int = 16  # tiles per forward pass
    device: str = "auto"
    memory: str = "shared"  # or "position": each tile position its own memory, stacked (P, n, C)

    def __post_init__(self) -> None:
        self.dev = pick_device(self.device)
        self.scorer.to(self.dev).eval()
        self.preprocess = Preprocess(self.scorer.spec).to(self.dev)

    def _frames(self, samples: list[Sample]) -> np.ndarray:
        return load_frames([s.path for s in samples], self.tiling.frame_hw)

    def _chunks(self, samples: list[Sample]) -> list[list[Sample]]:
        per = max(1, FRAME_BYTES // (3 * self.tiling.frame_hw[0] * self.tiling.frame_hw[1]))
        return [samples[i:i + per] for i in range(0, len(samples), per)]

    def _input(self, tiles: np.ndarray) -> torch.Tensor:
        return self.preprocess(torch.from_numpy(np.ascontiguousarray(tiles)).to(self.dev))

    def _support(self, tiles: np.ndarray) -> list[np.ndarray]:
        return [p.float().cpu().numpy() for p in self.scorer.model.prototypes(self._input(tiles))]

    @torch.no_grad()
    def prototypes(self, samples: list[Sample]) -> list[torch.Tensor]:
        """The memory of k normal frames (few-shot kinds): shared, (n, C_i) per prototype tensor; per position,
        (P, n, C_i): position p's from the k frames' tiles at p. Bounded by one rule (`shared_memory_bound`)."""
        bound = shared_memory_bound(self.scorer.max_prototypes, self.scorer.prototype_limit(DEFAULT_MAX_SHOTS))
        frames = self._frames(samples)
        make = tiled_support if self.memory == "shared" else position_support
        arrays = make(self.tiling, self._support, frames, DEFAULT_MAX_SHOTS, bound=bound)
        return [torch.from_numpy(a).to(self.dev) for a in arrays]

    @torch.no_grad()
    def predict(self, samples: list[Sample], prototypes: list[torch.Tensor] | None = None,
                progress: Progress | LogProgress | None = None) -> dict[str, np.ndarray]:
        """Scores (N,), stitched maps (N, *map_hw), masks (N, *map_hw) and labels (N,), as `evaluate.predict`."""
        task = progress.add_task("predict", total=len(samples)) if progress else None

        def run(tiles: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            protos = prototypes
            if self.memory == "position" and prototypes:
                index = torch.from_numpy(positions).to(self.dev)
                protos = [p[index] for p in prototypes]  # (B, n, C_i): each tile its position's memory
            s, m = self.scorer(self._input(tiles), protos)
            return s.cpu().numpy(), m.cpu().numpy()

        scores, maps = [], []
        for chunk in self._chunks(samples):
            chunk_scores, chunk_maps = tiled_query(self.tiling, run, self._frames(chunk), self.batch_size)
            scores.append(chunk_scores)
            maps.append(chunk_maps)
            if progress is not None:
                progress.update(task, advance=len(chunk))
        masks = [_resized(load_mask(x.mask, native_frame_hw(x)) if x.mask else np.zeros(self.tiling.frame_hw, bool),
                          self.tiling.frame_hw) for x in samples]
        return {"scores": np.concatenate(scores), "maps": np.concatenate(maps),
                "masks": np.stack([_resized(m, self.tiling.map_hw) for m in masks]),
                "labels": np.array([s.label for s in samples])}

    def describe(self) -> dict:
        """What a report records of a category's tiling."""
        return {"frame": list(self.tiling.frame_hw), "tiles": self.tiling.count, "map": list(self.tiling.map_hw)}

    def overlay_image(self, sample: Sample) -> np.ndarray:
        """The frame as an overlay shows it: at the stitched map's size."""
        return load_frames([sample.path], self.tiling.map_hw)[0]

    def overlay_rois(self) -> list[tuple[int, int, int, int]]:
        """The regions of interest in the overlay's pixels (none: the whole frame is inspected)."""
        scale = self.tiling.map_hw[0] / self.tiling.frame_hw[0]
        return [tuple(round(v * scale) for v in r) for r in self.tiling.rois]


def tiled_for(scorer: Scorer, options: TileOptions | None, samples: list[Sample], *, batch_size: int,
              device: str) -> TiledScorer | None:
    """The TiledScorer of `options` for a category whose images are `samples` (None: no tiling)."""
    if options is None:
        return None
    if options.memory == "position" and not scorer.few_shot:
        raise PackdError("--memory position is a few-shot kind's memory; this model keeps none")
    return TiledScorer(scorer, options.tiling(scorer.spec.image_size, native_frame_hw(samples[0])), batch_size, device,
                       options.memory)
