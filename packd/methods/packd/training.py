"""PACKD: the model built from its settings, and episodic meta-training over many categories."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.methods.packd.episodes import EpisodeSampler
from packd.methods.packd.losses import packd_loss
from packd.methods.packd.model import PACKD
from packd.methods.packd.settings import PACKDSettings
from packd.models.student_plan import student_plan
from packd.models.teachers import Teacher
from packd.training import distributed
from packd.training.fit import Training
from packd.training.settings import RunConfig
from packd.training.teacher_features import TeacherFeatures


def build(teacher: Teacher, settings: PACKDSettings) -> tuple[PACKD, PACKDSettings]:
    settings = replace(settings, plan=student_plan(teacher, settings.plan, settings.norm, settings.stage_outputs))
    model = PACKD(teacher, settings.plan, n_prototypes=settings.prototypes, rotations=settings.rotations,
                  prototype_score=settings.prototype_score)
    return model, settings


def make_training(model: PACKD, settings: PACKDSettings, *, run: RunConfig, data: Path, categories: list[str],
                  spec: InputSpec, tile: int = 0, cache_gb: float = 0.0) -> Training:
    """Episodes over the meta-training categories (never the targets), Eq. 7's loss. The teacher's maps of every
    image and rotation are cached up to `cache_gb` (not with tile crops: they change every epoch)."""
    if settings.cds_weight and len(categories) < 2:
        raise PackdError("the contrastive loss needs at least two training categories (or --cds-weight 0)")
    per_batch = min(settings.categories_per_batch, len(categories))
    distributed.check_divides(per_batch, "--categories-per-batch", "" if per_batch == settings.categories_per_batch
                              else f": --categories-per-batch {settings.categories_per_batch} capped at the "
                                   f"{len(categories)} training categories")
    sampler = EpisodeSampler(data, categories, spec, shots=settings.shots, queries=max(1, run.batch_size // per_batch),
                             categories_per_batch=per_batch, seed=run.seed, tile=tile)
    features = TeacherFeatures(model.teacher, sampler.image, sampler.count, rotations=settings.rotations,
                               cache_gb=0 if tile else cache_gb)

    def loss(m: PACKD, item: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
        queries, supports = item  # (E,Q), (E,Q,k) image indices: every query has its own supports
        t_q = features.maps(queries.reshape(-1))
        t_s = features.maps(supports.reshape(-1), m.rotations)
        return packd_loss(m, t_q, t_s, supports.shape, cds_weight=settings.cds_weight,
                          orth_weight=settings.orth_weight, tau=settings.tau)

    return Training(sampler.epoch, len(sampler), loss, every_parameter_used=bool(settings.cds_weight))
