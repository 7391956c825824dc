"""Training-free nearest-neighbour few-shot detector: distance of every query patch to the nearest
patch of the (rotated) supports, the field's strongest few-shot family.

Features: for CNN teachers PatchCore's choice (stages 2 and 3, each averaged over 3x3
neighbourhoods, stage 3 upsampled to stage 2 and concatenated); for ViT teachers AnomalyDINO's
(the last block's patch tokens, e.g. DINOv2 ViT-S/14). The memory bank is every patch of the
rotated supports: this model's "prototypes", one (n, D) tensor. Distance: cosine (1 - the highest
cosine similarity: one matmul and a max, stable in FP16 too) or L2. Both are computed in FP32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from packd.models.layers import rotate_supports


class NearestNeighbour(nn.Module):
    """prototypes(supports) -> [bank (n, D)]; distances(x, [bank]) -> [distance map (B,h,w)]; a bank (B, n, D) gives
    each image its own."""

    def __init__(self, teacher: nn.Module, rotations: int = 4, distance: str = "cosine", score: str = "max",
                 max_bank: int = 0):
        super().__init__()
        self.teacher, self.rotations, self.distance = teacher, rotations, distance
        self.image_score = score  # read by the Scorer: "max" of the blurred map or "top1" (mean of the top 1 %)
        self.max_prototypes = max_bank  # 0: keep every support patch; else a greedy coreset of this size
        self.stride = teacher.size_multiple if teacher.vit else 8

    @property
    def prototype_channels(self) -> tuple[int, ...]:
        return (self.teacher.channels[0] if self.teacher.vit else self.teacher.channels[1] + self.teacher.channels[2],)

    def prototypes_per_shot(self, image_size: int) -> int:
        """Bank entries from one support image: rotations x patches."""
        return self.rotations * (image_size // self.stride) ** 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> (B,D,h,w) patch features, L2-normalised for the cosine distance; FP32."""
        if self.teacher.vit:
            f = self.teacher(x)[0].float()
        else:
            _, f2, f3 = self.teacher(x)
            f2 = F.avg_pool2d(f2.float(), 3, 1, 1)
            f3 = F.interpolate(F.avg_pool2d(f3.float(), 3, 1, 1), size=f2.shape[-2:], mode="bilinear",
                               align_corners=False)
            f = torch.cat([f2, f3], dim=1)
        return F.normalize(f, dim=1) if self.distance == "cosine" else f

    @torch.no_grad()
    def prototypes(self, supports: torch.Tensor) -> list[torch.Tensor]:
        f = self.features(rotate_supports(supports, self.rotations))
        return [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])]

    @torch.no_grad()
    def distances(self, x: torch.Tensor, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        f = self.features(x)
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(b, h * w, d)
        bank = prototypes[0].float()  # (n, D), or (B, n, D): one bank per image (a per-position tiled memory)
        if self.distance == "cosine":
            dist = 1.0 - (q @ bank.transpose(-1, -2)).amax(dim=-1)
        else:
            sq = (q * q).sum(-1, keepdim=True) - 2 * q @ bank.transpose(-1, -2) + (bank * bank).sum(-1).unsqueeze(-2)
            dist = sq.amin(dim=-1).clamp_min(0).sqrt()  # (B,HW)
        return [dist.view(b, h, w)]
