"""Reverse Distillation (Deng & Li, CVPR 2022): frozen teacher -> one-class bottleneck -> student
decoder mirroring the teacher. A pure module; its loss and training live in `training.py`."""

from __future__ import annotations

import torch
from torch import nn

from packd.models.layers import OCBE, decoder_stages
from packd.models.scoring import cosine_distances
from packd.models.student_plan import ChannelPlan


class ReverseDistillation(nn.Module):
    """forward(normalised images) -> (teacher maps, student maps), both in teacher order."""

    def __init__(self, teacher: nn.Module, plan: ChannelPlan):
        super().__init__()
        self.teacher = teacher
        self.plan = plan
        self.ocbe = OCBE(plan)
        self.stages = decoder_stages(plan, self.ocbe.out_channels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.decode(t)

    def decode(self, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student maps (teacher order) from the teacher maps: training feeds cached teacher maps here."""
        z, outs = self.ocbe(teacher_feats), []
        for stage in self.stages:
            z = stage(z)
            outs.append(z)
        return outs[::-1]

    def distances(self, x: torch.Tensor, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage 1 - cos(teacher, student); RD takes no prototypes."""
        return cosine_distances(*self(x))
