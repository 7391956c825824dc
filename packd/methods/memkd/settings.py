"""MemKD's settings and presets (torch-free: the registry and the command line read them)."""

from __future__ import annotations

from dataclasses import dataclass

from packd.models.score_settings import ScoreSettings
from packd.models.student_plan import NORM_HELP, NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan
from packd.training.settings import ORTH_HELP, setting


@dataclass(frozen=True)
class MemKDSettings(ScoreSettings):
    """NR memory and normality embedding settings (paper: L = 50, N = 16 exemplars, weights 0.1)."""

    slots: int = setting(50, "Memory slots L per decoder stage.", ge=1)
    temperature: float = setting(0.1, "Softmax temperature of the memory recall.", gt=0)
    exemplars: int = setting(16, "Normal exemplar images for normality embedding learning.", ge=1)
    memorisation_weight: float = setting(0.1, "Weight of the memorisation loss.", ge=0)
    orth_weight: float = setting(0.1, ORTH_HELP, ge=0)
    stage_outputs: str = setting("relu", STAGE_OUTPUTS_HELP, choices=STAGE_OUTPUTS)
    norm: str = setting("batch", NORM_HELP, choices=NORMS)
    plan: ChannelPlan | None = setting(None, PLAN_HELP, cli=False)


PRESETS = {"paper": {"teacher": "wide_resnet50_2", "image_size": 256, "lr": 0.005, "epochs": 200, "batch_size": 16,
                     "slots": 50}}
