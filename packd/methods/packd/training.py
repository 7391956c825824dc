"""PACKD: the model built from its settings, and episodic meta-training over many categories."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

from packd.errors import PackdError
from packd.fit import Training
from packd.methods.packd.episodes import EpisodeSampler
from packd.methods.packd.losses import packd_loss
from packd.methods.packd.model import PACKD
from packd.methods.packd.settings import PACKDSettings
from packd.preprocess import InputSpec
from packd.settings import RunConfig
from packd.student_plan import student_plan
from packd.teachers import Teacher


def build(teacher: Teacher, settings: PACKDSettings) -> tuple[PACKD, PACKDSettings]:
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    model = PACKD(teacher, settings.plan, n_prototypes=settings.prototypes, rotations=settings.rotations,
                  prototype_score=settings.prototype_score)
    return model, settings


def make_training(model: PACKD, settings: PACKDSettings, *, run: RunConfig, data: Path, categories: list[str],
                  spec: InputSpec, tile: int = 0) -> Training:
    """Episodes over the meta-training categories (never the targets), Eq. 7's loss."""
    if settings.cds_weight and len(categories) < 2:
        raise PackdError("the contrastive loss needs at least two training categories (or --cds-weight 0)")
    per_batch = min(settings.categories_per_batch, len(categories))
    sampler = EpisodeSampler(data, categories, spec, shots=settings.shots, queries=max(1, run.batch_size // per_batch),
                             categories_per_batch=per_batch, seed=run.seed, tile=tile)
    loss = partial(packd_loss, cds_weight=settings.cds_weight, orth_weight=settings.orth_weight, tau=settings.tau)
    return Training(sampler.epoch, len(sampler), loss)
