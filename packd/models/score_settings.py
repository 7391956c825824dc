"""How stage maps become a map and a score, as settings (torch-free: the command line and the settings of the
distillation kinds name them without importing torch). `packd.models.scoring` does the scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packd.errors import PackdError
from packd.training.settings import setting, validate

SCORING_FIELDS = frozenset({"stage_weights", "border", "prototype_score"})  # how maps are scored, not the weights


def parse_weights(text: str) -> tuple[float, ...]:
    """'1,0.5,2' -> (1.0, 0.5, 2.0): finite, non-negative, not all zero."""
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise PackdError(f"--stage-weights must be comma-separated numbers, got {text!r}") from None
    if not all(0 <= w < float("inf") for w in weights) or not any(weights):
        raise PackdError(f"--stage-weights must be finite, non-negative and not all zero, got {text!r}")
    return weights


STAGE_WEIGHTS_HELP = "Weights of the stage maps (strides 4, 8, 16) in the anomaly map, comma-separated."
BORDER_HELP = "Pixels at the image border left out of the image score (the map keeps them)."
PROTOTYPE_SCORE_HELP = ("Weight of the nearest-prototype distance (1 - the highest cosine between the query's teacher "
                        "feature and the prototypes) added to each stage's KD map (packd); 0: the paper's KD map only.")


def scoring_overrides(**values: Any) -> dict[str, Any]:
    """The scoring settings given on a command line (None: keep the checkpoint's)."""
    return {k: v for k, v in values.items() if v is not None}


def check_border(border: int, image_size: int) -> None:
    """The border left out of the image score must leave most of the image in."""
    if not 0 <= border < image_size // 4:
        raise PackdError(f"--border must be between 0 and a quarter of the image size ({image_size // 4 - 1}), "
                         f"got {border}")


@dataclass(frozen=True)
class ScoreSettings:
    """How the distillation kinds turn stage maps into a map and a score (a base of their settings).
    The defaults are the papers' (equal weights, whole image); see docs/kinds/ for the validated ones."""

    stage_weights: str = setting("1,1,1", STAGE_WEIGHTS_HELP)
    border: int = setting(0, BORDER_HELP, ge=0)

    def __post_init__(self) -> None:
        validate(self)
        if len(parse_weights(self.stage_weights)) != 3:
            raise PackdError(f"--stage-weights needs 3 weights (strides 4, 8, 16), got {self.stage_weights!r}")
