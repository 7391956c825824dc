"""MemKD (Gu et al., ICCV 2023): Reverse Distillation with a normality recall (NR) memory.

Only the abstract is public and no official code exists; the decisions (docs/kinds/memkd.md):
- one memory per decoder stage, L slots (default 50) of learnable keys and values (registered
  parameters, so they train and are saved);
- recall: every student location is a query; softmax over its cosine similarity to the keys,
  scaled by 1/temperature (0.1: a plain softmax over cosines in [-1, 1] with 50 slots is
  almost uniform), weights the values; [student, recalled] goes to the next decoder stage;
- after the last stage the recall feeds the same residual refinement as PACKD's last stage.
The normality embedding losses are in `training.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from packd.models.layers import OCBE, Refine, decoder_stages
from packd.models.scoring import cosine_distances
from packd.models.student_plan import ChannelPlan


class NRMemory(nn.Module):
    """L learnable key/value slots of C channels; recall((B,C,H,W)) -> (B,C,H,W) of stored normal features."""

    def __init__(self, channels: int, slots: int = 50, temperature: float = 0.1):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, channels) / channels ** 0.5)
        self.values = nn.Parameter(torch.randn(slots, channels) / channels ** 0.5)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = F.normalize(x.flatten(2).transpose(1, 2), dim=-1)  # (B,HW,C)
        attn = (q @ F.normalize(self.keys, dim=-1).t() / self.temperature).softmax(dim=-1)
        return (attn @ self.values.to(attn.dtype)).transpose(1, 2).reshape(b, c, h, w)


class MemKD(nn.Module):
    """Teacher -> OCBE -> decoder with an NR memory after every stage. forward(x) -> (teacher, student)."""

    def __init__(self, teacher: nn.Module, plan: ChannelPlan, slots: int = 50, temperature: float = 0.1):
        super().__init__()
        self.teacher, self.plan = teacher, plan
        c1, c2, c3 = plan.channels
        self.ocbe = OCBE(plan)
        self.stages = decoder_stages(plan, self.ocbe.out_channels, widen=lambda c: 2 * c)
        # memories in decoder order: stride 16 (c3), 8 (c2), 4 (c1)
        self.memories = nn.ModuleList(NRMemory(c, slots, temperature) for c in (c3, c2, c1))
        self.refine = Refine(c1, 2 * c1, plan.norm)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.decode(t)

    def decode(self, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student maps (teacher order) from the teacher maps: training feeds cached teacher maps here."""
        z = self.ocbe(teacher_feats)
        outs = []
        for stage, memory in zip(self.stages, self.memories):
            z = stage(z)
            outs.append(z)
            z = torch.cat([z, memory(z)], dim=1)
        outs[-1] = self.refine(outs[-1], z)
        return outs[::-1]

    def distances(self, x: torch.Tensor, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage 1 - cos(teacher, student); MemKD takes no prototypes (its memory is learnt)."""
        return cosine_distances(*self(x))

    def memorisation_loss(self, exemplar_teacher: list[torch.Tensor]) -> torch.Tensor:
        """Recall the exemplars' teacher maps (teacher order) and compare, both L2-normalised (MSE)."""
        total = exemplar_teacher[0].new_zeros((), dtype=torch.float32)
        for memory, feats in zip(self.memories, exemplar_teacher[::-1]):
            recalled = memory(feats)
            total = total + F.mse_loss(F.normalize(recalled.float(), dim=1), F.normalize(feats.float(), dim=1))
        return total
