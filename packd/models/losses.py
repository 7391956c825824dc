"""Losses the distillation methods share: RD's KD loss and the orthogonality loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
    """RD's loss: per stage 1 - cos between the WHOLE flattened teacher and student maps of each
    sample (not per pixel, which scores worse), batch mean, summed over stages."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student):
        total = total + (1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)).mean()
    return total


def orthogonality_loss(vectors: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine of each set of vectors (..., L, C): zero when orthogonal."""
    v = F.normalize(vectors.float(), dim=-1)
    gram = v @ v.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    n = gram.shape[-1]
    return ((gram - eye) ** 2).sum(dim=(-1, -2)).mean() / max(n * (n - 1), 1)
