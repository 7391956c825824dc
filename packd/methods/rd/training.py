"""Reverse Distillation: the model built from its settings, and training on the normal images of the listed
categories."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from packd.data import AnomalyDataset, list_split
from packd.fit import Training, image_batches
from packd.losses import kd_loss
from packd.methods.rd.model import ReverseDistillation
from packd.methods.rd.settings import RDSettings
from packd.preprocess import InputSpec
from packd.settings import RunConfig
from packd.student_plan import student_plan
from packd.teachers import Teacher


def build(teacher: Teacher, settings: RDSettings) -> tuple[ReverseDistillation, RDSettings]:
    """The model and its settings with the student layout filled in (what the checkpoint records)."""
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    return ReverseDistillation(teacher, settings.plan), settings


def loss(model: ReverseDistillation, item: list) -> torch.Tensor:
    return kd_loss(*model(item[0]))


def make_training(model: ReverseDistillation, settings: RDSettings, *, run: RunConfig, data: Path,
                  categories: list[str], spec: InputSpec, tile: int = 0) -> Training:
    """Shuffled batches of the categories' train/good images, RD's KD loss."""
    dataset = AnomalyDataset([s for c in categories for s in list_split(data, c, "train")], spec, tile=tile,
                             seed=run.seed)
    batches, steps = image_batches(dataset, run)
    return Training(batches, steps, loss)
