"""MemKD: the model built from its settings, and training (KD + normality embedding learning on a fixed exemplar
set)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.preprocess import InputSpec
from packd.methods.memkd.model import MemKD
from packd.methods.memkd.settings import MemKDSettings
from packd.models.losses import kd_loss, orthogonality_loss
from packd.models.student_plan import student_plan
from packd.models.teachers import Teacher
from packd.training.fit import Training, index_batches
from packd.training.settings import RunConfig
from packd.training.teacher_features import TeacherFeatures


def build(teacher: Teacher, settings: MemKDSettings) -> tuple[MemKD, MemKDSettings]:
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    return MemKD(teacher, settings.plan, slots=settings.slots, temperature=settings.temperature), settings


def make_training(model: MemKD, settings: MemKDSettings, *, run: RunConfig, data: Path, categories: list[str],
                  spec: InputSpec, tile: int = 0, cache_gb: float = 0.0) -> Training:
    """Batches of train/good images; a fixed exemplar set of N of them (drawn with the seed) feeds the
    memorisation loss; an orthogonality loss keeps the memory slots distinct. The teacher's maps are cached up to
    `cache_gb` (not with tile crops: they change every epoch)."""
    dataset = AnomalyDataset([s for c in categories for s in list_split(data, c, "train")], spec, tile=tile,
                             seed=run.seed)
    pick = np.random.default_rng([run.seed, 7]).choice(len(dataset), min(settings.exemplars, len(dataset)),
                                                        replace=False)
    features = TeacherFeatures(model.teacher, lambda i: dataset[i][0], len(dataset), cache_gb=0 if tile else cache_gb)
    with torch.no_grad():
        exemplar_teacher = model.teacher(torch.stack([dataset[int(i)][0] for i in pick]))

    def loss(m: MemKD, index: np.ndarray) -> torch.Tensor:
        t = features.maps(index)
        total = kd_loss(t, m.decode(t)) + settings.memorisation_weight * m.memorisation_loss(
            [f.to(t[0].device) for f in exemplar_teacher])
        orth = sum(orthogonality_loss(mem.keys[None]) + orthogonality_loss(mem.values[None]) for mem in m.memories)
        return total + settings.orth_weight * orth

    batches, steps = index_batches(dataset, run)
    return Training(batches, steps, loss)
