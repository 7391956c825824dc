"""Reverse Distillation's settings and presets (torch-free: the registry and the command line read them)."""

from __future__ import annotations

from dataclasses import dataclass

from packd.models.score_settings import ScoreSettings
from packd.models.student_plan import NORM_HELP, NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan
from packd.training.settings import setting


@dataclass(frozen=True)
class RDSettings(ScoreSettings):
    """RD's student: stage outputs and norm (validated on training categories, see the docs), and the layout
    that follows from them and the teacher."""

    stage_outputs: str = setting("relu", STAGE_OUTPUTS_HELP, choices=STAGE_OUTPUTS)
    norm: str = setting("batch", NORM_HELP, choices=NORMS)
    plan: ChannelPlan | None = setting(None, PLAN_HELP, cli=False)


PRESETS = {"paper": {"teacher": "wide_resnet50_2", "image_size": 256, "lr": 0.005, "epochs": 200, "batch_size": 16}}
