"""PACKD (Gu et al., BMVC 2023): Reverse Distillation with prototype extraction and integration (PEIM).

Two paths that share the frozen teacher and exchange nothing but prototypes, one plain tensor
per stage of shape (n, C_i):

- support path: k normal images -> rotations -> teacher -> per stage a 3x3 conv to L attention
  maps, softmax over positions, attention-weighted sums of the teacher features -> k*R*L
  prototypes (R rotations);
- query path: teacher -> OCBE -> decoder; after every decoder stage the student feature is
  integrated with that stage's prototypes: per location the most similar prototype (cosine) is
  the guide feature, the similarity averaged over prototypes is the probability map, and
  [student, guide, probability] goes on.

Beyond the paper (each validated on training categories, docs/kinds/packd.md, "PACKD: decisions"; `--preset paper`
turns them off): the nearest-prototype distance added to the KD map (`prototype_score`) and a
per-image normalisation in the student (`norm="group"`).

Resolved where the paper is silent (see docs/kinds/packd.md, "PACKD: decisions"):
- PEIM does not act on the bottleneck output: no teacher stage has its channels to make prototypes.
- After the last decoder stage (stride 4) the integration feeds a small residual refinement
  (3x3 conv-BN-ReLU, 1x1 conv) whose output is the stage-1 student map, so the stage-1
  prototypes guide the student too.
- The probability map is the MEAN of the similarities, not their sum: the sum grows with the
  number of prototypes, which changes with k between training and test.
The losses are in `losses.py`, episodic meta-training in `episodes.py` and `training.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from packd.models.layers import OCBE, Refine, decoder_stages, rotate_supports
from packd.models.scoring import cosine_distances
from packd.models.student_plan import ChannelPlan


class PrototypeExtractor(nn.Module):
    """PEIM extraction for one stage: (k,C,H,W) teacher maps -> (k,L,C) prototypes (Eq. 2)."""

    def __init__(self, channels: int, n_prototypes: int):
        super().__init__()
        self.attention = nn.Conv2d(channels, n_prototypes, 3, padding=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        weights = self.attention(feats).flatten(2).softmax(dim=-1)  # (k, L, HW)
        return weights @ feats.flatten(2).transpose(1, 2)


def integrate(student: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """PEIM integration (Eqs. 3-4): (B,C,H,W) student, (B,n,C) prototypes -> (B,2C+1,H,W)."""
    b, c, h, w = student.shape
    s = F.normalize(student.flatten(2).transpose(1, 2), dim=-1)  # (B, HW, C)
    sim = s @ F.normalize(prototypes, dim=-1).transpose(1, 2)  # (B, HW, n)
    idx = sim.argmax(dim=-1, keepdim=True).expand(-1, -1, c)
    guide = torch.gather(prototypes, 1, idx).transpose(1, 2).reshape(b, c, h, w)
    prob = sim.mean(dim=-1).reshape(b, 1, h, w)
    return torch.cat([student, guide.to(student.dtype), prob.to(student.dtype)], dim=1)


def prototype_distance(feats: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) teacher maps, (n,C) or per image (B,n,C) prototypes -> (B,h,w) 1 - the highest cosine to any
    prototype, FP32."""
    f = F.normalize(feats.float(), dim=1).flatten(2).transpose(1, 2)  # (B, hw, C)
    sim = f @ F.normalize(prototypes.float(), dim=-1).transpose(-1, -2)
    return (1.0 - sim.amax(dim=-1)).view(feats.shape[0], *feats.shape[2:])


def projection_head(channels: int) -> nn.Module:
    """CDS projection g_i (training only): 1x1 conv-BN-ReLU-1x1 conv."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1))


class PACKD(nn.Module):
    """Teacher, prototype extractors, OCBE, PEIM decoder and (training-only) projection heads."""

    def __init__(self, teacher: nn.Module, plan: ChannelPlan, n_prototypes: int = 20, rotations: int = 4,
                 prototype_score: float = 0.0):
        super().__init__()
        self.teacher, self.plan = teacher, plan
        self.n_prototypes, self.rotations, self.prototype_score = n_prototypes, rotations, prototype_score
        c1 = plan.channels[0]
        self.extractors = nn.ModuleList(PrototypeExtractor(c, n_prototypes) for c in plan.channels)
        self.ocbe = OCBE(plan)
        self.stages = decoder_stages(plan, self.ocbe.out_channels, widen=lambda c: 2 * c + 1)
        self.refine = Refine(c1, 2 * c1 + 1, plan.norm)
        self.projections = nn.ModuleList(projection_head(c) for c in plan.channels)

    @property
    def prototype_channels(self) -> tuple[int, ...]:
        return tuple(self.plan.channels)

    def prototypes_per_shot(self, image_size: int) -> int:
        """Prototypes per stage from one support image: rotations x L."""
        return self.rotations * self.n_prototypes

    def extract(self, teacher_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Teacher maps of (rotated) supports -> per stage and image its L prototypes (k*R, L, C_i)."""
        return [ext(f) for ext, f in zip(self.extractors, teacher_feats)]

    @torch.no_grad()
    def support_teacher(self, supports: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(rotate_supports(supports, self.rotations))

    def prototypes(self, supports: torch.Tensor) -> list[torch.Tensor]:
        """Support path: k normalised images (k,3,S,S) -> per stage prototypes (k*R*L, C_i)."""
        return [p.flatten(0, 1) for p in self.extract(self.support_teacher(supports))]

    def decode(self, teacher_feats: list[torch.Tensor], prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student maps (teacher order) given teacher maps and per-sample prototypes (B,n,C_i)."""
        z = self.ocbe(teacher_feats)
        outs = []
        for stage, protos in zip(self.stages, prototypes[::-1]):
            z = stage(z)
            outs.append(z)
            z = integrate(z, protos)
        outs[-1] = self.refine(outs[-1], z)
        return outs[::-1]

    def forward(self, x: torch.Tensor, prototypes: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Query path: normalised images (B,3,S,S), prototypes (n,C_i) or (B,n,C_i) -> (teacher, student)."""
        with torch.no_grad():
            t = self.teacher(x)
        b = x.shape[0]
        protos = [p.unsqueeze(0).expand(b, -1, -1) if p.dim() == 2 else p for p in prototypes]
        return t, self.decode(t, protos)

    def distances(self, x: torch.Tensor, prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per stage 1 - cos(teacher, student guided by the prototypes), plus `prototype_score` x the
        nearest-prototype distance: the prototypes used as a learned, compressed memory bank."""
        teacher, student = self(x, prototypes)
        kd = cosine_distances(teacher, student)
        if not self.prototype_score:
            return kd
        return [d + self.prototype_score * prototype_distance(t, p) for d, t, p in zip(kd, teacher, prototypes)]
