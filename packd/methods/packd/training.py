"""PACKD: settings, presets and episodic meta-training over many categories."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from packd.errors import PackdError
from packd.fit import Training
from packd.layers import NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan, student_plan
from packd.losses import ORTH_HELP
from packd.methods.packd.episodes import EpisodeSampler
from packd.methods.packd.losses import packd_loss
from packd.methods.packd.model import PACKD
from packd.preprocess import InputSpec
from packd.scoring import BORDER_HELP, PROTOTYPE_SCORE_HELP, ScoreSettings
from packd.settings import ROTATIONS_HELP, RunConfig, setting
from packd.teachers import Teacher


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


def build(teacher: Teacher, settings: PACKDSettings) -> tuple[PACKD, PACKDSettings]:
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    model = PACKD(teacher, settings.plan, n_prototypes=settings.prototypes, rotations=settings.rotations,
                  prototype_score=settings.prototype_score)
    return model, settings


def make_training(model: PACKD, settings: PACKDSettings, *, run: RunConfig, data: Path, categories: list[str],
                  spec: InputSpec) -> Training:
    """Episodes over the meta-training categories (never the targets), Eq. 7's loss."""
    if settings.cds_weight and len(categories) < 2:
        raise PackdError("the contrastive loss needs at least two training categories (or --cds-weight 0)")
    per_batch = min(settings.categories_per_batch, len(categories))
    sampler = EpisodeSampler(data, categories, spec, shots=settings.shots, queries=max(1, run.batch_size // per_batch),
                             categories_per_batch=per_batch, seed=run.seed)
    loss = partial(packd_loss, cds_weight=settings.cds_weight, orth_weight=settings.orth_weight, tau=settings.tau)
    return Training(sampler.epoch, len(sampler), loss)
