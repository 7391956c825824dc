"""PACKD's settings and presets (torch-free: the registry and the command line read them)."""

from __future__ import annotations

from dataclasses import dataclass

from packd.models.score_settings import BORDER_HELP, PROTOTYPE_SCORE_HELP, ScoreSettings
from packd.models.student_plan import NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan
from packd.training.settings import ORTH_HELP, ROTATIONS_HELP, setting


@dataclass(frozen=True)
class PACKDSettings(ScoreSettings):
    """Meta-training, loss and scoring settings (paper: L = 20, tau = 0.05, lambda1 = lambda2 = 0.5, rotated
    supports; KD map only). A batch holds `categories_per_batch` categories x (batch size //
    categories_per_batch) queries, each query with its own k supports (the paper's episodes)."""

    shots: int = setting(2, "Support images per category and batch in meta-training.", ge=1)
    prototypes: int = setting(20, "Prototypes L per support image and stage.", ge=1)
    rotations: int = setting(4, ROTATIONS_HELP, ge=1, le=4)
    categories_per_batch: int = setting(4, "Categories per batch (the contrastive negatives come from the others).",
                                        ge=1)
    cds_weight: float = setting(0.5, "Contrastive distillation weight lambda1 (0 = PEIM only).", ge=0)
    orth_weight: float = setting(0.5, ORTH_HELP, ge=0)
    tau: float = setting(0.05, "Contrastive temperature.", gt=0)
    border: int = setting(8, BORDER_HELP, ge=0)
    prototype_score: float = setting(1.0, PROTOTYPE_SCORE_HELP, ge=0)
    norm: str = setting("group", "The student's normalisation: group (per image: meta-training batches never mix "
                        "categories into the statistics) or batch (the paper's).", choices=NORMS)
    stage_outputs: str = setting("linear", STAGE_OUTPUTS_HELP, choices=STAGE_OUTPUTS)
    plan: ChannelPlan | None = setting(None, PLAN_HELP, cli=False)


PRESETS = {
    "default": {"lr": 5e-4},
    "paper": {"teacher": "wide_resnet50_2", "image_size": 256, "lr": 5e-4, "epochs": 100, "batch_size": 32,
              "prototypes": 20, "tau": 0.05, "prototype_score": 0.0, "norm": "batch", "stage_weights": "1,1,1",
              "border": 0},
}
