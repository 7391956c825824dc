"""The student's layout (torch-free, so settings and the command line can name it without importing torch):
teacher stage channels, block type and counts, which decoder stages end linear, and the norm.

A decoder stage ends in a ReLU (the RD reference) or, with `stage_outputs="linear"`, linear where the teacher's
stage outputs are signed (EfficientNets' linear projections), so the student can match their negative half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from packd.errors import PackdError

if TYPE_CHECKING:
    from packd.models.teachers import Teacher


@dataclass(frozen=True)
class ChannelPlan:
    """Teacher stage channels and the student's block layout."""

    channels: tuple[int, int, int]
    block: str = "basic"  # "basic" (ResNet-18/34 style) or "bottleneck" (ResNet-50 style)
    ocbe_blocks: int = 2
    decoder_blocks: tuple[int, int, int] = (2, 2, 2)  # deepest stage first, as the decoder runs
    width_div: int = 2  # bottleneck width = out_channels // width_div (2: wide ResNet)
    linear: tuple[bool, bool, bool] = (False, False, False)  # per teacher stage: signed outputs, no final ReLU
    norm: str = "batch"  # the student's normalisation: "batch" (RD reference) or "group" (per image)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise PackdError(f"student norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


REFERENCE_LAYOUTS = {  # teacher -> (block, ocbe blocks, decoder blocks, width divisor), mirroring the reference code
    "wide_resnet50_2": ("bottleneck", 3, (3, 4, 6), 2),
    "wide_resnet101_2": ("bottleneck", 3, (3, 23, 4), 2),
    "resnet50": ("bottleneck", 3, (3, 4, 6), 4),
    "resnet34": ("basic", 3, (3, 4, 6), 1),
    "resnet18": ("basic", 2, (2, 2, 2), 1),
}


NORMS = ("batch", "group")
STAGE_OUTPUTS = ("relu", "linear")
NORM_HELP = "The student's normalisation: batch (the RD reference) or group (statistics of one image)."
STAGE_OUTPUTS_HELP = ("How the student's decoder stages end: relu (the RD reference, also for signed teachers) or "
                      "linear where the teacher's stage outputs are signed (EfficientNets), so the student can match "
                      "their negative half.")
PLAN_HELP = "Student layout; derived from the teacher, --norm and --stage-outputs when not given."


def plan_for(teacher: Teacher, norm: str = "batch", stage_outputs: str = "relu") -> ChannelPlan:
    """The student layout for a teacher: the reference layouts for ResNets, light basic blocks otherwise;
    with `stage_outputs="linear"`, linear stage outputs where the teacher's are signed."""
    if stage_outputs not in STAGE_OUTPUTS:
        raise PackdError(f"--stage-outputs must be one of {', '.join(STAGE_OUTPUTS)}, got {stage_outputs!r}")
    block, ocbe, dec, div = REFERENCE_LAYOUTS.get(teacher.name, ("basic", 2, (2, 2, 2), 1))
    linear = teacher.signed_stages() if stage_outputs == "linear" else (False, False, False)
    return ChannelPlan(tuple(teacher.channels), block, ocbe, dec, div, linear=linear, norm=norm)


def student_plan(teacher: Teacher, plan: ChannelPlan | None, norm: str = "batch",
                 stage_outputs: str = "relu") -> ChannelPlan:
    """The given student layout, or the teacher's (`plan_for`); distillation needs a CNN teacher."""
    if teacher.vit:
        raise PackdError(f"{teacher.name} is a vision transformer: distillation needs a CNN teacher with stages "
                         "at strides 4, 8 and 16 (the knn kind takes ViTs)")
    return plan or plan_for(teacher, norm, stage_outputs)
