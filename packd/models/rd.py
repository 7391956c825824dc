"""Reverse Distillation (Deng & Li, CVPR 2022): one-class bottleneck (OCBE) + reversed student decoder.

Generic over the teacher's channel plan (c1, c2, c3 at strides 4, 8, 16): the bottleneck maps
them to 2*c3 channels at stride 32 and the decoder mirrors the teacher back to stride 4.
Pure modules; training lives in `packd.train`, scoring in `packd.models.scoring`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ChannelPlan:
    """Teacher stage channels and the student's block layout."""

    channels: tuple[int, int, int]
    block: str = "basic"  # "basic" (ResNet-18/34 style) or "bottleneck" (ResNet-50 style)
    ocbe_blocks: int = 2
    decoder_blocks: tuple[int, int, int] = (2, 2, 2)  # deepest stage first, as the decoder runs
    width_div: int = 2  # bottleneck width = out_channels // width_div (2: wide ResNet)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelPlan":
        return cls(tuple(d["channels"]), d["block"], d["ocbe_blocks"], tuple(d["decoder_blocks"]), d["width_div"])


_LAYOUTS = {  # teacher -> (block, ocbe blocks, decoder blocks, width divisor), mirroring the reference code
    "wide_resnet50_2": ("bottleneck", 3, (3, 4, 6), 2),
    "wide_resnet101_2": ("bottleneck", 3, (3, 23, 4), 2),
    "resnet50": ("bottleneck", 3, (3, 4, 6), 4),
    "resnet34": ("basic", 3, (3, 4, 6), 1),
    "resnet18": ("basic", 2, (2, 2, 2), 1),
}


def plan_for(teacher_name: str, channels: tuple[int, int, int]) -> ChannelPlan:
    """The student layout for a teacher: the reference layouts for ResNets, light basic blocks otherwise."""
    block, ocbe, dec, div = _LAYOUTS.get(teacher_name, ("basic", 2, (2, 2, 2), 1))
    return ChannelPlan(tuple(channels), block, ocbe, dec, div)


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class Block(nn.Module):
    """Residual block, basic or bottleneck; `resample` = 'down' (stride-2 conv) or 'up' (2x2 stride-2 deconv)."""

    def __init__(self, cin: int, cout: int, kind: str, width_div: int, resample: str | None = None):
        super().__init__()
        if kind == "basic":
            first = (nn.ConvTranspose2d(cin, cout, 2, 2, bias=False) if resample == "up"
                     else nn.Conv2d(cin, cout, 3, 2 if resample == "down" else 1, 1, bias=False))
            self.body = nn.Sequential(first, nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                      *_conv_bn(cout, cout, 3, 1))
        elif kind == "bottleneck":
            w = cout // width_div
            mid = (nn.ConvTranspose2d(w, w, 2, 2, bias=False) if resample == "up"
                   else nn.Conv2d(w, w, 3, 2 if resample == "down" else 1, 1, bias=False))
            self.body = nn.Sequential(*_conv_bn(cin, w, 1, 1), nn.ReLU(inplace=True),
                                      mid, nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                      *_conv_bn(w, cout, 1, 1))
        else:
            raise ValueError(f"unknown block kind {kind!r}")
        if resample == "up":
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout))
        elif resample == "down" or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, 2 if resample == "down" else 1))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck: fuse the three teacher stages at stride 16, then a residual stage to stride 32."""

    def __init__(self, plan: ChannelPlan):
        super().__init__()
        c1, c2, c3 = plan.channels
        self.down1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))
        self.down2 = _conv_bn_relu(c2, c3)
        out = 2 * c3
        blocks = [Block(3 * c3, out, plan.block, plan.width_div, "down")]
        blocks += [Block(out, out, plan.block, plan.width_div) for _ in range(plan.ocbe_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        return self.blocks(torch.cat([self.down1(f1), self.down2(f2), f3], dim=1))


def decoder_stage(cin: int, cout: int, n_blocks: int, plan: ChannelPlan) -> nn.Sequential:
    """One student stage: an upsampling block, then n_blocks-1 plain blocks."""
    blocks = [Block(cin, cout, plan.block, plan.width_div, "up")]
    blocks += [Block(cout, cout, plan.block, plan.width_div) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class Decoder(nn.Module):
    """Student: bottleneck (2*c3, stride 32) -> c3 @16 -> c2 @8 -> c1 @4; returns maps in teacher order."""

    def __init__(self, plan: ChannelPlan, in_channels: int):
        super().__init__()
        c1, c2, c3 = plan.channels
        outs = (c3, c2, c1)
        ins = (in_channels, c3, c2)
        self.stages = nn.ModuleList(decoder_stage(i, o, n, plan) for i, o, n in zip(ins, outs, plan.decoder_blocks))

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            z = stage(z)
            outs.append(z)
        return outs[::-1]


class ReverseDistillation(nn.Module):
    """Teacher (frozen) -> OCBE -> decoder. forward(normalised images) -> (teacher maps, student maps)."""

    def __init__(self, teacher: nn.Module, plan: ChannelPlan):
        super().__init__()
        self.teacher = teacher
        self.plan = plan
        self.ocbe = OCBE(plan)
        self.decoder = Decoder(plan, self.ocbe.out_channels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.decoder(self.ocbe(t))
