"""Anomaly maps and image scores: the one scoring path for training-side evaluation and export.

Every model kind turns an image into per-stage distance maps (`distances`); `AnomalyMap` upsamples
them bilinearly to the input size, sums them with per-stage weights, blurs the sum (Gaussian
sigma 4, 33 taps, separable, mirror padding) and takes the max over the image, less an optional
border (where zero-padded teacher features put spurious maxima), as the image score, always in
FP32. `Scorer` puts any kind behind one interface: `prototypes(supports)` once per product,
`forward(x, prototypes)` per image. The exported query graph wraps the same `Scorer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.models.score_settings import ScoreSettings, check_border, parse_weights
from packd_runtime.bundle_format import prototype_names
from packd_runtime.coreset import bound_prototypes


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's kernel: radius int(truncate*sigma+0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def cosine_distances(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per stage 1 - cosine over channels of teacher and student maps -> (B,h,w), FP32."""
    return [1.0 - F.cosine_similarity(t.float(), s.float(), dim=1, eps=1e-8) for t, s in zip(teacher, student)]


class AnomalyMap(nn.Module):
    """Per-stage distance maps -> (scores (B,), maps (B,S,S)), FP32. Image score: "max" of the blurred
    map inside `border`, or "top1": the mean of the top 1 % of the first distance map's patches (AnomalyDINO's).
    `weights` (one per stage, default equal) weight the stage maps in the sum."""

    def __init__(self, image_size: int, sigma: float = 4.0, score: str = "max",
                 weights: tuple[float, ...] | None = None, border: int = 0):
        super().__init__()
        if score not in ("max", "top1"):
            raise ValueError(f"unknown image score {score!r}")
        check_border(border, image_size)
        self.image_size, self.score, self.border = image_size, score, border
        self.weights = tuple(weights) if weights else None
        k = gaussian_kernel1d(sigma)
        self.radius = (k.numel() - 1) // 2
        if image_size <= self.radius:
            raise ValueError(f"image size {image_size} must exceed the blur radius {self.radius}")
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, distances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-stage distance maps (B,h,w) -> upsampled, weighted, summed, blurred map and its max."""
        if self.weights is not None and len(self.weights) != len(distances):
            raise PackdError(f"{len(self.weights)} stage weights for {len(distances)} stage maps")
        size = (self.image_size, self.image_size)
        total = None
        for i, d in enumerate(distances):
            d = F.interpolate(d.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            if self.weights is not None and self.weights[i] != 1:
                d = d * self.weights[i]
            total = d if total is None else total + d
        maps = self.blur(total)[:, 0]
        if self.score == "max":
            b = self.border
            inner = maps[:, b:self.image_size - b, b:self.image_size - b] if b else maps
            return inner.flatten(1).amax(dim=1), maps
        patches = distances[0].float().flatten(1)
        k = max(1, round(0.01 * patches.shape[1]))
        return patches.topk(k, dim=1).values.mean(dim=1), maps

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian on (B,1,H,W) with mirror padding (scipy's mode='mirror')."""
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kx)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.ky)


class Scorer(nn.Module):
    """Any model kind behind one interface: `prototypes(supports)` once per product (few-shot kinds),
    `forward(x, prototypes)` per batch -> (scores, maps). Kinds without a support path take no prototypes.

    A model provides `distances(x, prototypes) -> list of (B,h,w)`; a few-shot model also
    `prototypes(supports) -> list of (n, C_i)` and `prototype_channels` (C_i per prototype tensor).
    Optional: `image_score` ("max" or "top1") and `max_prototypes` (a bank bound applied after the
    support path with the runtime's own coreset function, so evaluation and deployment agree).
    `scoring` (the distillation kinds' settings) weights the stage maps and sets the border.
    """

    def __init__(self, model: nn.Module, spec: InputSpec, few_shot: bool, scoring: ScoreSettings | None = None):
        super().__init__()
        self.model, self.spec, self.few_shot = model, spec, few_shot
        self.max_prototypes = getattr(model, "max_prototypes", 0)
        weights = parse_weights(scoring.stage_weights) if scoring else None
        self.anomaly_map = AnomalyMap(spec.image_size, score=getattr(model, "image_score", "max"),
                                      weights=None if weights and set(weights) == {1.0} else weights,
                                      border=scoring.border if scoring else 0)

    @property
    def prototype_names(self) -> list[str]:
        """Graph names of the prototype tensors (the bundle format's `prototype_names`)."""
        return prototype_names(len(self.model.prototype_channels)) if self.few_shot else []

    def prototype_limit(self, max_shots: int) -> int:
        """The most prototypes a query graph exported for `max_shots` support images takes (the bank bound caps
        it): the bundle's limit, and the bound of a tiled changeover's shared memory."""
        per_shot = self.model.prototypes_per_shot(self.spec.image_size) if self.few_shot else 0
        most = max_shots * per_shot if not self.max_prototypes else min(max_shots * per_shot, self.max_prototypes)
        return max(most, 1)

    @torch.no_grad()
    def prototypes(self, supports: torch.Tensor) -> list[torch.Tensor]:
        if not self.few_shot:
            return []
        if supports.shape[0] == 0:
            raise PackdError("empty support set: give at least one normal image")
        protos = self.model.prototypes(supports)
        if self.max_prototypes:
            protos = [torch.from_numpy(a).to(p.device) for a, p in
                      zip(bound_prototypes([p.cpu().numpy() for p in protos], self.max_prototypes), protos)]
        return protos

    def forward(self, x: torch.Tensor, prototypes: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.few_shot and not prototypes:
            raise PackdError("this few-shot model needs prototypes: compute them from the support images first")
        return self.anomaly_map(self.model.distances(x, prototypes or []))
