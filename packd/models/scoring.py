"""Anomaly map and image score from teacher/student maps: the one scoring path for eval and export.

Per stage 1 - cos over channels, bilinear upsample to the input size, sum over stages, Gaussian
blur (sigma 4, 33 taps, separable, mirror padding) inside the module; image score = max of the map.
Always computed in FP32, whatever precision the features come in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's kernel: radius int(truncate*sigma+0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


class AnomalyMap(nn.Module):
    """(teacher maps, student maps) -> (scores (B,), maps (B,S,S)), FP32."""

    def __init__(self, image_size: int, sigma: float = 4.0):
        super().__init__()
        self.image_size = image_size
        k = gaussian_kernel1d(sigma)
        self.radius = (k.numel() - 1) // 2
        if image_size <= self.radius:
            raise ValueError(f"image size {image_size} must exceed the blur radius {self.radius}")
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_distances([1.0 - F.cosine_similarity(t.float(), s.float(), dim=1, eps=1e-8)
                                    for t, s in zip(teacher, student)])

    def from_distances(self, distances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-stage distance maps (B,h,w) -> upsampled, summed, blurred map and its max."""
        size = (self.image_size, self.image_size)
        total = None
        for d in distances:
            d = F.interpolate(d.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            total = d if total is None else total + d
        maps = self.blur(total)[:, 0]
        return maps.flatten(1).amax(dim=1), maps

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian on (B,1,H,W) with mirror padding (scipy's mode='mirror')."""
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), self.kx)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), self.ky)

