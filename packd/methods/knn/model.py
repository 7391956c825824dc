"""Training-free PatchCore-style few-shot detector: nearest-neighbour distance to the support patches.

Features: teacher stages 2 and 3, each averaged over 3x3 neighbourhoods (PatchCore's local
aggregation), stage 3 upsampled to stage 2 and concatenated. The memory bank is every patch of
the (rotated) supports: this model's "prototypes". The distance map goes through the shared
`AnomalyMap` (same upsampling, blur and max as the other kinds).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from packd.layers import rotate_supports


class NearestNeighbour(nn.Module):
    """prototypes(supports) -> [bank (n, D)]; distances(x, [bank]) -> [distance map (B,h,w)]."""

    def __init__(self, teacher: nn.Module, rotations: int = 4):
        super().__init__()
        self.teacher, self.rotations = teacher, rotations

    @property
    def prototype_channels(self) -> tuple[int, ...]:
        return (self.teacher.channels[1] + self.teacher.channels[2],)

    def prototypes_per_shot(self, image_size: int) -> int:
        """Bank entries from one support image: rotations x stage-2 patches."""
        return self.rotations * (image_size // 8) ** 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, f2, f3 = self.teacher(x)
        f2 = F.avg_pool2d(f2, 3, 1, 1)
        f3 = F.interpolate(F.avg_pool2d(f3, 3, 1, 1), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f2, f3], dim=1)

    @torch.no_grad()
    def prototypes(self, supports: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(rotate_supports(supports, self.rotations))
        return [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])]

    @torch.no_grad()
    def distances(self, x: torch.Tensor, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        f = self.features(x)
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(b, h * w, d)
        bank = prototypes[0]
        sq = (q * q).sum(-1, keepdim=True) - 2 * q @ bank.t() + (bank * bank).sum(-1)  # (B,HW,n)
        return [sq.amin(dim=-1).clamp_min(0).sqrt().view(b, h, w)]
