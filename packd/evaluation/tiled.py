"""PyTorch evaluation of line-resolution frames (`packd eval --tile`): the runtime's own graph pipeline
(`packd_runtime.pipeline.Pipeline`: cutting, the few-shot memory and its bound, `tile_index`, stitching) with the
model in PyTorch where a bundle runs its graphs (`torch_graphs`, a small adapter). So a tiled evaluation computes what
a bundle exported with the same options computes, by construction, and the accuracy tables can be made tiled
without exporting. The memory is bounded as a bundle of the default --max-shots bounds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from packd.data.datasets import Sample
from packd.data.preprocess import Preprocess, image_hw, load_frames, mask_at
from packd.device import pick_device
from packd.errors import PackdError
from packd.evaluation.tiling_options import DEFAULT_MAX_SHOTS, TileOptions
from packd.models.scoring import Scorer
from packd.progress import LogProgress
from packd_runtime.bundle_format import IMAGES, MAPS, SCORES, SUPPORT, TILE_INDEX
from packd_runtime.manifest import Limits, TilingSpec
from packd_runtime.pipeline import Pipeline, Run

FRAME_BYTES = 1 << 27  # frames decoded at once: at most about 128 MB of them (a 5 MP frame is 15 MB)


def torch_graphs(scorer: Scorer, device: torch.device) -> Run:
    """The bundle's two graphs computed by the PyTorch model, as a `Pipeline` runs them: support images ->
    prototypes by name; query images (+ prototypes, + a per-position memory's `tile_index`) -> scores and maps."""
    preprocess = Preprocess(scorer.spec).to(device)
    names = scorer.prototype_names if scorer.few_shot else []

    @torch.no_grad()
    def run(graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        x = preprocess(torch.from_numpy(np.ascontiguousarray(feeds[IMAGES])).to(device))
        if graph == SUPPORT:
            return {n: p.float().cpu().numpy() for n, p in zip(names, scorer.model.prototypes(x))}
        protos = [torch.from_numpy(feeds[n]).to(device) for n in names] or None
        if TILE_INDEX in feeds:  # (B, n, C_i): each tile its position's memory
            index = torch.from_numpy(feeds[TILE_INDEX]).to(device)
            protos = [p[index] for p in protos]
        scores, maps = scorer(x, protos)
        return {SCORES: scores.cpu().numpy(), MAPS: maps.cpu().numpy()}

    return run


@dataclass
class TiledScorer:
    """A Scorer run over the tiles of whole frames: `prototypes(samples)` at a changeover, `predict(samples,
    prototypes)` per category, through the runtime's pipeline as a tiled bundle of the same model and tiling."""

    scorer: Scorer
    spec: TilingSpec
    batch_size: int = 16  # tiles per forward pass
    device: str = "auto"

    def __post_init__(self) -> None:
        self.dev = pick_device(self.device)
        self.scorer.to(self.dev).eval()
        few_shot = self.scorer.few_shot
        limits = Limits(self.batch_size, DEFAULT_MAX_SHOTS if few_shot else 0,
                        self.scorer.prototype_limit(DEFAULT_MAX_SHOTS) if few_shot else 0)
        self.pipeline = Pipeline(torch_graphs(self.scorer, self.dev), limits,
                                 tuple(self.scorer.prototype_names) if few_shot else (), self.scorer.max_prototypes,
                                 self.spec)
        self.tiling = self.spec.tiling  # the geometry
        self.frame_hw = self.tiling.frame_hw

    def _frames(self, samples: list[Sample]) -> np.ndarray:
        return load_frames([s.path for s in samples], self.frame_hw)

    def _chunks(self, samples: list[Sample]) -> list[list[Sample]]:
        per = max(1, FRAME_BYTES // (3 * self.frame_hw[0] * self.frame_hw[1]))
        return [samples[i:i + per] for i in range(0, len(samples), per)]

    def prototypes(self, samples: list[Sample]) -> list[torch.Tensor]:
        """The memory of k normal frames (few-shot kinds): shared, (n, C_i) per prototype tensor; per position,
        (P, n, C_i): position p's from the k frames' tiles at p."""
        return [torch.from_numpy(a) for a in self.pipeline.prototypes(self._frames(samples))]

    def predict(self, samples: list[Sample], prototypes: list[torch.Tensor] | None = None,
                progress: Progress | LogProgress | None = None) -> dict[str, np.ndarray]:
        """Scores (N,), stitched maps (N, *map_hw), masks (N, *map_hw) and labels (N,), as `evaluate.predict`."""
        task = progress.add_task("predict", total=len(samples)) if progress else None
        arrays = [p.cpu().numpy() for p in prototypes] if prototypes else None
        scores, maps = [], []
        for chunk in self._chunks(samples):
            chunk_scores, chunk_maps = self.pipeline.score(self._frames(chunk), arrays)
            scores.append(chunk_scores)
            maps.append(chunk_maps)
            if progress is not None:
                progress.update(task, advance=len(chunk))
        return {"scores": np.concatenate(scores), "maps": np.concatenate(maps),
                "masks": np.stack([mask_at(x.mask, x.path, self.tiling.map_hw) for x in samples]),
                "labels": np.array([s.label for s in samples])}

    def describe(self) -> dict:
        """What a report records of a category's tiling."""
        t = self.tiling
        return {"frame": list(t.frame_hw), "tiles": t.count, "map": list(t.map_hw)}

    def overlay_image(self, sample: Sample) -> np.ndarray:
        """The frame as an overlay shows it: at the stitched map's size."""
        return load_frames([sample.path], self.tiling.map_hw)[0]

    def overlay_rois(self) -> list[tuple[int, int, int, int]]:
        """The regions of interest in the overlay's pixels (none: the whole frame is inspected)."""
        t = self.tiling
        scale = t.map_hw[0] / t.frame_hw[0]
        return [tuple(round(v * scale) for v in r) for r in t.rois]


def tiled_for(scorer: Scorer, options: TileOptions | None, samples: list[Sample], *, batch_size: int,
              device: str) -> TiledScorer | None:
    """The TiledScorer of `options` for a category whose images are `samples` (None: no tiling)."""
    if options is None:
        return None
    native = None
    if options.frame_size is None:  # each category's own frame size: one for all its images, or one line
        sizes = sorted({image_hw(s.path) for s in samples})
        if len(sizes) > 1:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4])
            raise PackdError(f"the images of one category ({samples[0].path.parent}, ...) have {len(sizes)} sizes "
                             f"({shown}): a tiling is for one frame size; pass --frame-size HxW to resize them to one")
        native = sizes[0]
    spec = options.spec(scorer.spec.image_size, scorer.few_shot, native)
    return TiledScorer(scorer, spec, batch_size, device)
