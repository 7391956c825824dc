"""Building blocks shared by the distillation methods (RD, MemKD, PACKD): residual blocks, the one-class
bottleneck (OCBE), the decoder stages, the residual refinement after the last stage, and support rotations.
The layout they follow is `packd.models.student_plan.ChannelPlan`.

Generic over the teacher's channel plan (c1, c2, c3 at strides 4, 8, 16): the bottleneck maps
them to 2*c3 channels at stride 32 and the decoder mirrors the teacher back to stride 4. A decoder
stage ends in a ReLU only where the teacher's stage output is non-negative (ResNets, as in the RD
reference); for teachers with signed stage outputs (EfficientNets' linear projections) it ends
linear, or the student could never match the teacher's negative half.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from packd.models.student_plan import ChannelPlan


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm (8 groups where the channels allow): statistics of one image, never of a
    batch that mixes categories, and the same in training and deployment."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(math.gcd(channels, 8), channels)


def _conv_bn(cin: int, cout: int, k: int, stride: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), norm_layer(norm, cout)]


class Block(nn.Module):
    """Residual block, basic or bottleneck; `resample` = 'down' (stride-2 conv) or 'up' (2x2 stride-2 deconv);
    `linear` drops the final ReLU (a stage output that must match a signed teacher map)."""

    def __init__(self, cin: int, cout: int, plan: ChannelPlan, resample: str | None = None, linear: bool = False):
        super().__init__()
        norm = plan.norm
        if plan.block == "basic":
            first = (nn.ConvTranspose2d(cin, cout, 2, 2, bias=False) if resample == "up"
                     else nn.Conv2d(cin, cout, 3, 2 if resample == "down" else 1, 1, bias=False))
            self.body = nn.Sequential(first, norm_layer(norm, cout), nn.ReLU(inplace=True),
                                      *_conv_bn(cout, cout, 3, 1, norm))
        elif plan.block == "bottleneck":
            w = cout // plan.width_div
            mid = (nn.ConvTranspose2d(w, w, 2, 2, bias=False) if resample == "up"
                   else nn.Conv2d(w, w, 3, 2 if resample == "down" else 1, 1, bias=False))
            self.body = nn.Sequential(*_conv_bn(cin, w, 1, 1, norm), nn.ReLU(inplace=True),
                                      mid, norm_layer(norm, w), nn.ReLU(inplace=True),
                                      *_conv_bn(w, cout, 1, 1, norm))
        else:
            raise ValueError(f"unknown block kind {plan.block!r}")
        if resample == "up":
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), norm_layer(norm, cout))
        elif resample == "down" or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, 2 if resample == "down" else 1, norm))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.Identity() if linear else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _conv_bn_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck: fuse the three teacher stages at stride 16, then a residual stage to stride 32."""

    def __init__(self, plan: ChannelPlan):
        super().__init__()
        c1, c2, c3 = plan.channels
        self.down1 = nn.Sequential(_conv_bn_relu(c1, c2, plan.norm), _conv_bn_relu(c2, c3, plan.norm))
        self.down2 = _conv_bn_relu(c2, c3, plan.norm)
        out = 2 * c3
        blocks = [Block(3 * c3, out, plan, "down")]
        blocks += [Block(out, out, plan) for _ in range(plan.ocbe_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.blocks(torch.cat([self.down1(f1), self.down2(f2), f3], dim=1))


def decoder_stages(plan: ChannelPlan, in_channels: int, widen: Callable[[int], int] = int) -> nn.ModuleList:
    """The student's three stages (c3 @16, c2 @8, c1 @4), each an upsampling block then plain blocks;
    a stage's last block is linear where the plan says the teacher's stage is signed.

    `widen(c)` is the input width of the next stage after a stage with c outputs: c for RD, wider
    when a method concatenates guidance to every stage output (PACKD: 2c + 1, MemKD: 2c)."""
    c1, c2, c3 = plan.channels
    outs = (c3, c2, c1)
    ins = (in_channels, widen(c3), widen(c2))
    stages = []
    for cin, cout, n, linear in zip(ins, outs, plan.decoder_blocks, plan.linear[::-1]):
        blocks = [Block(cin, cout, plan, "up", linear=linear and n == 1)]
        blocks += [Block(cout, cout, plan, linear=linear and i == n - 2) for i in range(n - 1)]
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


class Refine(nn.Module):
    """After the last stage: the student map and what guided it (`in_channels`) -> residual correction."""

    def __init__(self, channels: int, in_channels: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  norm_layer(norm, channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1))

    def forward(self, student: torch.Tensor, integrated: torch.Tensor) -> torch.Tensor:
        return student + self.body(integrated)


def rotate_supports(x: torch.Tensor, rotations: int) -> torch.Tensor:
    """(k,3,S,S) -> (k*rotations,3,S,S): the images turned by 0, 90, 180, 270 degrees (first `rotations`)."""
    return torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(rotations)], dim=0)
