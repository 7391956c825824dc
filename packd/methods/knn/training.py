"""The nearest-neighbour kind: the model built from its settings. It is training-free: no `make_training`."""

from __future__ import annotations

from packd.errors import PackdError
from packd.methods.knn.model import NearestNeighbour
from packd.methods.knn.settings import KNNSettings
from packd.models.teachers import Teacher


def build(teacher: Teacher, settings: KNNSettings) -> tuple[NearestNeighbour, KNNSettings]:
    if not teacher.vit and len(teacher.channels) != 3:
        raise PackdError(f"teacher {teacher.name} has neither stride stages nor patch tokens")
    model = NearestNeighbour(teacher, rotations=settings.rotations, distance=settings.distance, score=settings.score,
                             max_bank=settings.max_bank)
    return model, settings
