"""The nearest-neighbour kind's settings and presets (torch-free: the registry and the command line read them).
The kind is training-free: `packd train --kind knn` writes its checkpoint (teacher weights and these settings) at
once."""

from __future__ import annotations

from dataclasses import dataclass

from packd.training.settings import ROTATIONS_HELP, setting, validate


@dataclass(frozen=True)
class KNNSettings:
    """Bank and scoring settings. The defaults (l2, max) won the validation on the training categories
    (benchmarks/results/knn_table.md: image AUROC 0.994 against 0.960-0.970 for cosine)."""

    rotations: int = setting(4, ROTATIONS_HELP, ge=1, le=4)
    distance: str = setting("l2", "Patch distance: l2 or cosine (on L2-normalised features).",
                            choices=("cosine", "l2"))
    score: str = setting("max", "Image score: max of the blurred map, or top1 (mean of the top 1 % patch "
                         "distances).", choices=("max", "top1"))
    max_bank: int = setting(0, "Largest memory bank kept at changeover (greedy k-centre coreset); 0 keeps every "
                            "support patch.", ge=0)

    def __post_init__(self) -> None:
        validate(self)


PRESETS = {
    "patchcore": {"teacher": "wide_resnet50_2", "image_size": 256, "distance": "l2", "score": "max"},
    "anomalydino": {"teacher": "vit_small_patch14_dinov2", "image_size": 448, "distance": "cosine", "score": "top1"},
}
