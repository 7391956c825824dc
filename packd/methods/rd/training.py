"""Reverse Distillation: settings, presets and training on the normal images of the listed categories."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from packd.data import AnomalyDataset, list_split
from packd.fit import Training, image_batches
from packd.layers import NORM_HELP, NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan, student_plan
from packd.losses import kd_loss
from packd.methods.rd.model import ReverseDistillation
from packd.preprocess import InputSpec
from packd.scoring import ScoreSettings
from packd.settings import RunConfig, setting
from packd.teachers import Teacher


@dataclass(frozen=True)
class RDSettings(ScoreSettings):
    """RD's student: stage outputs and norm (validated on training categories, see the docs), and the layout
    that follows from them and the teacher."""

    stage_outputs: str = setting("relu", STAGE_OUTPUTS_HELP, choices=STAGE_OUTPUTS)
    norm: str = setting("batch", NORM_HELP, choices=NORMS)
    plan: ChannelPlan | None = setting(None, PLAN_HELP, cli=False)


PRESETS = {"paper": {"teacher": "wide_resnet50_2", "image_size": 256, "lr": 0.005, "epochs": 200, "batch_size": 16}}


def build(teacher: Teacher, settings: RDSettings) -> tuple[ReverseDistillation, RDSettings]:
    """The model and its settings with the student layout filled in (what the checkpoint records)."""
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    return ReverseDistillation(teacher, settings.plan), settings


def loss(model: ReverseDistillation, item: list) -> torch.Tensor:
    return kd_loss(*model(item[0]))


def make_training(model: ReverseDistillation, settings: RDSettings, *, run: RunConfig, data: Path,
                  categories: list[str], spec: InputSpec) -> Training:
    """Shuffled batches of the categories' train/good images, RD's KD loss."""
    dataset = AnomalyDataset([s for c in categories for s in list_split(data, c, "train")], spec)
    batches, steps = image_batches(dataset, run)
    return Training(batches, steps, loss)
