"""Reverse Distillation: the model built from its settings, and training on the normal images of the listed
categories."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.preprocess import InputSpec
from packd.methods.rd.model import ReverseDistillation
from packd.methods.rd.settings import RDSettings
from packd.models.losses import kd_loss
from packd.models.student_plan import student_plan
from packd.models.teachers import Teacher
from packd.training.fit import Training, index_batches
from packd.training.settings import RunConfig
from packd.training.teacher_features import TeacherFeatures


def build(teacher: Teacher, settings: RDSettings) -> tuple[ReverseDistillation, RDSettings]:
    """The model and its settings with the student layout filled in (what the checkpoint records)."""
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    return ReverseDistillation(teacher, settings.plan), settings


def make_training(model: ReverseDistillation, settings: RDSettings, *, run: RunConfig, data: Path,
                  categories: list[str], spec: InputSpec, tile: int = 0, cache_gb: float = 0.0) -> Training:
    """Shuffled batches of the categories' train/good images, RD's KD loss on the teacher's maps (cached up to
    `cache_gb`: the teacher is frozen and the images do not change, unless tile crops do every epoch)."""
    dataset = AnomalyDataset([s for c in categories for s in list_split(data, c, "train")], spec, tile=tile,
                             seed=run.seed)
    features = TeacherFeatures(model.teacher, lambda i: dataset[i][0], len(dataset), cache_gb=0 if tile else cache_gb)

    def loss(m: ReverseDistillation, index: np.ndarray) -> torch.Tensor:
        t = features.maps(index)
        return kd_loss(t, m.decode(t))

    batches, steps = index_batches(dataset, run)
    return Training(batches, steps, loss)
