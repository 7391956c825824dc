"""Distillation losses."""

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
