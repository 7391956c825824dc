"""MemKD: settings, presets and training (KD + normality embedding learning on a fixed exemplar set)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from packd.data import AnomalyDataset, list_split
from packd.fit import Training, image_batches
from packd.layers import NORM_HELP, NORMS, PLAN_HELP, STAGE_OUTPUTS, STAGE_OUTPUTS_HELP, ChannelPlan, student_plan
from packd.losses import ORTH_HELP, kd_loss, orthogonality_loss
from packd.methods.memkd.model import MemKD
from packd.preprocess import InputSpec
from packd.scoring import ScoreSettings
from packd.settings import RunConfig, setting
from packd.teachers import Teacher


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


def build(teacher: Teacher, settings: MemKDSettings) -> tuple[MemKD, MemKDSettings]:
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    return MemKD(teacher, settings.plan, slots=settings.slots, temperature=settings.temperature), settings


def make_training(model: MemKD, settings: MemKDSettings, *, run: RunConfig, data: Path, categories: list[str],
                  spec: InputSpec) -> Training:
    """Batches of train/good images; a fixed exemplar set of N of them (drawn with the seed) feeds the
    memorisation loss; an orthogonality loss keeps the memory slots distinct."""
    dataset = AnomalyDataset([s for c in categories for s in list_split(data, c, "train")], spec)
    pick = np.random.default_rng([run.seed, 7]).choice(len(dataset), min(settings.exemplars, len(dataset)),
                                                        replace=False)
    with torch.no_grad():
        exemplar_teacher = model.teacher(torch.stack([dataset[int(i)][0] for i in pick]))

    def loss(m: MemKD, item: list) -> torch.Tensor:
        total = kd_loss(*m(item[0]))
        total = total + settings.memorisation_weight * m.memorisation_loss(
            [f.to(item[0].device) for f in exemplar_teacher])
        orth = sum(orthogonality_loss(mem.keys[None]) + orthogonality_loss(mem.values[None]) for mem in m.memories)
        return total + settings.orth_weight * orth

    batches, steps = image_batches(dataset, run)
    return Training(batches, steps, loss)
